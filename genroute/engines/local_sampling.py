"""Grammar-constrained token generation that checks the grammar lazily.

llama-cpp-python applies a grammar to every candidate of the vocabulary on every step; Gemma 3 has
262,144 tokens, so constrained output ran at a fraction of free-text speed. llama.cpp's own
``common_sampler`` instead samples unconstrained first and only re-samples with the grammar over the
whole vocabulary when the grammar rejects that token. This module does the same through the C API.
It also holds the rest of the worker's dealings with llama.cpp below ``Llama``: grammars from JSON schemas,
the abort switch, and turning sampled tokens into text.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import math
import re
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import numpy as np

from genroute.errors import UsageError

#: A GBNF rule with nothing after ``::=``: what the converter writes for a schema no value matches.
_EMPTY_RULE = re.compile(r"^\S+ ::= *$", re.MULTILINE)


def abort_switch(llm: Any) -> list[Any]:
    """Make llama.cpp abort a decode of ``llm``'s (a prompt's evaluation too) once the ``threading.Event`` put in
    the returned one-item list is set; the decode then raises ``RuntimeError``. Without it a long prompt's
    evaluation ran on after its request timed out (1,500 tokens: 9 s) and held up every request behind it."""
    import llama_cpp as C

    current: list[Any] = [None]

    def aborted(_data: Any) -> bool:  # called between graph nodes (~450 a decode): no measurable cost
        event = current[0]
        return event is not None and event.is_set()

    abort = C.ggml_abort_callback(aborted)

    setter = C.llama_cpp._lib.llama_set_abort_callback  # noqa: SLF001 - llama-cpp-python binds no wrapper
    setter.argtypes, setter.restype = [ctypes.c_void_p, C.ggml_abort_callback, ctypes.c_void_p], None
    setter(llm._ctx.ctx, abort, None)  # noqa: SLF001
    current.append(abort)  # the callback must live as long as the context
    return current


def json_schema_grammar(schema: dict[str, Any], *, field: str, bare_enum: bool = False) -> Any:
    """A ``LlamaGrammar`` admitting exactly the JSON values ``schema`` describes (``UsageError`` naming ``field``);
    with ``bare_enum``, one of its enum strings written without quotes (Gemini's ``text/x.enum``)."""
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    if bare_enum:
        values = schema.get("enum")
        if not values or not all(isinstance(v, str) and v for v in values):
            raise UsageError("text/x.enum needs a schema whose enum lists non-empty strings", field=field)
        # GBNF literals escape as JSON strings do; raw UTF-8, as \\u escapes would split an emoji into surrogates.
        literals = " | ".join(json.dumps(v, ensure_ascii=False) for v in values)
        return LlamaGrammar.from_string(f"root ::= {literals}", verbose=False)
    try:  # not sort_keys: the grammar emits properties in the schema's order
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - the converter raises bare exceptions
        raise UsageError(f"llama.cpp cannot compile this JSON schema: {exc}", field=field) from exc
    # llama.cpp fails to parse an empty rule and then samples with no grammar at all: free text in JSON mode.
    if _EMPTY_RULE.search(gbnf):
        raise UsageError("this JSON schema admits no value (an empty enum or anyOf)", field=field)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def _evaluate_prompt(llm: Any, tokens: list[int]) -> None:
    """Evaluate ``tokens``, reusing the KV cache for the prefix it shares with the last call."""
    prefix = 0
    for a, b in zip(llm._input_ids, tokens):  # noqa: SLF001 - same prefix reuse as Llama.generate
        if a != b:
            break
        prefix += 1
    prefix = min(prefix, len(tokens) - 1)  # re-evaluate at least one token to refresh the logits
    if prefix > 0 and llm._ctx.kv_cache_seq_rm(-1, prefix, -1):  # noqa: SLF001
        llm.n_tokens = prefix
    else:
        llm.reset()
    llm.eval(tokens[llm.n_tokens:])


def constrained_tokens(llm: Any, tokens: list[int], grammar: Any, *, temp: float, top_k: int, top_p: float,
                       first_choice_bias: Mapping[int, float] | None = None) -> Generator[int, None, None]:
    """Yield sampled tokens that the ``LlamaGrammar`` accepts, like ``Llama.generate`` (unbounded).

    ``first_choice_bias`` adds to those tokens' logits until one of them is sampled (a choice made once,
    such as the first key of a reply that may be a call or an answer).
    """
    import llama_cpp as C

    n_vocab = llm.n_vocab()
    chain = llm._init_sampler(top_k=top_k, top_p=top_p, min_p=0.0, temp=temp, repeat_penalty=1.0)  # noqa: SLF001
    checker = C.llama_sampler_init_grammar(llm._model.vocab, grammar._grammar.encode(), grammar._root.encode())  # noqa: SLF001
    one = (C.llama_token_data * 1)()
    one_array = C.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
    full: Any = None
    pending = dict(first_choice_bias or {})
    try:
        _evaluate_prompt(llm, tokens)
        while True:
            if pending:
                logits = np.ctypeslib.as_array(C.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))  # noqa: SLF001
                for token_id, bias in pending.items():
                    logits[token_id] += bias
            token = C.llama_sampler_sample(chain.sampler, llm._ctx.ctx, -1)  # noqa: SLF001
            one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
            one_array.size, one_array.selected = 1, -1
            C.llama_sampler_apply(checker, ctypes.byref(one_array))
            if math.isinf(one[0].logit):  # rejected: constrain the whole vocabulary, then sample again
                if full is None:
                    full = (C.llama_token_data * n_vocab)()
                    view = np.ctypeslib.as_array(full)
                view["id"] = np.arange(n_vocab, dtype=np.int32)
                view["logit"] = np.ctypeslib.as_array(C.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,))  # noqa: SLF001
                view["p"] = 0.0
                array = C.llama_token_data_array(data=full, size=n_vocab, selected=-1, sorted=False)
                C.llama_sampler_apply(checker, ctypes.byref(array))
                C.llama_sampler_apply(chain.sampler, ctypes.byref(array))
                token = full[array.selected].id
            C.llama_sampler_accept(checker, token)
            if token in pending:
                pending = {}
            yield token
            llm.eval([token])
    finally:
        C.llama_sampler_free(checker)
        chain.close()


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing chars might begin a stop sequence (or are whitespace) and must wait."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return max(hold, len(text) - len(text.rstrip()))


