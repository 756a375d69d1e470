"""The embedded default engine: a GGUF model (Gemma 3 270M unless configured) on llama-cpp-python.

A llama.cpp context is not thread-safe, so every call runs on a dedicated executor with
``pool_size`` workers, each borrowing one of at most ``pool_size`` model instances; the event loop
only awaits futures (and, when streaming, a queue the worker feeds with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import queue
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from genroute.engines.base import Engine, engine_config
from genroute.engines.gguf_header import check_context_size, check_lora_adapter
from genroute.engines.llama_logs import quiet_when_cancelled
from genroute.engines.local_config import LocalEngineConfig, default_model_path
from genroute.engines.local_prompt import (MAX_SEED, NO_SAFETY_FILTER, NO_THINKING, Defaults, Prepared, blocks, prepare,
                                           tokenize)
from genroute.engines.local_sampling import abort_switch, constrained_tokens, decode_tokens, json_schema_grammar
from genroute.engines.local_usage import Outcome, Progress, delta, usage_metadata
from genroute.errors import BackendRejected, BackendUnavailable, ConfigError, UsageError
from genroute.runtime.forks import forget_at_fork

if TYPE_CHECKING:
    from google.genai import types


#: Imported from here by earlier callers; ``genroute.engines.local_config`` defines the config and the model's path.
__all__ = ["LocalEngine", "LocalEngineConfig", "default_model_path"]

#: In a forked child, the parent's model instances: kept from the collector (freeing them may block on their state).
_INHERITED: list[Any] = []


class LocalEngine(Engine):
    """Gemma 3 270M (or any GGUF) in-process on llama.cpp; free, offline, google-genai types in and out."""

    kind: ClassVar[str] = "local"
    Config: ClassVar[type[BaseModel]] = LocalEngineConfig
    provider = "genroute.local"
    seed_range = (0, MAX_SEED)
    config: LocalEngineConfig

    def __init__(self, name: str, config: LocalEngineConfig | Mapping[str, Any] | None = None) -> None:
        config = engine_config(LocalEngineConfig, name, config)
        super().__init__(name, config)
        self.reference_model = config.reference_model
        self._defaults = Defaults(temperature=config.temperature, max_output_tokens=config.max_output_tokens,
                                  seed=config.seed, prompt_format=config.prompt_format,
                                  auto_calls=config.auto_calls, call_bias=config.call_bias)
        self._executor = ThreadPoolExecutor(config.pool_size, thread_name_prefix=f"genroute-local-{name}")
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._instances: list[Any] = []
        #: Per instance (by id): the abort switch that stops its decode when the running request's cancel is set.
        self._aborts: dict[int, list[Any]] = {}
        self._load_lock = threading.Lock()
        self._grammars: dict[str, Any] = {}
        #: Cancel events of the generations running now, so ``aclose`` can stop them between tokens.
        self._running: set[threading.Event] = set()
        self._closed = False
        self.model_version: str | None = None
        #: The token ids of the latest prompt this engine sent to llama.cpp (BOS first): what the model saw.
        self.last_prompt_tokens: tuple[int, ...] = ()
        forget_at_fork(self)

    def _forget_parent(self) -> None:
        """In a forked child: new workers (the parent's executor, counting its threads idle, started none here: every
        request waited out its deadline) and instances loaded anew (the parent's, maybe mid-decode, are left alone)."""
        _INHERITED.extend(self._instances)
        self._executor = ThreadPoolExecutor(self.config.pool_size, thread_name_prefix=f"genroute-local-{self.name}")
        self._idle, self._instances, self._aborts = queue.SimpleQueue(), [], {}
        self._load_lock, self._running = threading.Lock(), set()

    @property
    def lora_path(self) -> str | None:
        """The LoRA adapter (GGUF) applied at load, if any."""
        return self.config.lora_path

    def pricing_model(self, model: str) -> str | None:
        """Local calls are free; ``reference_model`` prices the cloud equivalent."""
        return None

    def refused_setting(self, generation: Any) -> tuple[str, str] | None:
        """A safety filter that would block (llama.cpp has none) or a thinking budget (the local model does not
        think); a direct call's own is refused by ``prepare``."""
        if any(blocks(setting) for setting in generation.safety_settings):
            return "safety_settings", NO_SAFETY_FILTER
        if generation.thinking_config is not None:
            return "thinking_config", NO_THINKING
        return None

    # -- model instances (worker threads only) -------------------------------------------------

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError("llama-cpp-python is not installed: pip install 'genroute[local]'",
                              field=f"engines.{self.name}.kind") from exc
        from genroute.engines.llama_logs import route_llama_logs

        route_llama_logs()
        cfg = self.config
        path = Path(cfg.model_path) if cfg.model_path else default_model_path()
        if not path.is_file():
            raise ConfigError(f"no model file at {path}", field=f"engines.{self.name}.model_path")
        check_context_size(path, cfg.n_ctx, engine=self.name)
        if cfg.lora_path:
            check_lora_adapter(Path(cfg.lora_path), path, engine=self.name)
        # Half the cores (llama-cpp-python's own default): llama.cpp threads spin while they wait,
        # so every core busy collapses under any other load (2 cores, load ~5: 2 threads gave
        # 2 tok/s, 1 thread 63 tok/s). n_threads_batch too: its default is all cores.
        threads = cfg.n_threads or max(1, (os.cpu_count() or 2) // 2)
        try:
            llm = Llama(model_path=str(path), n_ctx=cfg.n_ctx, n_threads=threads, n_threads_batch=threads,
                        seed=cfg.seed, lora_path=cfg.lora_path, verbose=False)
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            if "llama_context" in str(exc):  # the model loaded; a KV cache for n_ctx tokens did not fit in memory
                raise ConfigError(f"llama.cpp cannot make a context of {cfg.n_ctx} tokens: {exc}",
                                  field=f"engines.{self.name}.n_ctx") from None
            raise ConfigError(f"llama.cpp cannot load {path}: {exc}",
                              field=f"engines.{self.name}.model_path") from None
        if cfg.lora_path and not llm._lora_adapter:  # noqa: SLF001 - a NULL adapter llama-cpp-python let through
            llm.close()  # (tensor shapes that do not fit the model): the first decode would crash the process
            raise ConfigError(f"llama.cpp refused the LoRA adapter {cfg.lora_path} for {path}",
                              field=f"engines.{self.name}.lora_path")
        self.model_version = path.stem.removesuffix(".gguf") + (
            f"+{Path(cfg.lora_path).stem}" if cfg.lora_path else "")
        return llm

    def _borrow(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        # The executor runs at most pool_size jobs, so at most pool_size instances are ever made.
        with self._load_lock:
            llm = self._load()
            self._aborts[id(llm)] = abort_switch(llm)
            self._instances.append(llm)
        return llm

    def _grammar(self, prep: Prepared) -> Any:
        key = json.dumps([prep.schema, prep.bare_enum])
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = json_schema_grammar(prep.schema or {}, field=prep.schema_field, bare_enum=prep.bare_enum)
            if len(self._grammars) >= 64:  # schemas usually come from a few configs; bound the odd churn
                self._grammars.clear()
            self._grammars[key] = grammar
        return grammar

    def _run(self, prep: Prepared, emit: Callable[[str, int], None] | None, cancel: threading.Event,
             progress: Progress) -> Outcome:
        """Generate on a borrowed instance; ``emit`` receives text deltas that are final, each with the count of
        tokens generated so far; ``progress`` learns the prompt's token count before the first."""
        self._running.add(cancel)
        if self._closed:  # aclose ran between submit and here: it will not see this event
            cancel.set()
        try:
            if cancel.is_set():  # nobody waits (a stream that timed out or was dropped in the queue): skip the prompt
                return Outcome(text="", prompt_tokens=0, output_tokens=0, finish="CANCELLED")
            llm = self._borrow()
            switch = self._aborts[id(llm)]
            switch[0] = cancel
            try:
                with quiet_when_cancelled(cancel):
                    return self._generate_on(llm, prep, emit, cancel, progress)
            finally:
                switch[0] = None
                self._idle.put(llm)
        finally:
            self._running.discard(cancel)

    def _generate_on(self, llm: Any, prep: Prepared, emit: Callable[[str, int], None] | None,
                     cancel: threading.Event, progress: Progress) -> Outcome:
        s = prep.sampling
        grammar = self._grammar(prep) if prep.schema is not None else None
        prompt_tokens = tokenize(llm, prep.pieces)
        self.last_prompt_tokens = tuple(prompt_tokens)
        progress.prompt_tokens = len(prompt_tokens)
        # llama.cpp rounds n_ctx up (to 256) but llama-cpp-python sizes its buffers by the request.
        n_ctx = min(llm.n_ctx(), self.config.n_ctx)
        room = n_ctx - len(prompt_tokens)
        if room <= 0:
            raise BackendRejected(f"prompt has {len(prompt_tokens)} tokens; n_ctx is {n_ctx}",
                                  backend=self.name, status=400)
        max_tokens = min(s.max_tokens, room)
        llm.set_seed(s.seed)
        if not self.config.reuse_kv_prefix:
            llm.reset()  # same request, same answer, whatever ran before
        if grammar is not None:
            # Where the model chooses, the first key decides: "name" (a call) or "answer".
            bias = ({llm.tokenize(b"name", add_bos=False)[0]: prep.call_bias,
                     llm.tokenize(b"answer", add_bos=False)[0]: 0.0} if prep.may_answer else None)
            tokens = constrained_tokens(llm, prompt_tokens, grammar, temp=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                        first_choice_bias=bias)
        else:  # min_p=0 and repeat_penalty=1: plain top-k/top-p sampling as Gemini's parameters describe
            tokens = llm.generate(prompt_tokens, top_k=s.top_k, top_p=s.top_p, min_p=0.0, temp=s.temperature,
                                  repeat_penalty=1.0)
        try:
            text, count, finish = decode_tokens(llm, tokens, max_tokens, s.stop, emit, cancel)
        except RuntimeError:  # "llama_decode returned 2": the abort switch stopped it
            if not cancel.is_set():
                raise
            llm.reset()  # llama.cpp dropped the cache entries of the aborted decode
            return Outcome(text="", prompt_tokens=len(prompt_tokens), output_tokens=0, finish="CANCELLED")
        finally:
            tokens.close()
        return Outcome(text=text, prompt_tokens=len(prompt_tokens), output_tokens=count, finish=finish)

    # -- async surface ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._closed:
            raise UsageError(f"engine {self.name!r} is closed")
        ctx = contextvars.copy_context()  # keeps the caller's span current inside the worker
        return asyncio.get_running_loop().run_in_executor(self._executor, ctx.run, fn, *args)

    def _response(self, prep: Prepared, outcome: Outcome, *, text: str | None = None) -> types.GenerateContentResponse:
        from google.genai import types

        finish = types.FinishReason(outcome.finish)
        parts: list[types.Part] = []
        message = None
        body = outcome.text if text is None else text
        if prep.function_call and text is None:
            try:
                call = json.loads(outcome.text)
                if prep.may_answer and "answer" in call:  # the model chose to answer in text
                    parts.append(types.Part(text=str(call["answer"])))
                else:
                    parts.append(types.Part(function_call=types.FunctionCall(
                        id=f"call_{uuid.uuid4().hex[:12]}", name=call["name"], args=call.get("args") or {})))
            except (ValueError, KeyError, TypeError):  # cut off by max tokens: neither a call nor an answer,
                finish = types.FinishReason.MALFORMED_FUNCTION_CALL  # so no part, as Gemini sends it
                message = f"Malformed function call: {outcome.text}"
        elif body:
            parts.append(types.Part(text=body))
        return types.GenerateContentResponse(
            candidates=[types.Candidate(content=types.Content(role="model", parts=parts), finish_reason=finish,
                                        finish_message=message, index=0)],
            usage_metadata=usage_metadata(outcome.prompt_tokens, outcome.output_tokens),
            model_version=self.model_version,
            response_id=uuid.uuid4().hex,
        )

    async def generate(self, model: str, contents: list[types.Content],
                       config: types.GenerateContentConfig | None = None, *,
                       timeout_s: float | None = None) -> types.GenerateContentResponse:
        """Generate one complete response (``model`` is informational: the engine serves one model)."""
        prep = prepare(contents, config, self._defaults)
        cancel, progress = threading.Event(), Progress()
        job = self._submit(self._run, prep, None, cancel, progress)
        try:
            outcome = await asyncio.wait_for(job, timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            self._raise_if_dropped(job)
            progress.billed(contents, config)  # the prompt was (being) evaluated
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise BackendUnavailable(f"local generation exceeded {timeout_s}s", backend=self.name) from None
        finally:
            cancel.set()  # stops the worker if we were cancelled or timed out
        return self._response(prep, self._finished(outcome))

    async def stream(self, model: str, contents: list[types.Content],
                     config: types.GenerateContentConfig | None = None, *,
                     timeout_s: float | None = None) -> AsyncGenerator[types.GenerateContentResponse, None]:
        """Stream partial responses, each with the usage so far (as Gemini's chunks carry it: a stream its reader
        abandons, or its deadline cuts, is charged the tokens llama.cpp counted); the last one carries the finish
        reason."""
        prep = prepare(contents, config, self._defaults)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        cancel, progress = threading.Event(), Progress()
        # Function calls arrive whole (as Gemini sends them), so their text is not streamed.
        emit = None if prep.function_call else (lambda d, n: loop.call_soon_threadsafe(deltas.put_nowait, (d, n)))
        job = self._submit(self._run, prep, emit, cancel, progress)
        deadline = None if timeout_s is None else loop.time() + timeout_s
        deltas_seen = 0
        try:
            while True:
                getter = asyncio.ensure_future(deltas.get())
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({getter, job}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    getter.cancel()
                    if deltas_seen == 0:  # nothing reached the caller, who charges what it received
                        progress.billed(contents, config)
                    raise BackendUnavailable(f"local generation exceeded {timeout_s}s", backend=self.name)
                if getter in done:
                    deltas_seen += 1
                    text, generated = getter.result()
                    yield delta(text, progress, generated, self.model_version)
                    continue
                getter.cancel()
                self._raise_if_dropped(job)
                outcome = self._finished(job.result())
                # call_soon_threadsafe callbacks scheduled before the job finished have already run.
                while not deltas.empty():
                    text, generated = deltas.get_nowait()
                    yield delta(text, progress, generated, self.model_version)
                yield self._response(prep, outcome, text=None if prep.function_call else "")
                return
        finally:
            cancel.set()

    async def probe(self, model: str) -> str:
        """Whether a model instance is loaded; if none is, one is loaded now on the engine's workers (and kept for the
        next request): a load error (``ConfigError``: no file, a context too large) is raised."""
        if self._instances:
            return "model loaded"
        await self._submit(self._warm)
        return "model loaded by this check"

    def _warm(self) -> None:
        if not self._instances:  # a request on another worker may have loaded one meanwhile
            self._idle.put(self._borrow())

    def _raise_if_dropped(self, job: asyncio.Future[Any]) -> None:
        """A job ``aclose`` took off the queue before it started is a typed error, not a bare cancellation."""
        task = asyncio.current_task()
        if job.cancelled() and self._closed and not (task is not None and task.cancelling()):
            raise BackendUnavailable(f"engine {self.name!r} was closed before the generation started",
                                     backend=self.name)

    def _finished(self, outcome: Outcome) -> Outcome:
        """``outcome``, unless ``aclose`` stopped it half-way: then the caller gets a retryable error."""
        if outcome.finish == "CANCELLED":
            raise BackendUnavailable(f"engine {self.name!r} was closed during the generation", backend=self.name)
        return outcome

    async def aclose(self) -> None:
        """Stop the workers (in-flight generations stop at once, mid-prompt too) and free every model instance."""
        self._closed = True
        # Without this, shutdown waits for every running generation to reach its max_output_tokens.
        for cancel in list(self._running):
            cancel.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        for llm in self._instances:
            llm.close()
        self._instances.clear()
        self._aborts.clear()
        while not self._idle.empty():
            self._idle.get_nowait()
