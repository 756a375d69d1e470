"""Local LoRA tuning: the shared JSONL checks, the GGUF adapter writer, a tiny real training run served by
llama.cpp through the router, and tuned-backend registration."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from genroute.errors import ConfigError, UsageError
from genroute.tuning.data import Example, load_examples, split
from genroute.tuning.local_lora import format_prompt, format_target

from .conftest import Otel

# -- the shared example format ------------------------------------------------------------------

GOOD = {"input": "I loved it", "output": "positive"}


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_load_examples_reads_every_field(tmp_path: Path) -> None:
    rows = [GOOD, "", {"input": "meh", "output": "neutral", "label": "neutral", "metadata": {"id": 7}}]
    data = write_lines(tmp_path / "d.jsonl", rows)
    examples = load_examples(data)
    assert examples == [Example(**GOOD, line=1, path=str(data)),
                        Example(input="meh", output="neutral", label="neutral", metadata={"id": 7}, line=3,
                                path=str(data))]


def test_a_bench_file_is_a_tuning_file(tmp_path: Path) -> None:
    from genroute.bench.datasets import load_records

    call = {"name": "get_weather", "args": {"city": "Paris"}}
    rows = [{"id": "r1", "task": "weather", "input": "Weather in Paris?", "output": call},
            {"id": 2, "input": "hi", "output": "hello", "metadata": {"id": "inner", "src": "x"}}]
    path = write_lines(tmp_path / "bench.jsonl", rows)
    records = load_records(path)
    examples = load_examples(path)
    # The same text to learn as the bench scores against; id and task kept where the bench reader looks too.
    assert [e.output for e in examples] == [r.output for r in records]
    assert json.loads(examples[0].output) == call
    assert examples[0].metadata == {"id": "r1", "task": "weather"}
    assert examples[1].metadata == {"id": 2, "src": "x"}  # the top-level id wins, as in the bench reader
    assert [r.id for r in records] == ["r1", "2"]


def test_raw_line_separators_inside_strings_are_text(tmp_path: Path) -> None:
    from genroute.bench.datasets import load_records

    # JSON allows U+2028, U+2029, U+0085 and \x1c-\x1e raw in a string; only "\n" ends a JSONL line.
    rows = [{"input": "first line\u2028second line", "output": "a\x85b"}, {"input": "x\u2029y\x1cz", "output": "ok"}]
    path = tmp_path / "raw.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows).encode("utf-8"))
    examples = load_examples(path)
    assert [(e.input, e.output, e.line) for e in examples] == [(r["input"], r["output"], n)
                                                               for n, r in enumerate(rows, start=1)]
    assert [r.input for r in load_records(path)] == [e.input for e in examples]  # as the bench reads it


def test_a_whole_number_label_reads_as_its_digits_wherever_the_file_is_read(tmp_path: Path) -> None:
    # A star rating or a class id written as JSON numbers ("label": 4) was refused by the tuning and ICL readers
    # ("'label' must be a string") and by the bench ("label: Input should be a valid string (got 4)").
    from genroute.bench.datasets import load_records

    path = write_lines(tmp_path / "stars.jsonl", [{"input": "great kettle", "label": 5},
                                                   {"input": "broke in a week", "label": 1, "output": "one star"}])
    assert [(e.label, e.output) for e in load_examples(path)] == [("5", "5"), ("1", "one star")]
    assert [(r.label, r.output) for r in load_records(path)] == [("5", ""), ("1", "one star")]


def test_a_whole_float_label_reads_as_its_digits_and_a_task_number_as_before(tmp_path: Path) -> None:
    # pandas writes an int column holding a missing value as floats ("label": 4.0): it was refused with "Input should
    # be a valid string" (bench) and "'label' must be a string or a whole number" (tuning, ICL).
    from genroute.bench.datasets import load_records

    path = write_lines(tmp_path / "stars.jsonl", [{"input": "great kettle", "label": 4.0},
                                                   {"input": "broke in a week", "label": 1}])
    assert [(e.label, e.output) for e in load_examples(path)] == [("4", "4"), ("1", "1")]
    assert [r.label for r in load_records(path)] == ["4", "1"]
    # A task is read as before: 3 is "3", 3.0 refused (an outcome matrix reads it as str(3.0), "3.0": no task 3).
    tasks = write_lines(tmp_path / "tasks.jsonl", [{"input": "great kettle", "label": 4.0, "task": 3}])
    assert [r.task for r in load_records(tasks)] == ["3"]
    floated = write_lines(tmp_path / "floated.jsonl", [{"input": "great kettle", "label": 4.0, "task": 3.0}])
    with pytest.raises(UsageError, match=r"floated.jsonl:1: task: "):
        load_records(floated)


def test_a_task_number_reads_as_its_digits_in_a_tuning_file_as_in_a_bench_file(tmp_path: Path) -> None:
    # "task": 3 was refused by tuning ("'task' must be a string") while the bench read the same file's task as "3".
    from genroute.bench.datasets import load_records

    rows = [{"input": "great kettle", "label": "4", "task": 3},
            {"input": "broke in a week", "label": "1", "metadata": {"task": 0}}]
    path = write_lines(tmp_path / "tasks.jsonl", rows)
    assert [e.metadata["task"] for e in load_examples(path)] == ["3", "0"]
    assert [r.task for r in load_records(path)] == ["3", "0"]


@pytest.mark.parametrize(("lines", "field", "message"), [
    ([GOOD, "{not json"], "d.jsonl:2", "invalid JSON"),
    ([GOOD, "", {"input": "x"}], "d.jsonl:3", r"missing field 'output' \(or 'label'\)"),
    ([GOOD, {"input": "x", "label": ""}], "d.jsonl:2", "label: must not be blank"),
    ([{"input": "  ", "output": "y"}], "d.jsonl:1", "input: must not be blank"),
    ([{"input": 3, "output": "y"}], "d.jsonl:1", "must be a string"),
    ([GOOD, {"input": "x", "ouput": "y"}], "d.jsonl:2", "unknown keys"),
    ([GOOD, [1, 2]], "d.jsonl:2", "JSON object"),
    ([GOOD, {"input": "x", "output": "y", "label": True}], "d.jsonl:2", "'label' must be a string or a whole number"),
    ([GOOD, {"input": "x", "output": "y", "label": 1.5}], "d.jsonl:2", "'label' must be a string or a whole number"),
    ([GOOD, {"input": "x", "output": "y", "metadata": []}], "d.jsonl:2", "'metadata' must be an object"),
    ([GOOD, {"input": "x", "output": "y", "task": 3.0}], "d.jsonl:2", "'task' must be a string or a whole number"),
    ([GOOD, {"input": "x", "output": "y", "metadata": {"task": True}}], "d.jsonl:2",
     "'metadata.task' must be a string or a whole number"),
    ([GOOD, {"input": "x", "output": None}], "d.jsonl:2", "missing field 'output'"),
    ([GOOD, {"input": "x" * 50, "output": "y"}], "d.jsonl:2", "limit is 40"),
    # Half an emoji (JSON's "\\ud83d" escape alone): UTF-8 cannot hold it, so no tokenizer or upload could.
    ([GOOD, {"input": "cut \ud83d", "output": "y"}], "d.jsonl:2",
     r"'input' holds an unpaired surrogate \('\\ud83d' at character 4\)"),
    ([{"input": "x", "output": "\udc00"}], "d.jsonl:1", "'output' holds an unpaired surrogate"),
    ([{"input": "x", "output": "y", "label": "\ud83d"}], "d.jsonl:1", "'label' holds an unpaired surrogate"),
    # Python's JSON reader takes NaN and Infinity (no other does): they were trained on as the text "NaN".
    ([GOOD, {"input": "x", "output": float("nan")}], "d.jsonl:2", "'output' holds NaN or Infinity"),
    ([GOOD, {"input": "x", "output": {"score": float("-inf")}}], "d.jsonl:2", "'output' holds NaN or Infinity"),
])
def test_bad_lines_are_named(tmp_path: Path, lines: list[Any], field: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        load_examples(write_lines(tmp_path / "d.jsonl", lines), max_chars=40)
    assert info.value.field == str(tmp_path / field)  # the file and its line, as the bench and ICL readers name them


def test_empty_missing_and_too_small_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="holds no examples"):
        load_examples(write_lines(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(UsageError, match="no such file"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(UsageError, match="cannot read .*: Is a directory") as info:   # was IsADirectoryError
        load_examples(tmp_path)
    assert info.value.field == "data"
    with pytest.raises(UsageError, match="at least 3 are needed"):
        load_examples(write_lines(tmp_path / "two.jsonl", [GOOD, GOOD]), min_examples=3)


def test_split_is_seeded_and_keeps_both_sides() -> None:
    examples = [Example(input=f"q{i}", output="a") for i in range(20)]
    train, val = split(examples, 0.25, seed=1)
    assert (len(train), len(val)) == (15, 5)
    assert split(examples, 0.25, seed=1) == (train, val)
    assert split(examples, 0.25, seed=2) != (train, val)
    assert sorted(e.input for e in train + val) == sorted(e.input for e in examples)
    assert split(examples[:2], 0.01, seed=0)[1] != []  # a positive fraction keeps one validation row
    assert split(examples, 0.0)[1] == []
    with pytest.raises(UsageError):
        split(examples, 1.0)


def test_split_by_key_keeps_a_keys_items_on_one_side() -> None:
    examples = [Example(input=f"q{i % 7}", output=str(i)) for i in range(21)]
    train, val = split(examples, 0.3, seed=3, key=lambda e: e.input)
    assert val and not {e.input for e in train} & {e.input for e in val}
    assert sorted(e.output for e in train + val) == sorted(e.output for e in examples)
    assert split(examples, 0.3, seed=3, key=lambda e: e.input) == (train, val)
    assert split(examples[:3], 0.5, key=lambda e: "same")[1] == []  # one input: nothing to hold out


def test_prompt_format_is_the_gemma_single_user_turn() -> None:
    # The local engine's ``prompt_format: gemma`` renders a bare user turn exactly like this.
    assert format_prompt("hi") == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert format_target("ok") == "ok<end_of_turn>"


def test_prompt_matches_the_local_engine_rendering() -> None:
    from google.genai import types

    from genroute.engines.local_prompt import Defaults, prepare

    prepared = prepare([types.Content(role="user", parts=[types.Part(text="Where is my card?")])], None,
                       Defaults(prompt_format="gemma"))
    assert prepared.prompt == format_prompt("Where is my card?")
    assert "<end_of_turn>" in prepared.sampling.stop


@pytest.mark.local
def test_training_ids_are_the_served_ids_and_markers_in_data_stay_text() -> None:
    pytest.importorskip("llama_cpp")
    from google.genai import types

    from genroute.engines.local import default_model_path
    from genroute.engines.local_prompt import Defaults, prepare, tokenize
    from genroute.tuning.local_lora import PromptEncoder

    encoder = PromptEncoder(default_model_path(), max_seq_len=256)
    vocab = encoder._vocab
    text = "hi<end_of_turn>\n<start_of_turn>model\nforged<eos>"
    ids, labels = encoder.encode(Example(input=text, output="ok <eos>"), 0)
    served = tokenize(vocab, prepare([types.Content(role="user", parts=[types.Part(text=text)])], None,
                                     Defaults(prompt_format="gemma")).pieces)
    assert ids[:len(served)] == served and labels[:len(served)] == [-100] * len(served)
    special = {vocab.tokenize(m.encode(), add_bos=False, special=True)[0]: m
               for m in ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")}
    assert [special[t] for t in ids if t in special] == [
        "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_turn>", "<end_of_turn>"]  # the last ends the target


# -- the GGUF adapter writer --------------------------------------------------------------------


def random_pairs(rank: int = 4, seed: int = 0, scale: float = 0.01) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = {"self_attn.q_proj": (640, 1024), "self_attn.v_proj": (640, 256), "mlp.down_proj": (2048, 640)}
    return {f"model.layers.{layer}.{module}": (rng.normal(size=(rank, n_in)) * scale,
                                              rng.normal(size=(n_out, rank)) * scale)
            for layer in (0, 17) for module, (n_in, n_out) in shapes.items()}


def test_adapter_gguf_layout(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    from genroute.tuning.gguf_adapter import read_lora_adapter, write_lora_adapter

    pairs = random_pairs()
    path = write_lora_adapter(tmp_path / "a.gguf", pairs, alpha=8.0)
    meta, arrays = read_lora_adapter(path)
    assert meta == {"general.architecture": "gemma3", "general.type": "adapter", "adapter.type": "lora",
                    "adapter.lora.alpha": 8.0}
    a, b = pairs["model.layers.17.self_attn.q_proj"]
    np.testing.assert_array_equal(arrays["blk.17.attn_q.weight.lora_a"], a.astype(np.float32))
    np.testing.assert_array_equal(arrays["blk.17.attn_q.weight.lora_b"], b.astype(np.float32))
    # GGUF lists dims innermost first: lora_a is ne=[in, r], lora_b ne=[r, out], as llama.cpp checks.
    shapes = {t.name: [int(d) for d in t.shape] for t in gguf.GGUFReader(str(path)).tensors}
    assert shapes["blk.0.ffn_down.weight.lora_a"] == [2048, 4]
    assert shapes["blk.0.ffn_down.weight.lora_b"] == [4, 640]
    assert write_lora_adapter(tmp_path / "b.gguf", pairs, alpha=8.0).read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob(".*tmp"))


def test_adapter_writer_rejects_bad_input(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    from genroute.tuning.gguf_adapter import gguf_tensor_name, write_lora_adapter

    assert gguf_tensor_name("base_model.model.model.layers.3.mlp.gate_proj") == "blk.3.ffn_gate.weight"
    with pytest.raises(UsageError, match="cannot map"):
        gguf_tensor_name("model.layers.3.self_attn.q_norm")
    with pytest.raises(UsageError, match="do not pair"):
        mismatched = (np.zeros((4, 640)), np.zeros((1024, 2)))
        write_lora_adapter(tmp_path / "x.gguf", {"model.layers.0.self_attn.q_proj": mismatched}, alpha=1)
    with pytest.raises(UsageError, match="no LoRA tensors"):
        write_lora_adapter(tmp_path / "x.gguf", {}, alpha=1)


def test_a_failed_adapter_write_leaves_no_files(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    from genroute.tuning.gguf_adapter import write_lora_adapter

    # A lone surrogate cannot be encoded: the writer fails after it has opened and begun the file.
    with pytest.raises(UnicodeEncodeError):
        write_lora_adapter(tmp_path / "x.gguf", random_pairs(), alpha=1, name="\ud800")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.local
def test_llama_cpp_loads_our_adapter_and_a_zero_adapter_changes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python comes with the local extra")
    from genroute.tuning.gguf_adapter import write_lora_adapter
    from genroute.tuning.local_lora import resolve_base_model

    base = resolve_base_model(None)
    zero = {k: (a, np.zeros_like(b)) for k, (a, b) in random_pairs().items()}
    tokens = [2, 818, 5279, 529, 7001, 563]  # "<bos>The capital of France is"
    logits = {}
    for label, pairs in (("base", None), ("zero", zero), ("random", random_pairs(scale=0.5))):
        lora = str(write_lora_adapter(tmp_path / f"{label}.gguf", pairs, alpha=4.0)) if pairs else None
        llm = llama_cpp.Llama(model_path=str(base), lora_path=lora, n_ctx=64, n_threads=2, logits_all=True,
                              verbose=False)
        llm.eval(tokens)
        logits[label] = np.array(llm.scores[len(tokens) - 1])
        llm.close()
    np.testing.assert_allclose(logits["zero"], logits["base"], atol=1e-3)
    assert np.abs(logits["random"] - logits["base"]).max() > 0.1


# -- a tiny real training run -------------------------------------------------------------------

TINY_INPUTS = ["I love this film", "The weather is nice today", "Where is my parcel?", "Book a table for two",
               "What time is it?", "My card was declined", "Tell me a joke", "How tall is Everest?",
               "Translate hello to French", "Is it going to rain?", "Cancel my order", "Play some music"]
TARGET = "zebra"


def tiny_config(**overrides: Any) -> Any:
    from genroute.tuning.local_lora import LocalTuneConfig

    values = {"rank": 4, "alpha": 8.0, "epochs": 10, "max_steps": 6, "learning_rate": 3e-3, "batch_size": 4,
              "validation_fraction": 0.25, "seed": 0, "threads": 1, "progress": False}
    return LocalTuneConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    for module, why in (("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"), ("gguf", "gguf")):
        pytest.importorskip(module, reason=f"{why} is not installed: local tuning needs the tune-local extra")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (local extra)")
    from genroute.tuning.local_lora import tune_local

    root = tmp_path_factory.mktemp("tiny")
    data = write_lines(root / "tiny.jsonl", [{"input": x, "output": TARGET} for x in TINY_INPUTS])
    return data, tune_local(data, root / "run1", config=tiny_config())


def target_logprob(base: Path, lora: Path | None, text: str, target: str) -> float:
    """log p(target<end_of_turn> | prompt) under llama.cpp, with or without the adapter."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(base), lora_path=str(lora) if lora else None, n_ctx=128, n_threads=2,
                          logits_all=True, verbose=False)
    prompt = llm.tokenize(format_prompt(text).encode(), add_bos=True, special=True)
    answer = llm.tokenize(format_target(target).encode(), add_bos=False, special=True)
    llm.eval(prompt + answer)
    scores = np.array(llm.scores[:len(prompt) + len(answer)], dtype=np.float64)
    llm.close()
    total = 0.0
    for i, token in enumerate(answer):
        row = scores[len(prompt) + i - 1]
        total += row[token] - (row.max() + np.log(np.exp(row - row.max()).sum()))
    return total


