"""``run.json``: what produced the rows of an output directory, checked before a rerun reuses them.

A rerun into the same directory skips (target, record) pairs already there, which is only right if those
rows were produced the same way. The manifest holds a fingerprint of everything that decides a row — the
dataset's content, the scorer, the sampling seed, the RAG corpus and each target's configuration — and a
rerun that differs in any of them is refused with a ``UsageError`` naming the field. ``limit`` is recorded
but not checked: a larger limit with the same seed draws a superset (see ``datasets.sample``), so it only
adds rows. New targets are welcome; a target whose configuration changed is not, nor one whose price did (a
`pricing` override, or a new default): its old rows and new ones would be averaged at two prices. A target with no
scored row is the exception (its rows are failures a rerun replaces: a set-up error being fixed), and so is the
scorer while no row at all is scored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from genroute.errors import UsageError
from genroute.public_model import PublicModel

if TYPE_CHECKING:
    from genroute.bench.datasets import BenchRecord
    from genroute.bench.scorers import Scorer
    from genroute.router.router import Router

MANIFEST_FILE = "run.json"
#: Engine settings that change how an answer is fetched, not what it is: editing them keeps old rows valid.
_TRANSPORT_KEYS = frozenset({"api_key", "api_key_env", "base_url", "timeout_s", "retry", "embed_batch_size",
                             "n_threads", "pool_size"})
#: Run-level fields a rerun must match, with the option that sets each (for the error's ``field``).
_CHECKED = {"data_sha256": "data", "scorer": "scorer", "seed": "seed", "corpus_sha256": "corpus",
            "scorer_sha256": "scorer"}


class RunManifest(PublicModel):
    """How a benchmark run was invoked, and the fingerprint its rows depend on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str = Field(description="The dataset path (or <records> for records passed in Python).")
    data_sha256: str = Field(description="Hash of every loaded record, before sampling.")
    scorer: str
    seed: int
    limit: int | None = None
    corpus: str | None = None
    corpus_sha256: str | None = None
    scorer_sha256: str | None = Field(default=None, description="What decides the scores beyond the scorer's name: "
                                                                "a judge backend's configuration, a custom "
                                                                "function's source (absent for built-in scorers).")
    targets: dict[str, str] = Field(default_factory=dict, description="Target -> configuration hash.")
    prices: dict[str, str] = Field(default_factory=dict, description="Target -> hash of the price its calls are "
                                                                     "billed at (absent in older manifests).")
    policy: bool = False
    concurrency: int = 4
    command: str | None = None


def digest(value: Any) -> str:
    """A short stable hash of JSON-able ``value`` (keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def records_digest(records: Iterable[BenchRecord]) -> str:
    """Hash of the records' content (ids, inputs, gold answers, tasks, metadata, and earlier turns where a record has
    them: a record without, as every record was before ``history``, hashes as it did, so an earlier run resumes)."""
    return digest([r.model_dump(mode="json", exclude=None if r.history else {"history"}) for r in records])


def file_digest(path: str | Path) -> str:
    """Hash of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _dump(config: Any) -> Any:
    dump = getattr(config, "model_dump", None)
    return dump(mode="json") if dump is not None else repr(config)


def _backend(router: Router, name: str) -> Any:
    """What decides a backend's answers: its config and its engine's, transport settings left out."""
    b = router.backends[name]
    engine = router.resources.engines.get(getattr(b.config, "engine", ""))
    settings = _dump(engine.config) if engine is not None else None
    if isinstance(settings, dict):
        settings = {k: v for k, v in settings.items() if k not in _TRANSPORT_KEYS}
    return {"backend": _dump(b.config), "engine": settings}


def target_digests(router: Router, targets: Iterable[str], policy_target: str) -> dict[str, str]:
    """Each target's configuration hash: the backend's config and what its engine answers with."""
    out = {}
    for target in targets:
        if target == policy_target:  # the policy end to end depends on it and on every backend it may pick
            out[target] = digest({"policy": _dump(router.policy.config),
                                  "backends": {n: _backend(router, n) for n in sorted(router.backends)}})
        else:
            out[target] = digest(_backend(router, target))
    return out


