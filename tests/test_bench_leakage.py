"""A local tuned model benchmarked on the records it was tuned on: the advisor leaves them out and the report says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from genroute.bench import report_outcomes
from genroute.bench.advisor import TunedInfo
from genroute.bench.datasets import BenchRecord
from genroute.bench.runner import Outcome
from genroute.knowledge.examples import input_key


def test_the_advisor_leaves_out_the_records_a_local_tuned_model_was_trained_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`genroute tune --local data.jsonl` then `genroute bench data.jsonl --backends icl,tuned`: the tuned model was
    scored on its own training inputs, and the advisor said "graduate" on the recall it measured."""
    records = [BenchRecord(id=f"r{i}", input=f"Question {i} about my card", label="card", task="intent")
               for i in range(60)]
    trained = records[:40]   # tuned on these (in another spelling: the key reads case and spacing as one)
    result = tmp_path / "adapter" / "tune_result.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"train_cpu_seconds": 10.0,
                                  "input_keys": sorted(input_key(f"  {r.input.upper()} ") for r in trained)}))
    # On what it was trained on, the tuned model is always right; on the 20 others, right on 10 of them, as ICL is.
    outcomes = [Outcome(backend="tuned", record_id=r.id, ok=True, scorer="label_accuracy",
                        score=1.0 if i < 40 else float(i % 2)) for i, r in enumerate(records)]
    outcomes += [Outcome(backend="icl", record_id=r.id, ok=True, scorer="label_accuracy", score=float(i % 2))
                 for i, r in enumerate(records)]
    caplog.set_level(logging.WARNING, logger="genroute")
    report = report_outcomes(outcomes, records, tmp_path / "out", kinds={"icl": "icl", "tuned": "tuned"},
                             tuned_info=TunedInfo(where="local", tune_result=str(result)), compile=False)
    advice = report.advice
    assert advice is not None and advice.trained_on == 40
    assert advice.quality is not None and advice.quality.n == 20 and advice.quality.difference == 0.0
    assert advice.verdict == "inconclusive"   # on all 60 records: "graduate", tuned +0.333
    assert "tuned on the inputs of 40 of these records" in advice.text
    text = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert "## Tuned on benchmark records" in text and "tuned was tuned on the inputs of 40 of the 60 records" in text
    assert any("40 of the 60 records" in r.getMessage() for r in caplog.records)

    # A tune_result.json of an earlier genroute lists no inputs: nothing is left out.
    result.write_text(json.dumps({"train_cpu_seconds": 10.0}))
    earlier = report_outcomes(outcomes, records, tmp_path / "out2", kinds={"icl": "icl", "tuned": "tuned"},
                              tuned_info=TunedInfo(where="local", tune_result=str(result)), compile=False)
    assert earlier.advice is not None and earlier.advice.trained_on == 0 and earlier.advice.verdict == "graduate"
