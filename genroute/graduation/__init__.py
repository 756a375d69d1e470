"""Graduation: from few-shot on live traffic to a tuned model, decided by paired statistics.

``agraduate`` (export the captured examples -> tune -> add the tuned backend as a challenger) and ``adecide``
(promote when the quality difference's 95 % lower bound, anytime-valid by default, is above ``-margin`` and it
is cheaper); ``genroute graduate`` runs them from the command line on a config file.
"""

from genroute.graduation.export import TuningSet, export_tuning_set
from genroute.graduation.promote import Promotion, decide_promotion
from genroute.graduation.run import GraduationReport, adecide, agraduate, register_local

__all__ = ["GraduationReport", "Promotion", "TuningSet", "adecide", "agraduate", "decide_promotion",
           "export_tuning_set", "register_local"]