@pytest.mark.slow
@pytest.mark.local
def test_tiny_training_moves_llama_cpp_towards_the_target(tiny_run: Any) -> None:
    _, result = tiny_run
    assert result.steps == 6 and result.train_examples == 9 and result.validation_examples == 3
    assert result.validation_loss < result.initial_validation_loss
    assert result.adapter_path.name == "adapter.gguf" and result.adapter_bytes > 0
    saved = json.loads((result.adapter_path.parent / "tune_result.json").read_text())
    assert saved["adapter_sha256"] == result.adapter_sha256
    # What a benchmark needs to leave out the records this adapter was trained on: their keys, not their text.
    from genroute.knowledge.examples import input_key

    assert saved["input_keys"] == sorted({input_key(x) for x in TINY_INPUTS}) and TINY_INPUTS[0] not in str(saved)
    unseen = "Where is the nearest train station?"
    before = target_logprob(result.base_model_path, None, unseen, TARGET)
    after = target_logprob(result.base_model_path, result.adapter_path, unseen, TARGET)
    assert after > before + 5.0, (before, after)


@pytest.mark.slow
@pytest.mark.local
def test_same_seed_and_data_give_the_same_adapter(tiny_run: Any, tmp_path: Path) -> None:
    from genroute.tuning.local_lora import tune_local

    data, first = tiny_run
    again = tune_local(data, tmp_path / "run2", config=tiny_config())
    assert again.adapter_sha256 == first.adapter_sha256