def decode_tokens(llm: Any, tokens: Iterator[int], max_tokens: int, stops: tuple[str, ...],
                  emit: Callable[[str, int], None] | None, cancel: threading.Event) -> tuple[str, int, str]:
    """Turn sampled tokens into text, ending at EOG, a stop sequence or ``max_tokens``; ``emit`` receives each
    final text delta with the count of tokens generated so far (the delta's own and any held back)."""
    import llama_cpp

    vocab = llm._model.vocab  # noqa: SLF001 - the EOG check needs the vocab handle
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, sent, count, finish = "", 0, 0, "MAX_TOKENS"
    longest_stop = max((len(x) for x in stops), default=0)
    for token in tokens:
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            finish = "STOP"
            break
        count += 1
        start = max(0, len(text) - longest_stop)
        text += decoder.decode(llm.detokenize([token]))
        hit = min((i for i in (text.find(x, start) for x in stops) if i >= 0), default=-1)
        if hit >= 0:
            text, finish = text[:hit], "STOP"
            break
        if count >= max_tokens:
            break
        if cancel.is_set():
            finish = "CANCELLED"
            break
        if emit is not None:
            # Text is left-stripped (the prompt ends "Assistant:"), and anything that may yet
            # become a stop sequence or trailing whitespace waits.
            safe = len(text) - _held_back(text, stops)
            head = len(text) - len(text.lstrip()) if sent == 0 else sent
            if safe > head:
                emit(text[head:safe], count)
                sent = safe
    # No final flush: bytes still pending are a character max_output_tokens cut off, not a U+FFFD to show.
    if emit is not None:
        rest = text.strip() if sent == 0 else text[sent:].rstrip()
        if rest:
            emit(rest, count)
    return text.strip(), count, finish
