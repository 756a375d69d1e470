"""docs/configuration.md's ``learned`` section names every setting of the policy beyond those every policy entry has
(``kind``, ``model_path``, ``default``): ``cache_size`` was in no docs page."""

from __future__ import annotations

import re
from pathlib import Path

from genroute.policies.learned import LearnedConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_learned_section_names_each_setting() -> None:
    section = re.search(r"^### `learned`\n(.*?)(?=^### |\Z)", DOC.read_text(encoding="utf-8"), re.S | re.M)
    assert section is not None
    missing = [name for name in LearnedConfig.model_fields
               if name not in {"kind", "model_path", "default"} and f"`{name}`" not in section.group(1)]
    assert missing == []
    assert f"`cache_size` (default {LearnedConfig.model_fields['cache_size'].default})" in section.group(1)
