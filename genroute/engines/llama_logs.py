"""Route llama.cpp's native log lines into Python logging (logger ``genroute.llama_cpp``) instead of stderr.

llama-cpp-python prints some load-time lines (SWA cache, LoRA buffer fallbacks) straight to stderr even with
``verbose=False``; an application should decide what its users see, so they go to logging like everything else.
llama.cpp has one process-wide log callback: genroute takes it over only from llama.cpp's own default or
llama-cpp-python's stderr printer, never from another library that installed its own (unless asked with
``route_llama_logs(replace=True)``).

A decode genroute stops on purpose (a request cancelled, past its deadline, or closed: the local engine's abort
switch) makes llama.cpp log failures ("failed to compute graph", "failed to decode") as warnings and errors: lines
logged on a generating thread once its request is cancelled (``quiet_when_cancelled``) go out at DEBUG instead.

Some load-time lines are logged at WARNING or INFO on every load although nothing is wrong (``BENIGN``): the
sliding-window cache kept at full size (llama-cpp-python's default), a vocabulary token llama.cpp marks as a control
token itself (Gemma 3's ``</s>``), a LoRA tensor kept in a plain CPU buffer
because the repacked one cannot hold it, a context shorter than the model was trained for (genroute's default
``n_ctx`` is 2048 of Gemma 3's 32768), or "longer" than the training length 0 a vocabulary-only load (the tokenizer
local tuning uses) reports. They go out at DEBUG; every other line keeps llama.cpp's level.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_logger = logging.getLogger("genroute.llama_cpp")
#: ggml_log_level (current ggml): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4; CONT 5 continues the previous line.
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONT = 5
#: Load-time lines that say nothing is wrong (seen on every load of the default model, and of a LoRA adapter).
BENIGN = re.compile(r"using full-size SWA cache"
                    r"|control-looking token: .* was not control-type; this is probably a bug in the model\. its type "
                    r"will be overridden"
                    r"|lora for '[^']*' cannot use buft 'CPU_REPACK', fallback to CPU"
                    r"|n_ctx(?:_per)?_seq \(\d+\) < n_ctx_train \(\d+\)"
                    r"|n_ctx(?:_per)?_seq \(\d+\) > n_ctx_train \(0\)")  # a vocab-only load knows no training length
_callback: Any = None  # kept alive: llama.cpp holds a raw pointer to it
_last_level = logging.DEBUG
_lock = threading.Lock()
#: ``cancel``: the cancel event of the request this thread generates for (``quiet_when_cancelled``).
_generating = threading.local()


@contextmanager
def quiet_when_cancelled(cancel: threading.Event) -> Iterator[None]:
    """While this thread generates for a request: what llama.cpp logs here once ``cancel`` is set is the stop
    genroute asked for (its abort switch ending a decode), not a failure, and is logged at DEBUG."""
    _generating.cancel = cancel
    try:
        yield
    finally:
        _generating.cancel = None


def route_llama_logs(*, replace: bool = False) -> bool:
    """Send llama.cpp's log lines to the ``genroute.llama_cpp`` logger; whether genroute's callback is installed.

    Leaves a callback another library installed in place unless ``replace`` (thread-safe, idempotent).
    """
    global _callback
    with _lock:
        import llama_cpp

        current = _installed(llama_cpp)
        if _callback is not None and current == _address(_callback):
            return True
        if not replace and current not in _defaults(llama_cpp):
            _logger.debug("another library's llama.cpp log callback is installed; leaving it in place")
            return False
        if _callback is None:
            _callback = _make_callback(llama_cpp)
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        return True


def _address(callback: Any) -> int | None:
    return ctypes.cast(callback, ctypes.c_void_p).value


def _installed(llama_cpp: Any) -> int | None:
    """The address of the log callback llama.cpp calls now (``None``: its own stderr default)."""
    callback = llama_cpp.llama_log_callback()
    user_data = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
    return _address(callback)


def _defaults(llama_cpp: Any) -> set[int | None]:
    """Callbacks that only print to stderr: llama.cpp's default and llama-cpp-python's own."""
    defaults: set[int | None] = {None}
    try:
        from llama_cpp import _logger as printer

        defaults.add(_address(printer.llama_log_callback))
    except (ImportError, AttributeError):
        pass
    return defaults


def _make_callback(llama_cpp: Any) -> Any:
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        global _last_level
        level_no = _last_level if level == _CONT else _LEVELS.get(level, logging.DEBUG)
        message = text.decode("utf-8", "replace")
        cancel = getattr(_generating, "cancel", None)
        if level_no > logging.DEBUG and (cancel is not None and cancel.is_set()
                                         or level != _CONT and BENIGN.search(message)):
            level_no = logging.DEBUG  # a continuation line follows its first line's level
        _last_level = level_no
        if _logger.isEnabledFor(level_no):
            _logger.log(level_no, message.rstrip())

    return llama_cpp.llama_log_callback(callback)
