"""Backends: the techniques that answer requests."""

from genroute.backends.base import Backend, BackendConfig, BackendOutput, GenerationSettings, Prepared, SingleCallBackend

__all__ = ["Backend", "BackendConfig", "BackendOutput", "GenerationSettings", "Prepared", "SingleCallBackend"]
