"""The router: policy decision, rung execution, telemetry and pricing."""

from genroute.router.pricing import ModelPrice, Pricing
from genroute.router.router import Router

__all__ = ["ModelPrice", "Pricing", "Router"]
