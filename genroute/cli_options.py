"""Options more than one command takes (``--quiet``), defined once so that they read and behave alike."""

from __future__ import annotations

import argparse
import copy
import sys

from genroute.config_location import locate
from genroute.errors import ConfigError, GenrouteError, UsageError, command_error


def add_quiet(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--quiet``: no progress bar."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (there is none either when stderr is no terminal: a file or a pipe)")


def shows_progress(args: argparse.Namespace) -> bool:
    """Whether a command draws its progress bar: not with ``--quiet``, and only on a terminal (into a log file or a
    pipe a bar is only its frames' text)."""
    return not args.quiet and sys.stderr.isatty()


#: What genroute's functions and settings call a value that a command takes as an option (``Router.from_config``'s
#: ``path`` is the file given as ``--config``; ``AdvisorSettings.tuning_cost_usd`` is bench's ``--tuning-cost``), as
#: the option's ``dest``. The one table of such names: commands read their options through it too (bench's advisor).
LIBRARY_NAMES = {"path": "config", "out_dir": "out", "cache_dir": "embedding_cache", "eval_source": "eval_outcomes",
                 "poll_interval_s": "poll_interval", "timeout_s": "timeout", "tuning_usd_per_1m_tokens": "tuning_price",
                 "tuning_cost_usd": "tuning_cost"}


def as_typed(error: GenrouteError, parser: argparse.ArgumentParser) -> GenrouteError:
    """``error`` naming the option of ``parser`` its field came from, as the user typed it (``--limit``, not
    ``limit``; ``--config``, not ``path``): the one place every ``genroute`` command maps the names. A config error
    naming a section of the config file (``backends``) is left as it is, though ``bench`` has a ``--backends``."""
    if not isinstance(error, UsageError) or error.field is None:
        return error
    options = {action.dest: max(action.option_strings, key=len) for action in parser._actions
               if action.option_strings and action.dest != "help"}
    # An option of the field's own name first: a library name (timeout_s) may be some command's option too.
    dest = error.field if error.field in options else LIBRARY_NAMES.get(error.field, error.field)
    if isinstance(error, ConfigError) and error.field in config_sections():  # the config file's, not an option's
        return error
    if dest not in options:
        return error
    renamed = copy.copy(error)  # the same type and what it carries (a config error's file and line, a cost)
    renamed.field = options[dest]
    return renamed


def config_sections() -> frozenset[str]:
    """The router config's top-level keys (``RouterConfig``'s fields): a config error naming one (``backends``) is
    about the file, not an option."""
    from genroute.config import RouterConfig

    return frozenset(RouterConfig.model_fields)


def command_failed(error: GenrouteError, parser: argparse.ArgumentParser, *, config: object = None) -> int:
    """What a ``genroute`` command does with ``error``: one line on stderr naming the option the user typed
    (``as_typed``), worded as argparse words a bad option, and the exit status (2: the caller's mistake). A config
    error about the command's config file (``config``, its ``--config``) names the file and line that set it, also
    one found after the router was built (a local model file, its ``n_ctx``: checked at the first request)."""
    if isinstance(error, ConfigError) and config:
        locate(error, config)
    return command_error(as_typed(error, parser), parser.prog)
