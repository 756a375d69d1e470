"""The router: composes policies, backends and the runtime layer into the one API applications call."""

from genroute.runtime.pricing import ModelPrice, Pricing
from genroute.router.router import Router

__all__ = ["ModelPrice", "Pricing", "Router"]
