"""pygen's MLA in Hugging Face transformers 5.x DeepseekV3 models, two ways.

1. Module swap. ``patch_deepseek_attention(model)`` replaces every ``DeepseekV3Attention`` by
   ``pygen.nn.MLA`` built from the same config, holding the original Parameter objects (no copy;
   dtypes, devices, state_dict keys and optimizer references kept). The swapped module runs
   prefill through pygen.ops.mla_prefill whatever ``config._attn_implementation`` says (masks that
   are not plain causal - padding - fall back to explicit softmax attention, see pygen/nn/mla.py),
   stores latents in transformers' Cache as transformers does, and decodes with weight absorption
   on pygen's paged cache when given a ``pygen.nn._mla_cache.PagedMLACache`` (pygen.models.deepseek
   shows the loop). ``pygen.patch`` exposes it.

2. Attention function (no module swap). ``register()`` (run on import) adds
   :func:`pygen_attention_forward` to transformers' ``AttentionInterface`` as ``"pygen"``, plus a
   mask builder under the same name in ``AttentionMaskInterface`` (transformers' sdpa mask: None
   when the mask is plain causal, a boolean keep-mask [b, 1, q, kv] otherwise - without it,
   transformers would hand a custom implementation no mask at all and silently drop padding)::

       import pygen.integrations.transformers_mla          # registers "pygen"
       model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="pygen")

   Where the shapes fit (no dropout, mask None or plain bottom-right causal, any head dims, query
   and key head counts equal or a multiple - keys are repeated), attention runs in
   pygen.ops.mla_prefill (varlen flash attention, one sequence per batch row). Elsewhere it falls
   back to the eager math and warns once per reason (``FALLBACKS`` counts them): padding masks,
   attention dropout in training, and ``output_attentions`` (the weights [b, H, s, S] are then
   returned, as eager returns them) are served that way.
   ``module.pygen_backend`` picks a pygen backend (default: pygen's choice).
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import nn

__all__ = ["NAME", "register", "pygen_attention_forward", "patch_deepseek_attention", "FALLBACKS"]

NAME = "pygen"
FALLBACKS: Counter[str] = Counter()


def _fallback(reason: str) -> None:
    if not FALLBACKS[reason]:
        warnings.warn(
            f"attn_implementation='pygen': {reason}; using explicit softmax attention (the eager math) for these calls",
            stacklevel=3,
        )
    FALLBACKS[reason] += 1


def pygen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """AttentionInterface entry. query [b, H, s, D], key [b, Hkv, S, D], value [b, Hkv, S, Dv]
    -> (out [b, s, H, Dv], None)."""
    from ..nn.mla import attention_explicit, attention_weights_requested, mask_is_causal
    from ..ops.mla import mla_prefill

    b, h, s, d = query.shape
    hk, kv_len = key.shape[1], key.shape[2]
    if h % hk:
        raise ValueError(f"attn_implementation='pygen': query heads {h} not a multiple of key heads {hk}")
    if hk != h:
        key = key.repeat_interleave(h // hk, dim=1)
        value = value.repeat_interleave(h // hk, dim=1)
    scale = d**-0.5 if scaling is None else float(scaling)
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [b, len, H, dim] views
    training = bool(getattr(module, "training", False))
    # eager returns the weights when they are wanted, so the fallback below does too
    want_weights = attention_weights_requested(getattr(module, "config", None), kwargs)
    reason = None
    if dropout and training:
        reason = "attention dropout in training"
    elif want_weights:
        reason = "output_attentions (weights are never materialised by the kernel)"
    elif attention_mask is not None and not (
        mask_is_causal(attention_mask, s, kv_len)
        if causal
        else bool((attention_mask == 0).all())
        if attention_mask.dtype != torch.bool
        else bool(attention_mask.all())
    ):
        reason = "attention mask is not plain causal (padding or packed sequences)"
    if reason is None:
        cu_q = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
        cu_k = torch.arange(0, (b + 1) * kv_len, kv_len, dtype=torch.int32, device=q.device)
        out, _ = mla_prefill(
            q.reshape(b * s, h, d).contiguous(),
            k.reshape(b * kv_len, h, d).contiguous(),
            v.reshape(b * kv_len, h, -1).contiguous(),
            cu_q,
            cu_k,
            max_seqlen_q=s,
            max_seqlen_k=kv_len,
            softmax_scale=scale,
            causal=causal,
            backend=getattr(module, "pygen_backend", None),
        )
        return out.view(b, s, h, -1), None
    _fallback(reason)
    if attention_mask is None and not causal:
        attention_mask = torch.ones(1, 1, s, kv_len, dtype=torch.bool, device=q.device)
    out, weights = attention_explicit(q, k, v, attention_mask, scale, dropout, training, return_weights=True)
    return out.contiguous(), weights if want_weights else None


def register() -> None:
    """Register ``"pygen"`` in AttentionInterface and AttentionMaskInterface (idempotent)."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, pygen_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def patch_deepseek_attention(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Replace every transformers ``DeepseekV3Attention`` in ``model`` by ``pygen.nn.MLA`` holding
    the original Parameter objects (typed as a DeepseekV3Attention too, and taking over its
    hooks, so that transformers still records the attention weights). Returns
    ``{"DeepseekV3Attention": count}`` (empty when none). ImportError without transformers."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

    from ..nn.mla import MLA
    from ._patched import refuse_after_swap, take_hooks, typed_as
    from ._swaps import adopt_tensors, children

    counts: Counter[str] = Counter()
    for parent, child_name, child in children(model):
        if not isinstance(child, DeepseekV3Attention) or isinstance(child, MLA):
            continue
        with torch.device("meta"):  # no throw-away allocation of the projections
            new = MLA(child.config, child.layer_idx, backend=backend)
        adopt_tensors(new, child)
        if abs(new.scaling - child.scaling) > 1e-12 * abs(child.scaling):
            raise RuntimeError(f"softmax scale mismatch: pygen {new.scaling} vs transformers {child.scaling}")
        new.train(child.training)
        new.__class__ = typed_as("DeepseekV3MLA")  # MLA's forward, transformers' type: recorded
        take_hooks(new, child)
        setattr(parent, child_name, new)
        counts[type(child).__name__] += 1
    if counts:
        refuse_after_swap(
            model, "set_attn_implementation", "attention", "patch_transformers_deepseek", 'attn_implementation="pygen"'
        )
    return dict(counts)


try:
    register()
except ImportError:  # transformers missing or without the registries: nothing to hook
    pass
