"""Rotary position embedding as DeepSeek-V3 configures it (YaRN scaling), and the MLA softmax scale.

Only the 64-wide RoPE part of each query/key head is rotated (``qk_rope_head_dim``). With
``rope_parameters = {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L0,
"beta_fast": bf, "beta_slow": bs, "mscale": m, "mscale_all_dim": ma, "rope_theta": base}``
(DeepSeek-V3: s = 40, L0 = 4096, bf = 32, bs = 1, m = ma = 1, base = 10000)::

    d            = qk_rope_head_dim, i = 0 .. d/2 - 1,  f_i = base^(-2i/d)
    corr(r)      = d * ln(L0 / (2 pi r)) / (2 ln base)          dimension turning r times in L0
    low, high    = max(floor(corr(bf)), 0), min(ceil(corr(bs)), d - 1)
    ramp_i       = clamp((i - low) / (high - low), 0, 1)        (high += 0.001 when equal)
    inv_freq_i   = f_i / s * ramp_i + f_i * (1 - ramp_i)        fast dims keep f_i, slow ones f_i/s
    mscale(s, k) = 0.1 k ln s + 1  (1 when s <= 1)
    cos/sin      = cos(p inv_freq), sin(p inv_freq), times attention_factor
                   attention_factor = mscale(s, m) / mscale(s, ma)   (= 1 for DeepSeek-V3)
    softmax_scale = (qk_nope_head_dim + qk_rope_head_dim)^-0.5 * mscale(s, ma)^2

The last line is why the MLA softmax scale is not just 1/sqrt(192): transformers'
DeepseekV3Attention multiplies ``qk_head_dim ** -0.5`` by ``mscale(factor, mscale_all_dim) ** 2``
when the RoPE type is not "default" and ``mscale_all_dim`` is set (yarn_apply_mscale); so does
:func:`softmax_scale` here. These are the formulas of transformers 5.x's ``_compute_yarn_parameters``
written independently (same numbers, tested against it in tests/mla/test_mla_transformers.py).

Layouts: ``cos``/``sin`` are [batch, seq, d] (the frequencies repeated twice, transformers'
convention), query/key rope parts [..., d]. ``rope_interleave=True`` (DeepSeek's checkpoint
layout) rotates the pairs (x0, x1), (x2, x3), ... and writes the result de-interleaved
([evens rotated | odds rotated]), exactly as transformers' apply_rotary_pos_emb_interleave does;
``False`` is the rotate-half form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "rope_params",
    "yarn_mscale",
    "inv_freq_and_attention_factor",
    "softmax_scale",
    "RotaryEmbedding",
    "apply_rope",
]


def rope_params(config: Any) -> dict:
    """The config's RoPE parameters as a plain dict (transformers 5.x ``rope_parameters``, or the
    4.x ``rope_scaling`` + ``rope_theta`` pair)."""
    p = getattr(config, "rope_parameters", None)
    if p is None:
        p = dict(getattr(config, "rope_scaling", None) or {})
        p.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
        if "type" in p and "rope_type" not in p:
            p["rope_type"] = p["type"]
    p = dict(p)
    p.setdefault("rope_type", "default")
    p.setdefault("rope_theta", 10000.0)
    return p


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _factor(p: dict, config: Any) -> float:
    factor = p.get("factor")
    if factor is None:  # DeepSeek-V3 style configs may give only the two lengths
        factor = config.max_position_embeddings / p["original_max_position_embeddings"]
    return float(factor)


def inv_freq_and_attention_factor(config: Any, device=None) -> tuple[torch.Tensor, float]:
    """(inv_freq [d/2] float32, attention_factor) for the config's RoPE ("default" or "yarn")."""
    p = rope_params(config)
    d = config.qk_rope_head_dim
    base = float(p["rope_theta"])
    pos_freq = base ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
    f = 1.0 / pos_freq
    kind = p["rope_type"]
    if kind == "default":
        return f, 1.0
    if kind != "yarn":
        raise ValueError(f"config.rope_parameters['rope_type'] must be 'default' or 'yarn', got {kind!r}")
    s = _factor(p, config)
    att = p.get("attention_factor")
    if att is None:
        m, ma = p.get("mscale"), p.get("mscale_all_dim")
        att = yarn_mscale(s, m) / yarn_mscale(s, ma) if (m and ma) else yarn_mscale(s)
    bf, bs = p.get("beta_fast") or 32, p.get("beta_slow") or 1
    l0 = p["original_max_position_embeddings"]

    def corr(r):
        return d * math.log(l0 / (r * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr(bf), corr(bs)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    # ramp = 0: fast-turning dims keep their frequency; ramp = 1: slow dims are interpolated.
    # (1 / (s * pos_freq) rather than f / s: the float32 rounding transformers gets, bit for bit)
    keep = 1 - ramp
    return 1.0 / (s * pos_freq) * (1 - keep) + f * keep, float(att)


def softmax_scale(config: Any) -> float:
    """1/sqrt(qk_nope + qk_rope) times mscale(factor, mscale_all_dim)^2 for scaled RoPE."""
    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    p = rope_params(config)
    if p["rope_type"] != "default" and p.get("mscale_all_dim"):
        m = yarn_mscale(_factor(p, config), p["mscale_all_dim"])
        scale = scale * m * m
    return scale


class RotaryEmbedding(nn.Module):
    """(cos, sin) [batch, seq, d] for integer positions [batch, seq], in ``x``'s dtype."""

    def __init__(self, config: Any):
        super().__init__()
        inv_freq, self.attention_scaling = inv_freq_and_attention_factor(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype))


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool, unsqueeze_dim: int
) -> torch.Tensor:
    """Rotate ``x`` [..., d]; ``cos``/``sin`` get a broadcast axis at ``unsqueeze_dim``."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    if interleave:
        half = cos.shape[-1] // 2
        c, s = cos[..., :half], sin[..., :half]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    h = x.shape[-1] // 2
    rot = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
    return x * cos + rot * sin
