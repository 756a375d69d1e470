"""An entry point whose module cannot be imported (a plugin with a missing dependency), for error tests."""

from __future__ import annotations

import genroute_plugin_example_missing_dependency  # noqa: F401  - deliberately not installed