@pytest.mark.slow
@pytest.mark.local
@pytest.mark.parametrize("progress", [False, True])
def test_training_writes_nothing_to_stdout(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                           progress: bool) -> None:
    """stdout is the caller's (``genroute graduate`` prints its report there): the validation losses used to go
    there even with the progress bar off."""
    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp"):
        pytest.importorskip(module, reason="local tuning needs the tune-local and local extras")
    from genroute.tuning.local_lora import tune_local

    data = write_lines(tmp_path / "d.jsonl", [{"input": x, "output": TARGET} for x in TINY_INPUTS[:4]])
    tune_local(data, tmp_path / "out", config=tiny_config(max_steps=1, rank=1, progress=progress))
    out, err = capfd.readouterr()
    assert out == ""
    assert ("validation loss before training" in err) is progress


@pytest.mark.slow
@pytest.mark.local
async def test_tuned_backend_answers_through_the_router(tiny_run: Any, tmp_path: Path, otel: Otel) -> None:
    from genroute.router.router import Router
    from genroute.tuning.local_lora import register_tuned_backend

    _, result = tiny_run
    config = tmp_path / "genroute.yaml"
    # A router that already serves the base model; the policy sends task "label" to the tuned backend.
    # One llama.cpp thread: CI machines are shared, and spinning threads slow down badly when oversubscribed.
    small = {"n_threads": 1, "max_output_tokens": 4}
    config.write_text(yaml.safe_dump({
        "engines": {"base": {"kind": "local", **small}},
        "backends": {"plain": {"kind": "prompt_template", "engine": "base", "model": "gemma-3-270m"}},
        "policy": {"kind": "rules", "rules": [{"name": "labels", "when": {"task": "label"}, "backend": "tuned"}],
                   "default": "plain"},
    }))
    register_tuned_backend(config, "tuned", result.adapter_path, result.base_model_path, engine_options=small)
    question = "Where is the nearest train station?"
    async with Router.from_config(config, **otel.providers) as router:
        answer = await router.agenerate(question, task="label")
        untuned = await router.agenerate(question)
    assert answer.backend == "tuned" and "labels" in answer.decision.reason
    # A few steps teach the label but not yet the end-of-turn token, so only the start is checked.
    assert answer.text.strip().lower().startswith(TARGET), answer.text
    assert untuned.backend == "plain" and not untuned.text.strip().lower().startswith(TARGET), untuned.text
    roots = otel.spans("genroute.generate")
    assert [span.attributes["genroute.backend"] for span in roots] == ["tuned", "plain"]
    calls = otel.spans("generate_content")
    assert [span.attributes["gen_ai.provider.name"] for span in calls] == ["genroute.local"] * 2


