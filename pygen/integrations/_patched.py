"""What a module swap leaves behind on a transformers model: after pygen.patch replaced its
attention or MoE modules, transformers' ``model.set_attn_implementation(...)`` /
``set_experts_implementation(...)`` would reconfigure modules that are no longer there and change
nothing. The swap shadows them on that model instance with a callable that raises a clear error
(a picklable object, so ``torch.save(model)`` keeps working)."""

from __future__ import annotations

from torch import nn


class RefusedAfterSwap:
    """Stands in for ``model.<method>`` after a swap; calling it raises RuntimeError."""

    def __init__(self, model_name: str, method: str, what: str, patch: str, alternative: str):
        self.model_name, self.method, self.what, self.patch, self.alternative = (
            model_name,
            method,
            what,
            patch,
            alternative,
        )

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"{self.model_name}.{self.method}: pygen.patch.{self.patch} replaced this model's {self.what} "
            f"modules with pygen's, which {self.method} does not reach. Load the model again to choose "
            f"another implementation, or use {self.alternative} instead of the swap."
        )


def refuse_after_swap(model: nn.Module, method: str, what: str, patch: str, alternative: str) -> None:
    """Shadow ``model.<method>`` (when the model has it) with :class:`RefusedAfterSwap`."""
    if callable(getattr(model, method, None)):
        object.__setattr__(model, method, RefusedAfterSwap(type(model).__name__, method, what, patch, alternative))
