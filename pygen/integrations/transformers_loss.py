"""pygen's fused LM-head cross-entropy as the training loss of a transformers 5.x ``*ForCausalLM``.

    import pygen.patch
    pygen.patch.patch_transformers_loss(model)                 # {"LlamaForCausalLM": 1}
    out = model(input_ids, labels=labels)                      # out.loss as before, out.logits None
    out = model(input_ids, labels=labels, return_logits=True)  # logits too (materialised)

The stock forward with ``labels`` (transformers' ``loss/loss_utils.py::ForCausalLMLoss``) computes
``logits = lm_head(slice_logits_to_keep(hidden, logits_to_keep))`` (soft-capped by
``config.final_logit_softcapping`` where the model has it: cap * tanh(logits / cap)), upcasts them to
float32, pads ``labels`` [b, s] with ignore_index and shifts them left by one (``shift_labels``, when
passed, is taken as given), flattens both and takes ``F.cross_entropy(ignore_index=-100 or the
passed ``ignore_index``)``, reduced by "mean" over the valid tokens or, given
``num_items_in_batch``, by "sum" / num_items_in_batch. The patched forward computes the same loss
with :func:`pygen.ops.linear_cross_entropy` from the hidden rows the head would see [N, H] and its
weight [V, H] (and bias): no [N, V] logits in the forward or the backward.

How: ``model.forward`` becomes a :class:`LinearLossForward`. A call without labels is the stock
forward, untouched. A call with labels runs the model's own forward with two stand-ins for the
length of that call: the head's forward records its input and returns a 4-column probe instead of
the logits, and ``model.loss_function`` computes :func:`causal_lm_loss` from the recorded rows.
Everything else - the router aux loss MoE models add to the loss, the output class, cache,
hidden_states, attentions - stays the stock code's. Through the probe the patch checks (once per
model) that the model's code does nothing to its logits beyond what it reproduces (identity or
``final_logit_softcapping``); a model that rescales them raises RuntimeError rather than train on
another loss.

The switch: ``logits`` is None in the output of a call with labels unless ``return_logits=True`` is
passed to the call or to the patch (the model's default then); the logits are then the stock
forward's own (the loss still comes from the fused op). The loss is float32 as the stock one: the
op is asked for ``dtype=torch.float32``, so a bfloat16 model's loss is reduced in float32 and never
rounded to bfloat16; a float64 model's loss is float32 too, as stock (its gradients stay
float64-exact: d loss / d loss is 1).

Why it is not in ``pygen.patch.patch``: it changes what the model returns (logits None), so it is
applied explicitly. A model whose ``loss_function`` is not transformers' ForCausalLMLoss is refused
at patch time (TypeError); if that changes later, calls run the stock forward with a warning.
"""

from __future__ import annotations

import inspect
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearLossForward", "causal_lm_loss", "patch_causal_lm_loss"]

_MISSING = object()
# probe columns the head returns in place of the logits: large enough that soft-capping (cap >= 30
# in the models that have it) moves them by more than a bfloat16 rounding, exact in bfloat16
_PROBE = (-24.0, -1.5, 0.75, 24.0)