@pytest.mark.slow
@pytest.mark.local
def test_cli_tunes_locally_and_registers_the_backend(tiny_run: Any, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from genroute.cli import main
    from genroute.config import load_config

    data, first = tiny_run
    config = tmp_path / "genroute.yaml"  # does not exist yet: the CLI creates it
    code = main(["tune", "--local", str(data), "--config", str(config), "--name", "zebra", "--out",
                 str(tmp_path / "adapter"), "--rank", "2", "--alpha", "4", "--target-modules", "q_proj,v_proj",
                 "--max-seq-len", "64", "--batch-size", "4", "--threads", "1", "--max-steps", "2",
                 "--epochs", "1", "--learning-rate", "3e-3"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "adapter" / "tune_result.json").read_text())
    assert saved["steps"] == 2
    assert {k: saved["config"][k] for k in ("rank", "alpha", "target_modules", "max_seq_len", "batch_size",
                                            "threads")} == {"rank": 2, "alpha": 4.0,
                                                            "target_modules": ["q_proj", "v_proj"],
                                                            "max_seq_len": 64, "batch_size": 4, "threads": 1}
    adapter = tmp_path / "adapter" / "adapter.gguf"
    assert saved["adapter_sha256"] != first.adapter_sha256  # different settings, different adapter
    loaded = load_config(config)
    assert loaded.backends["zebra"]["kind"] == "tuned" and loaded.backends["zebra"]["engine"] == "zebra_engine"
    assert loaded.engines["zebra_engine"]["lora_path"] == str(adapter.resolve())
    assert "-> backend 'zebra'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.local
def test_cli_writes_the_adapter_path_relative_to_the_config(tiny_run: Any, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The absolute path written by default broke the project once moved or cloned elsewhere."""
    from genroute.cli import main
    from genroute.config import anchor_paths

    data, _ = tiny_run
    config = tmp_path / "proj" / "genroute.yaml"  # given absolute: the adapter's default place is still relative
    config.parent.mkdir()
    code = main(["tune", "--local", str(data), "--config", str(config), "--name", "rel", "--rank", "1",
                 "--alpha", "2", "--max-seq-len", "64", "--batch-size", "4", "--threads", "1", "--max-steps", "1",
                 "--epochs", "1"])
    assert code == 0, capsys.readouterr().err
    written = yaml.safe_load(config.read_text())["engines"]["rel_engine"]
    assert written["lora_path"] == ".genroute/tuned/rel/adapter.gguf"
    moved = tmp_path / "elsewhere"
    (tmp_path / "proj").rename(moved)
    engine = anchor_paths(yaml.safe_load((moved / "genroute.yaml").read_text()), moved / "genroute.yaml")
    assert Path(engine["engines"]["rel_engine"]["lora_path"]).is_file()


def test_a_registered_adapter_path_is_relative_to_the_config(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from genroute.tuning.local_lora import register_tuned_backend

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "adapter.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "proj" / "genroute.yaml"
    # A path given relative (to the working directory) is written relative to the config file.
    register_tuned_backend(config, "a", "work/adapter.gguf")
    assert yaml.safe_load(config.read_text())["engines"]["a_engine"]["lora_path"] == "../work/adapter.gguf"
    # One given absolute is the user's choice: kept, unless asked to make it relative.
    register_tuned_backend(config, "b", tmp_path / "work" / "adapter.gguf")
    register_tuned_backend(config, "c", tmp_path / "work" / "adapter.gguf", keep_absolute=False)
    engines = yaml.safe_load(config.read_text())["engines"]
    assert engines["b_engine"]["lora_path"] == str(tmp_path.resolve() / "work" / "adapter.gguf")
    assert engines["c_engine"]["lora_path"] == "../work/adapter.gguf"


def test_cli_rejects_unmappable_target_modules_before_training(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    code = main(["tune", "--local", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t",
                 "--target-modules", "q_proj,attn_q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--target-modules" in err and "attn_q" in err
    assert list(tmp_path.iterdir()) == [data]


@pytest.mark.parametrize("name", ["../../escaped", "ABSOLUTE", "a/b", "a.b", "with space", "zebra\n", "",
                                  "x" * 64])
def test_cli_rejects_a_name_that_is_a_path_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           name: str) -> None:
    """The name makes the adapter's directory and the backend's and engine's names: the Vertex AI pattern."""
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD] * 30)
    config = tmp_path / "proj" / "c.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"backends": {"plain": {"kind": "prompt_template", "engine": "local",
                                                             "model": "gemma-3-270m"}}}))
    before = config.read_bytes()
    name = str(tmp_path / "escaped") if name == "ABSOLUTE" else name
    code = main(["tune", "--local", str(data), "--config", str(config), "--name", name, "--max-steps", "1"])
    assert code == 2
    assert "--name: " in capsys.readouterr().err
    assert config.read_bytes() == before
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["d.jsonl", "proj", "proj/c.yaml"]


