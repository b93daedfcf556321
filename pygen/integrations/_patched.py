"""What a module swap must carry over on a transformers model, so that the patched model behaves
like the stock one beyond its forward:

- transformers' ``model.set_attn_implementation(...)`` / ``set_experts_implementation(...)``
  would reconfigure modules that are no longer there and change nothing: the swap shadows them on
  that model instance with a callable that raises a clear error (:func:`refuse_after_swap`);
- transformers records outputs (attention weights, router logits) by hooking the modules of its
  own classes: the swapped-in module passes as one (:func:`typed_as`) and takes over the hooks
  already installed (:func:`take_hooks`);
- transformers initialises the weights a checkpoint lacks by class: :func:`hook_init_weights`
  extends the model's ``_init_weights`` to pygen's modules.

The shadowing attributes are picklable objects, so ``torch.save(model)`` keeps working."""

from __future__ import annotations

import functools
import importlib

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


_HF_DEEPSEEK = "transformers.models.deepseek_v3.modeling_deepseek_v3"
# name -> (pygen class, the transformers class it also passes as), as "module:attribute"
_TYPED_AS = {
    "DeepseekV3MLA": ("pygen.nn.mla:MLA", f"{_HF_DEEPSEEK}:DeepseekV3Attention"),
    "DeepseekV3MoEGate": ("pygen.nn.moe:MoEGate", f"{_HF_DEEPSEEK}:DeepseekV3TopkRouter"),
}


def _attribute(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def typed_as(name: str) -> type:
    """The class ``name`` of ``_TYPED_AS``: a subclass of (pygen class, transformers class) that
    behaves as pygen's (its methods come first) and passes ``isinstance(x, transformers class)``,
    which is how transformers finds the modules whose outputs it records (``output_attentions``,
    ``output_router_logits``). Built on first use (transformers is optional); pickle finds it here
    by name through the module ``__getattr__`` below."""
    cls, hf_cls = (_attribute(p) for p in _TYPED_AS[name])
    return type(name, (cls, hf_cls), {"__module__": __name__, "__qualname__": name})


def __getattr__(name: str):
    if name in _TYPED_AS:
        return typed_as(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def take_hooks(new: nn.Module, old: nn.Module) -> None:
    """Move ``old``'s module hooks to ``new`` (transformers' output capturing - the attention and
    router_logits recorders - may already be installed on the old modules)."""
    for name in _HOOK_DICTS:
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if src and dst is not None:
            dst.update(src)


class InitWeightsAfterSwap:
    """Stands in for ``model._init_weights`` on a transformers model holding swapped pygen modules.

    transformers initialises weights a checkpoint lacks (``from_pretrained``: the model is built on
    the meta device, missing tensors and non-persistent buffers are moved off it as *uninitialised*
    memory, then ``initialize_weights`` calls ``_init_weights(module)`` on every module) with rules
    keyed by its own classes, so pygen's modules would keep garbage. This runs the model's own
    ``_init_weights`` and then each ``extra(module, std)`` (std = ``config.initializer_range``);
    the extras use transformers.initialization, which skips tensors flagged as loaded."""

    def __init__(self, owner: nn.Module, extras: tuple):
        self.owner, self.extras = owner, extras

    def __call__(self, module: nn.Module) -> None:
        type(self.owner)._init_weights(self.owner, module)
        std = getattr(self.owner.config, "initializer_range", None) or 0.02
        for extra in self.extras:
            extra(module, std)


def hook_init_weights(model: nn.Module, extra) -> None:
    """Install :class:`InitWeightsAfterSwap` with ``extra`` (a module-level function, so that the
    model still pickles) on every transformers PreTrainedModel in ``model``: transformers hands each
    sub-model's modules to that sub-model's ``_init_weights``."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return
    for m in model.modules():
        if not isinstance(m, PreTrainedModel):
            continue
        hook = m.__dict__.get("_init_weights")
        if isinstance(hook, InitWeightsAfterSwap):
            if extra not in hook.extras:
                hook.extras += (extra,)
        else:
            object.__setattr__(m, "_init_weights", InitWeightsAfterSwap(m, (extra,)))