def causal_lm_loss(
    hidden: torch.Tensor,
    head: nn.Linear,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.Tensor | None = None,
    softcap: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss of ``logits = head(hidden)`` (soft-capped by ``softcap``)
    without the logits: hidden [..., H] rows in the order of ``labels`` [b, s] (shifted left by one
    inside, the last position ignored) or of ``shift_labels`` (used as given). Returns float32."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    h = hidden.reshape(-1, hidden.shape[-1])
    targets = shift_labels.reshape(-1).to(h.device)
    if targets.shape[0] != h.shape[0]:
        raise ValueError(
            f"causal_lm_loss: the head sees {h.shape[0]} rows but the shifted labels hold {targets.shape[0]} "
            f"(labels {tuple(labels.shape)}; with logits_to_keep, pass shift_labels for the kept rows)"
        )
    from ..ops.losses import linear_cross_entropy
    from ..ref.losses import compute_dtype

    reduction = "mean" if num_items_in_batch is None else "sum"
    # transformers upcasts the logits to float32 before its loss: reduce in float32 (float64 for a
    # float64 model), not in a bf16 model's bf16 (which rounded the loss by up to half a bf16 ulp)
    wide = compute_dtype(h)
    loss = linear_cross_entropy(
        h, head.weight, targets, head.bias, ignore_index=ignore_index, reduction=reduction, softcap=softcap,
        dtype=wide, backend=backend,
    )  # fmt: skip
    if num_items_in_batch is not None:
        # divided before the float32 cast (``loss`` is already ``wide``): a float64 model's
        # gradients keep float64's 1 / count
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss.float()


class _Call:
    """One labelled call: the head's recorded input and what it returned in place of the logits."""

    def __init__(self, owner: LinearLossForward, head: nn.Linear, want_logits: bool):
        self.owner, self.head, self.want_logits = owner, head, want_logits
        self.hidden = self.head_out = None

    def head_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.hidden = x
        if self.want_logits:
            self.head_out = F.linear(x, self.head.weight, self.head.bias)
        else:
            probe = torch.tensor(_PROBE, dtype=x.dtype, device=x.device)
            self.head_out = probe.expand(*x.shape[:-1], len(_PROBE)).contiguous()
        return self.head_out

    def loss_function(self, logits, labels, vocab_size=None, **kwargs):
        if self.hidden is None:
            raise RuntimeError(
                "pygen.patch.patch_transformers_loss: the model computed its loss without calling its output "
                "embeddings (lm_head); this model is not supported"
            )
        softcap = getattr(self.owner.model.config, "final_logit_softcapping", None)
        self.owner.check_logit_transform(logits, self.head_out, softcap)
        if vocab_size is not None and vocab_size != self.head.weight.shape[0]:
            raise ValueError(f"causal_lm_loss: vocab_size {vocab_size} != lm_head rows {self.head.weight.shape[0]}")
        kwargs = {k: kwargs[k] for k in ("ignore_index", "num_items_in_batch", "shift_labels") if k in kwargs}
        return causal_lm_loss(self.hidden, self.head, labels, softcap=softcap, backend=self.owner.backend, **kwargs)


def _swap_attr(obj, name: str, value):
    """Set ``obj.<name>`` as an instance attribute; returns what to give :func:`_restore_attr`."""
    old = obj.__dict__.get(name, _MISSING)
    object.__setattr__(obj, name, value)
    return old


def _restore_attr(obj, name: str, old) -> None:
    if old is _MISSING:
        obj.__dict__.pop(name, None)
    else:
        object.__setattr__(obj, name, old)


class LinearLossForward:
    """``model.forward`` of a patched model (module docstring). Picklable (a module-level class
    holding the model), and ``inspect.signature`` sees the stock forward's (through
    ``__wrapped__``), which is what transformers' Trainer and generate inspect."""

    def __init__(self, model: nn.Module, return_logits: bool, backend: str | None):
        self.model, self.return_logits, self.backend = model, return_logits, backend
        self.verified = False
        self.warned = False

    @property
    def __wrapped__(self):
        return types.MethodType(type(self.model).forward, self.model)

    def _labels_given(self, args, kwargs) -> bool:
        if kwargs.get("labels") is not None:
            return True
        names = list(inspect.signature(type(self.model).forward).parameters)[1:]  # without self
        pos = names.index("labels") if "labels" in names else len(args)
        return len(args) > pos and args[pos] is not None

    def __call__(self, *args, **kwargs):
        model = self.model
        want_logits = kwargs.pop("return_logits", None)
        want_logits = self.return_logits if want_logits is None else bool(want_logits)
        if not self._labels_given(args, kwargs):
            return type(model).forward(model, *args, **kwargs)
        if not _uses_causal_lm_loss(model):
            if not self.warned:
                self.warned = True
                warnings.warn(
                    f"pygen.patch.patch_transformers_loss: {type(model).__name__}.loss_function is no longer "
                    "transformers' ForCausalLMLoss; running the stock forward (logits materialised)",
                    stacklevel=2,
                )
            return type(model).forward(model, *args, **kwargs)
        return_dict = kwargs.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(model.config, "return_dict", True)
        head = model.get_output_embeddings()
        call = _Call(self, head, want_logits)
        old_head = _swap_attr(head, "forward", call.head_forward)
        old_loss = _swap_attr(model, "_loss_function", call.loss_function)
        try:
            out = type(model).forward(model, *args, return_dict=True, **kwargs)
        finally:
            _restore_attr(head, "forward", old_head)
            _restore_attr(model, "_loss_function", old_loss)
        if not want_logits:  # the probe must not leak: rebuild the output without it
            out = type(out)(**{k: v for k, v in out.items() if k != "logits"})
        return out if return_dict else out.to_tuple()

    def check_logit_transform(self, logits: torch.Tensor, head_out: torch.Tensor, softcap: float | None) -> None:
        """RuntimeError unless the model turned the head's output into ``logits`` only by the
        identity or ``softcap``; compared on the first few columns, once per model."""
        if self.verified or torch.compiler.is_compiling():
            return
        k = len(_PROBE)
        x = head_out[..., :k].float()
        want = x if softcap is None else softcap * torch.tanh(x / softcap)
        tol = 1e-2 if head_out.dtype.itemsize < 4 else 1e-5
        got = logits[..., :k].float() if logits.shape[:-1] == head_out.shape[:-1] else None
        if got is None or got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol):
            raise RuntimeError(
                f"pygen.patch.patch_transformers_loss: {type(self.model).__name__} transforms its logits beyond "
                f"the identity and config.final_logit_softcapping ({softcap}); the fused loss would differ from "
                "the stock one. Use the unpatched model."
            )
        self.verified = True