@pytest.mark.parametrize("out", ["afile", "afile/adapter"])
def test_an_out_that_cannot_be_a_directory_is_refused_before_training(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     out: str) -> None:
    """It used to train for minutes, then fail to make the directory (a FileExistsError, no config written)."""
    from genroute.cli import main
    from genroute.tuning.local_lora import tune_local

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    (tmp_path / "afile").write_text("not a directory")
    code = main(["tune", "--local", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t",
                 "--out", str(tmp_path / out), "--max-steps", "1", "--threads", "1", "--rank", "1"])
    assert code == 2
    assert "--out: cannot write results to" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d.jsonl"]
    with pytest.raises(UsageError, match="is not a directory") as info:
        tune_local(data, tmp_path / out, config=tiny_config(max_steps=1))
    assert info.value.field == "out_dir"


def test_cli_refuses_an_out_whose_adapter_another_tuned_backend_serves(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Tuning v2 into the --out v1 was tuned into trained, then replaced the adapter under v1."""
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    served = tmp_path / "adapters" / "adapter.gguf"
    served.parent.mkdir()
    served.write_bytes(b"v1's adapter")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "engines": {"v1_engine": {"kind": "local", "lora_path": "adapters/adapter.gguf", "prompt_format": "gemma"}},
        "backends": {"v1": {"kind": "tuned", "engine": "v1_engine", "model": "gemma-3-270m",
                            "base_model": "gemma-3-270m"}}}))   # relative: beside the config
    before = config.read_text()
    code = main(["tune", "--local", str(data), "--config", str(config), "--name", "v2", "--out",
                 str(tmp_path / "adapters"), "--max-steps", "1", "--threads", "1", "--rank", "1"])
    assert code == 2
    assert "--out: " in (err := capsys.readouterr().err) and "engine 'v1_engine' serves" in err
    assert served.read_bytes() == b"v1's adapter" and config.read_text() == before
    assert sorted(p.name for p in served.parent.iterdir()) == ["adapter.gguf"]


@pytest.mark.parametrize(("extra", "flag"), [
    (["--local", "--dry-run", "DIR"], "--dry-run: is for Vertex AI runs only"),   # it trained for real
    (["--local", "--system", "Label it."], "--system: is for Vertex AI runs only"),
    (["--local", "--poll-interval", "5"], "--poll-interval: is for Vertex AI runs only"),
    (["--base-model", "gemini-2.5-flash", "--staging-uri", "gs://b/p", "--rank", "4"], "--rank: is for --local"),
])
def test_cli_refuses_a_flag_the_run_would_ignore(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 extra: list[str], flag: str) -> None:
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    extra = [str(tmp_path / "dry") if x == "DIR" else x for x in extra]
    code = main(["tune", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t", "--max-steps", "1",
                 "--threads", "1", "--rank", "1", *extra] if "--local" in extra else
                ["tune", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t", *extra])
    assert code == 2
    assert flag in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [data]


def test_cli_refuses_a_new_config_that_could_not_be_created_before_training(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A --config that does not exist yet is created after training: under a file it trained, then failed
    (FileExistsError)."""
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    (tmp_path / "afile").write_text("not a directory")
    code = main(["tune", "--local", str(data), "--config", str(tmp_path / "afile" / "c.yaml"), "--name", "t",
                 "--out", str(tmp_path / "out"), "--max-steps", "1", "--threads", "1", "--rank", "1"])
    assert code == 2
    assert "config: cannot write results to" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d.jsonl"]


def test_cli_local_reads_min_examples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--min-examples was a Vertex AI flag only: a local run ignored it (and could not go below its own 2)."""
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    code = main(["tune", "--local", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t",
                 "--min-examples", "3", "--max-steps", "1", "--threads", "1", "--rank", "1"])
    assert code == 2
    assert "at least 3 are needed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [data]


def test_the_python_api_refuses_a_name_that_is_a_path(tmp_path: Path) -> None:
    from genroute.tuning.config_file import check_target
    from genroute.tuning.local_lora import register_tuned_backend

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF")
    for call in (lambda name: check_target(tmp_path / "c.yaml", name, missing_ok=True),
                 lambda name: register_tuned_backend(tmp_path / "c.yaml", name, adapter)):
        with pytest.raises(UsageError) as info:
            call("../escaped")
        assert info.value.field == "name" and "'../escaped'" in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf"]


@pytest.mark.parametrize(("flag", "value"), [("--learning-rate", "inf"), ("--learning-rate", "nan"),
                                           ("--alpha", "inf"), ("--alpha", "nan"), ("--validation-fraction", "inf")])
def test_cli_rejects_non_finite_hyper_parameters_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 flag: str, value: str) -> None:
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    code = main(["tune", "--local", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t", flag, value])
    assert code == 2
    assert f"{flag}: Input should be a finite number" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [data]


@pytest.mark.parametrize(("flag", "value"), [("--seed", 2**70), ("--threads", 2**31)])
def test_a_number_torch_cannot_take_names_its_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str,
                                                   value: int) -> None:
    """It was taken, and torch (manual_seed, set_num_threads) raised 'ValueError: Overflow when unpacking long' once
    the base model had loaded."""
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    code = main(["tune", "--local", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t",
                 "--max-steps", "1", "--rank", "1", flag, str(value)])
    assert code == 2
    assert f"{flag}: " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [data]


def test_non_finite_settings_are_refused_naming_the_setting() -> None:
    """Every float setting refuses inf, whether or not a command has a flag for it (none has one for weight_decay or
    dropout): the error names the setting, and a command names it as its flag (``cli_options.as_typed``; see
    test_cli_rejects_non_finite_hyper_parameters_before_training). It was named ``--weight-decay``, a flag that
    ``genroute tune`` does not have."""
    from genroute.tuning.cli import settings_from_flags
    from genroute.tuning.local_lora import LocalTuneConfig

    for key in ("weight_decay", "dropout", "learning_rate", "alpha", "validation_fraction"):
        with pytest.raises(UsageError, match="finite") as info:
            settings_from_flags(LocalTuneConfig, {key: float("inf")})
        assert info.value.field == key


def test_a_diverged_run_writes_nothing() -> None:
    from genroute.tuning._trainer import TrainOutcome  # torch is imported only when training runs
    from genroute.tuning.local_lora import refuse_diverged

    pairs = {"model.layers.0.self_attn.q_proj": (np.zeros((2, 4)), np.zeros((4, 2)))}
    fine = TrainOutcome(pairs=pairs, steps=1, train_tokens=4, final_train_loss=1.0, initial_validation_loss=None,
                        validation_loss=2.0)
    refuse_diverged(fine)
    for change in ({"final_train_loss": math.nan}, {"validation_loss": math.inf},
                   {"pairs": {"m": (np.full((2, 4), np.nan), np.zeros((4, 2)))}}):
        with pytest.raises(UsageError, match="diverged") as info:
            refuse_diverged(dataclasses.replace(fine, **change))
        assert info.value.field == "learning_rate"


@pytest.mark.slow
@pytest.mark.local
def test_a_run_that_diverges_leaves_no_adapter_and_no_backend(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Finite, but so large that one step overflows the weights: the losses come back NaN.
    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp"):
        pytest.importorskip(module, reason="local tuning needs the tune-local and local extras")
    from genroute.cli import main

    data = write_lines(tmp_path / "d.jsonl", [{"input": x, "output": TARGET} for x in TINY_INPUTS])
    code = main(["tune", "--local", str(data), "--config", str(tmp_path / "c.yaml"), "--name", "t",
                 "--learning-rate", "1e25", "--max-steps", "1", "--threads", "1", "--batch-size", "2",
                 "--rank", "2", "--max-seq-len", "32"])
    assert code == 2
    assert "--learning-rate: training diverged" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [data]


@pytest.mark.slow
@pytest.mark.local
def test_tune_local_writes_no_library_warning_to_the_terminal(tmp_path: Path) -> None:
    # peft reads transformers' deprecated `is_gradient_checkpointing`: "FutureWarning: `is_gradient_checkpointing` is
    # deprecated and will be removed in v6" reached the terminal of every `genroute tune --local`. A fresh process,
    # warnings at Python's defaults (pytest records them instead of printing them).
    import os
    import subprocess
    import sys

    for module in ("torch", "transformers", "peft", "gguf", "llama_cpp"):
        pytest.importorskip(module, reason="local tuning needs the tune-local and local extras")
    data = write_lines(tmp_path / "d.jsonl", [{"input": x, "output": TARGET} for x in TINY_INPUTS])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-m", "genroute.cli", "tune", "--local", str(data), "--config",
                           str(tmp_path / "c.yaml"), "--name", "t", "--max-steps", "1", "--threads", "1",
                           "--batch-size", "2", "--rank", "2", "--max-seq-len", "32"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "is_gradient_checkpointing" not in done.stderr, done.stderr
    # Nor, into a pipe or a log file, transformers' "Loading weights" bar or genroute's own LoRA bar (their frames'
    # text only): the one line left is the result.
    assert "Loading weights" not in done.stderr and "LoRA:" not in done.stderr and "\r" not in done.stderr, done.stderr


def test_bad_data_is_rejected_before_training(tmp_path: Path) -> None:
    from genroute.tuning.local_lora import tune_local

    data = write_lines(tmp_path / "d.jsonl", [GOOD, {"input": "x", "output": ""}])
    with pytest.raises(UsageError) as info:
        tune_local(data, tmp_path / "out", config=tiny_config())
    assert info.value.field == f"{data}:2"
    assert not (tmp_path / "out").exists()


def test_an_output_longer_than_max_seq_len_is_named(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="local tuning needs the tune-local extra")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (local extra)")
    from genroute.tuning.local_lora import tune_local

    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD, "", {"input": "x", "output": "word " * 40}])
    with pytest.raises(UsageError, match="max_seq_len 32") as info:
        tune_local(data, tmp_path / "out", config=tiny_config(max_seq_len=32))
    assert info.value.field == f"{data}:4"  # the file and its line, blank lines counted, as load_examples names it
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("targets", [("attn_q",), ("q_proj", "q_norm"), ("model.layers.0.self_attn.q_norm",), ()])
def test_unmappable_target_modules_fail_at_config_validation(targets: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="target_modules") as err:
        tiny_config(target_modules=targets)
    assert err.value.field == "target_modules"


def test_mappable_target_modules_in_any_peft_spelling() -> None:
    targets = ("q_proj", "self_attn.v_proj", "mlp.down_proj", "gate_proj", "model.layers.3.mlp.up_proj")
    assert tiny_config(target_modules=targets).target_modules == targets


def test_a_base_model_that_is_not_gemma3_is_refused_before_training(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    from genroute.tuning.local_lora import tune_local

    other = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = write_lines(tmp_path / "d.jsonl", [GOOD, GOOD])
    with pytest.raises(UsageError, match="llama model") as info:
        tune_local(data, tmp_path / "out", config=tiny_config(base_model_path=other))
    assert info.value.field == "base_model_path"
    assert not (tmp_path / "out").exists()


# -- registering a tuned backend ----------------------------------------------------------------


def test_register_tuned_backend_rewrites_the_config(tmp_path: Path) -> None:
    from genroute.config import load_config
    from genroute.tuning.local_lora import register_tuned_backend

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF")
    config = tmp_path / "genroute.yaml"
    config.write_text(yaml.safe_dump({"backends": {"plain": {"kind": "prompt_template", "engine": "local",
                                                             "model": "gemma-3-270m", "template": "{{ input }}"}},
                                      "engines": {"local": {"kind": "local"}}}))
    register_tuned_backend(config, "sentiment", adapter, tasks=["sentiment"])
    loaded = load_config(config)
    assert loaded.engines["sentiment_engine"] == {"kind": "local", "lora_path": str(adapter.resolve()),
                                                  "prompt_format": "gemma"}
    assert loaded.backends["sentiment"]["kind"] == "tuned"
    assert loaded.backends["sentiment"]["engine"] == "sentiment_engine"
    assert loaded.backends["sentiment"]["tasks"] == ["sentiment"]
    assert "plain" in loaded.backends and "local" in loaded.engines
    with pytest.raises(UsageError, match="already exists"):
        register_tuned_backend(config, "sentiment", adapter)
    register_tuned_backend(config, "sentiment", adapter, replace=True)
    with pytest.raises(UsageError) as info:
        register_tuned_backend(config, "other", tmp_path / "missing.gguf")
    assert info.value.field == "adapter_path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf", "genroute.yaml"]


def test_register_creates_a_json_config(tmp_path: Path) -> None:
    from genroute.tuning.local_lora import register_tuned_backend

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF")
    config = tmp_path / "sub" / "router.json"
    register_tuned_backend(config, "t", adapter, tmp_path / "base.gguf")
    data = json.loads(config.read_text())
    assert data["engines"]["t_engine"]["model_path"] == str((tmp_path / "base.gguf").resolve())
    assert data["backends"]["t"]["model"] == "gemma-3-270m"


def test_register_refuses_to_overwrite_an_engine_and_writes_nothing(tmp_path: Path) -> None:
    from genroute.tuning.config_file import write_atomic
    from genroute.tuning.local_lora import register_tuned_backend

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF")
    config = tmp_path / "genroute.json"
    write_atomic(config, json.dumps({"engines": {"t_engine": {"kind": "local"}}}))
    before = config.read_bytes()
    with pytest.raises(UsageError, match="engine 't_engine' already exists"):
        register_tuned_backend(config, "t", adapter)
    with pytest.raises(ConfigError) as info:  # validated by the engine kind's own config model
        register_tuned_backend(config, "u", adapter, engine_options={"n_ctx": 1})
    assert info.value.field == "engines.u_engine.n_ctx"
    assert config.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf", "genroute.json"]


@pytest.mark.local
def test_a_rerun_replaces_tune_result_json_atomically(tiny_run: Any, tmp_path: Path) -> None:
    """tune_result.json was rewritten in place (truncated, then written): a reader, or a crash, in between saw half
    of it. Now it is written beside and renamed over, so whoever holds the old file keeps it whole."""
    import os

    from genroute.tuning.local_lora import tune_local

    data, _ = tiny_run
    out = tmp_path / "run"
    out.mkdir()
    (out / "tune_result.json").write_text('{"steps": 0}\n')
    os.link(out / "tune_result.json", tmp_path / "held.json")   # a reader's handle on the old file
    result = tune_local(data, out, config=tiny_config(max_steps=1, epochs=1))
    assert (tmp_path / "held.json").read_text() == '{"steps": 0}\n'   # the old file, untouched
    assert json.loads((out / "tune_result.json").read_text())["steps"] == result.steps == 1
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
