"""Outcomes from production: shadow comparisons and user feedback, in the record shape benchmarks use.

``OutcomeStore`` keeps them (SQLite by default); ``OutcomeRecorder`` writes them for a router;
``outcome_stats`` turns them into the statistics ``cost_aware`` reads and ``Router.refresh`` applies.
"""

from genroute.outcomes.outcome_files import read_outcome_file
from genroute.outcomes.records import OutcomeRecord, Side
from genroute.outcomes.settings import OutcomeSettings, redact_secrets
from genroute.outcomes.store import OutcomeStore

__all__ = ["OutcomeRecord", "OutcomeSettings", "OutcomeStore", "Side", "read_outcome_file", "redact_secrets"]