def _uses_causal_lm_loss(model: nn.Module) -> bool:
    from transformers.loss.loss_utils import ForCausalLMLoss

    return getattr(model, "loss_function", None) is ForCausalLMLoss


def patch_causal_lm_loss(
    model: nn.Module, *, return_logits: bool = False, backend: str | None = None
) -> dict[str, int]:
    """Make ``model`` (a transformers ``*ForCausalLM``) compute its loss with
    pygen.ops.linear_cross_entropy (module docstring). Returns ``{class name: 1}``, or ``{}`` when
    the model is already patched (its options are then updated). ImportError without
    transformers; TypeError for another model, a head that is not an nn.Linear, or a loss that is
    not ForCausalLMLoss."""
    from transformers import PreTrainedModel

    name = type(model).__name__
    if not isinstance(model, PreTrainedModel) or not name.endswith("ForCausalLM"):
        raise TypeError(f"patch_transformers_loss: model must be a transformers *ForCausalLM, got {name}")
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear:
        raise TypeError(
            f"patch_transformers_loss: {name}'s output embeddings must be a torch.nn.Linear (the loss uses its "
            f"weight and bias as they are), got {type(head).__name__}"
        )
    if not _uses_causal_lm_loss(model):
        raise TypeError(f"patch_transformers_loss: {name}.loss_function is not transformers' ForCausalLMLoss")
    if not isinstance(return_logits, bool):
        raise TypeError(f"patch_transformers_loss: return_logits must be a bool, got {return_logits!r}")
    current = model.__dict__.get("forward")
    if isinstance(current, LinearLossForward):
        current.return_logits, current.backend = return_logits, backend
        return {}
    object.__setattr__(model, "forward", LinearLossForward(model, return_logits, backend))
    return {name: 1}
