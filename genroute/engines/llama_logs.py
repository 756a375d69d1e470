"""Route llama.cpp's native log lines into Python logging (logger ``genroute.llama_cpp``) instead of stderr.

llama-cpp-python prints some load-time lines (SWA cache, LoRA buffer fallbacks) straight to stderr even with
``verbose=False``; an application should decide what its users see, so they go to logging like everything else.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

_logger = logging.getLogger("genroute.llama_cpp")
#: ggml_log_level (current ggml): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4; CONT 5 continues the previous line.
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONT = 5
_callback: Any = None  # kept alive: llama.cpp holds a raw pointer to it
_last_level = logging.DEBUG
_lock = threading.Lock()


def route_llama_logs() -> None:
    """Install the logging callback once per process (idempotent, thread-safe)."""
    global _callback
    with _lock:
        if _callback is not None:
            return
        import llama_cpp

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            global _last_level
            level_no = _last_level if level == _CONT else _LEVELS.get(level, logging.DEBUG)
            _last_level = level_no
            if _logger.isEnabledFor(level_no):
                _logger.log(level_no, text.decode("utf-8", "replace").rstrip())

        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        _callback = callback