def scorer_digest(router: Router, scorer: Scorer) -> str | None:
    """What decides ``scorer``'s scores beyond its name: a judge backend's configuration, or a custom function's
    source (its qualified name when the source cannot be read); None for a built-in scorer."""
    import inspect

    from genroute.bench.scorers import BUILTIN

    if scorer.judge is not None:
        return digest(_backend(router, scorer.judge))
    if scorer.fn is None or scorer.name in BUILTIN or scorer.name.startswith("regex"):
        return None
    try:
        return digest(inspect.getsource(scorer.fn))
    except (OSError, TypeError):  # defined in a REPL or a C extension: the name is all there is
        return digest(f"{getattr(scorer.fn, '__module__', '')}.{getattr(scorer.fn, '__qualname__', scorer.name)}")


def target_prices(router: Router, targets: Iterable[str], policy_target: str) -> dict[str, str]:
    """Each target's price hash: the pricing table's entry for the model its calls are billed at (a free local
    engine's: its cloud reference model's), as ``router.build.require_prices`` finds it."""
    pricing = router.resources.pricing

    def price(name: str) -> Any:
        backend = router.backends[name]
        engine = router.resources.engines.get(getattr(backend.config, "engine", ""))
        if engine is None:
            return None
        priced = engine.pricing_model(backend.billed_as(pricing)[0]) or engine.reference_model
        found = pricing.lookup(priced) if priced else None
        return [priced, found.model_dump(mode="json") if found is not None else None]

    return {target: digest({n: price(n) for n in sorted(router.backends)} if target == policy_target
                           else price(target)) for target in targets}


def check_and_write(out_dir: str | Path, manifest: RunManifest, *, results: Path,
                    scored: Collection[str] | None = None) -> Path:
    """Refuse a rerun whose fingerprint differs from the stored one; then write the merged manifest.

    ``scored``: the targets with a scored row in ``results`` (None: every target). The others' rows are all
    failures the rerun replaces (a set-up error fixed), so their configuration may change, and while no target
    has a scored row, so may the scorer.
    """
    path = Path(out_dir) / MANIFEST_FILE
    stored = _read(path) if path.exists() else {}
    targets, prices = dict(manifest.targets), dict(manifest.prices)
    if stored and results.exists() and results.stat().st_size > 0:
        _check(path, stored, manifest, scored)
        # Targets of earlier runs stay recorded, so a later rerun of them is still checked.
        targets = {**(stored.get("targets") or {}), **targets}
        prices = {**(stored.get("prices") or {}), **prices}
    path.parent.mkdir(parents=True, exist_ok=True)
    final = manifest.model_copy(update={"targets": targets, "prices": prices})
    from genroute.cache import atomic_write_bytes

    # Past a planted link, keeping the mode a rerun's run.json had.
    atomic_write_bytes(path, (final.model_dump_json(indent=2) + "\n").encode("utf-8"), same_mode=True)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable run manifest ({exc}); use another --out", field="out") from None
    return stored if isinstance(stored, dict) else {}


def _check(path: Path, stored: Mapping[str, Any], current: RunManifest, scored: Collection[str] | None) -> None:
    # Fields a manifest of an older version lacks cannot be compared: only present ones are checked.
    for key, option in _CHECKED.items():
        if option == "scorer" and scored is not None and not scored:
            continue  # no row was scored: every row is rerun, with this scorer
        old, new = stored.get(key), getattr(current, key)
        if old is not None and new is not None and old != new:
            why = ("its judge backend's configuration or its function's code changed" if key == "scorer_sha256"
                   else f"{key} {old!r}, now {new!r}")
            raise UsageError(f"{path.parent} holds results made with a different {option} ({why}); "
                             f"rerun with the same {option} or use another --out", field=option)
    checked = set(current.targets) if scored is None else set(scored)
    for target, new in current.targets.items():
        old = (stored.get("targets") or {}).get(target)
        if old is not None and old != new and target in checked:
            field = "policy" if target.startswith("@") else f"backends.{target}"
            raise UsageError(
                f"{path.parent} holds results of {target!r} made with a different configuration "
                f"({old} vs {new}); restore it or use another --out", field=field)
    for target, new in current.prices.items():
        old = (stored.get("prices") or {}).get(target)
        if old is not None and old != new and target in checked:
            raise UsageError(
                f"{path.parent} holds results of {target!r} billed at another price ({old} vs {new}): old and new "
                "rows would be averaged at two prices; restore the price or use another --out", field="pricing")
