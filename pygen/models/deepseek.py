"""A DeepSeek-V3 style decoder (MLA + DeepSeekMoE), gpt-fast style: a config dataclass, plain
modules, and a greedy generation loop on pygen's paged latent cache.

Block (transformers' DeepseekV3DecoderLayer, same submodule names)::

    h = x + self_attn(input_layernorm(x))                 pygen.nn.MLA
    y = h + mlp(post_attention_layernorm(h))              pygen.nn.moe.MoE for layer_idx >=
                                                          first_k_dense_replace, else a dense SwiGLU
                                                          MLP (also when pygen.nn.moe is missing)

``DeepSeekV3LM`` stacks blocks between an embedding and an RMSNorm + LM head and has
``generate(input_ids, max_new_tokens)``: the prompt runs once (mla_prefill), its latents go into a
:class:`PagedMLACache`, and each new token runs absorbed mla_decode on that cache. The test
(tests/common/test_deepseek_model.py) checks the tokens equal greedy decoding by full recomputation.

``pygen profile deepseek_v3_block`` runs one MoE block (``DeepSeekV3BlockProfile``) on
[batch, seq, hidden] activations (prefill: mla_prefill); ``pygen profile deepseek_v3_decode``
runs the same block decoding one token for each of 32 sequences against 4096 cached tokens each
(``DeepSeekV3DecodeProfile``: absorbed mla_decode on the paged cache). Its default config has
DeepSeek-V3's attention and expert dims (hidden 7168, 128 heads, q_lora 1536, kv_lora 512,
128 + 64 / 128 head dims, expert width 2048, top-8 of 8 groups / top-4 groups, 1 shared expert)
but 32 routed experts instead of 256, so the block builds in seconds (1.6 B parameters instead of
11.5 B); ``quick`` is a toy size for CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.types import Device

from ..nn._mla_cache import PagedMLACache
from ..nn._rope import RotaryEmbedding
from ..nn.mla import MLA, RMSNorm
from ..nn.moe import MoE, MoEMLP, _activation

__all__ = [
    "DeepSeekV3Config",
    "DeepSeekV3Block",
    "DeepSeekV3LM",
    "MTPModule",
    "DeepSeekV3BlockProfile",
    "DeepSeekV3DecodeProfile",
    "MODELS",
]


def _yarn() -> dict:
    return {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "rope_theta": 10000.0,
    }


@dataclass(frozen=True)
class DeepSeekV3Config:
    """Field names of transformers' DeepseekV3Config, so MLA(config) and MoE(config) read it."""

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense MLP of the first layers
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 1
    num_attention_heads: int = 128
    num_key_value_heads: int = 128
    q_lora_rank: int | None = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    n_routed_experts: int = 32  # DeepSeek-V3 has 256; see the module docstring
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    n_shared_experts: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 0
    num_nextn_predict_layers: int = 0  # MTP depths D (DeepSeek-V3: 1); transformers' field name
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 163840
    rope_parameters: dict = field(default_factory=_yarn)
    rope_interleave: bool = True
    attention_bias: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    # profile inputs: the block on [batch, seq] tokens; decode: decode_batch sequences of
    # decode_context cached tokens, one new token each
    batch: int = 1
    seq: int = 1024
    decode_batch: int = 32
    decode_context: int = 4096

    def __hash__(self):  # the rope dict makes the generated hash fail
        return id(self)

    @classmethod
    def quick(cls) -> DeepSeekV3Config:
        return cls(
            vocab_size=97,
            hidden_size=64,
            intermediate_size=96,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            q_lora_rank=32,
            qk_nope_head_dim=32,
            v_head_dim=32,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=1.0,
            first_k_dense_replace=1,
            rope_parameters=dict(_yarn(), original_max_position_embeddings=64),
            batch=2,
            seq=16,
            decode_batch=3,
            decode_context=40,
        )


class DenseMLP(MoEMLP):
    """transformers' DeepseekV3MLP, the MLP of the layers below first_k_dense_replace:
    down_proj(act(gate_proj(x)) * up_proj(x)) with the config's hidden_act (the shared experts'
    module; it was always silu, whatever hidden_act said)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu") -> None:
        super().__init__(hidden_size, intermediate_size, _activation(hidden_act))


class DeepSeekV3Block(nn.Module):
    def __init__(self, cfg: DeepSeekV3Config, layer_idx: int, backend: str | None = None) -> None:
        super().__init__()
        self.self_attn = MLA(cfg, layer_idx, backend=backend)
        if layer_idx >= cfg.first_k_dense_replace:
            self.mlp = MoE(cfg, backend=backend)
        else:
            self.mlp = DenseMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: PagedMLACache | None = None,
    ) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), position_embeddings, None, cache)[0]
        return h + self.mlp(self.post_attention_layernorm(h))


class MTPModule(DeepSeekV3Block):
    """Multi-token prediction depth k (DeepSeek-V3 report, section 2.2): for the row of token i,

        h^k_i = norm(TRM_k(eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)])))       [.., H]

    eh_proj: [2H -> H] linear, TRM_k: one decoder block (this class's DeepSeekV3Block part, layer
    index num_hidden_layers + k - 1), Emb and the output head shared with the main model, which
    gives h^0 = its final-normed hidden state; h^k feeds both the shared head (predicting t_{i+k+1})
    and depth k + 1. The concatenation order (embedding first) and the names are those of the
    released checkpoint's MTP layer (enorm, hnorm, eh_proj; ``norm`` is its shared_head.norm)."""

    def __init__(self, cfg: DeepSeekV3Config, layer_idx: int, backend: str | None = None) -> None:
        super().__init__(cfg, layer_idx, backend)
        self.enorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def forward(
        self, prev: torch.Tensor, emb: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """prev h^{k-1} [b, n, H], emb Emb(t_{i+k}) [b, n, H] -> h^k [b, n, H] (causal over n)."""
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(prev)], dim=-1))
        return self.norm(super().forward(x, position_embeddings))


def _init(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class DeepSeekV3LM(nn.Module):
    """Embedding, ``num_hidden_layers`` blocks, RMSNorm, LM head; ``forward(input_ids, cache=None)``
    -> logits [b, s, vocab]; with a PagedMLACache the caller has opened a step (``begin``).
    ``num_nextn_predict_layers`` = D > 0 adds D :class:`MTPModule` depths (``mtp``), trained by
    :meth:`mtp_loss`; forward and generate do not use them."""

    def __init__(self, cfg: DeepSeekV3Config, backend: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DeepSeekV3Block(cfg, i, backend) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        n = cfg.num_hidden_layers
        self.mtp = nn.ModuleList(MTPModule(cfg, n + k, backend) for k in range(cfg.num_nextn_predict_layers))
        self.rotary_emb = RotaryEmbedding(cfg)
        _init(self, cfg.initializer_range)

    def forward(
        self, input_ids: torch.Tensor, cache: PagedMLACache | None = None, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.lm_head(self.norm(self._trunk(input_ids, cache, position_ids)[0]))

    def _trunk(self, input_ids, cache, position_ids):
        """(last block's output [b, s, H], the rotary (cos, sin) of the positions)."""
        x = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = (
                cache.step_info()[3]
                if cache is not None
                else torch.arange(input_ids.shape[1], device=x.device)[None].expand(x.shape[0], -1)
            )
        pe = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, pe, cache)
        return x, pe

    def head_inputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
        """What the LM head sees at each depth: [h^0 [b, s, H], h^1 [b, s - 1, H], ..., h^D [b, s - D, H]];
        row i of depth k predicts token i + k + 1 (depth k runs on the s - k rows whose token i + k
        exists, at positions 0 .. s - k - 1)."""
        x, pe = self._trunk(input_ids, None, position_ids)
        hs = [self.norm(x)]
        for k, depth in enumerate(self.mtp, 1):
            n = input_ids.shape[1] - k
            hs.append(depth(hs[-1][:, :n], self.embed_tokens(input_ids[:, k:]), tuple(p[:, :n] for p in pe)))
        return hs

    def mtp_loss(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mtp_weight: float = 0.3,
        ignore_index: int = -100,
        position_ids: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The V3 training loss L = L_main + mtp_weight / D * sum_k L_MTP^k (the report's lambda: 0.3,
        later 0.1), each term the mean cross-entropy over its valid targets (labels [b, s], default
        input_ids, shifted inside: depth k predicts labels[:, i + k + 1]; ignore_index rows skipped).
        The main head and every depth go through ONE pygen.ops.linear_cross_entropy call over the
        stacked head inputs, so the head weight is streamed once for all depths and no logits are
        held. Returns (loss, per-depth losses [D + 1] detached), float32 (float64 for float64)."""
        from ..ops.losses import linear_cross_entropy

        labels = input_ids if labels is None else labels
        if input_ids.dim() != 2 or labels.shape != input_ids.shape:
            shapes = f"{tuple(input_ids.shape)} and {tuple(labels.shape)}"
            raise ValueError(f"mtp_loss: input_ids [b, s] and labels of its shape expected, got {shapes}")
        if input_ids.shape[1] < len(self.mtp) + 2:
            need, got = len(self.mtp) + 2, input_ids.shape[1]
            raise ValueError(f"mtp_loss: input_ids needs at least D + 2 = {need} tokens per row, got {got}")
        hs = self.head_inputs(input_ids, position_ids)
        targets = [F.pad(labels[:, k + 1 :], (0, 1), value=ignore_index).reshape(-1) for k in range(len(hs))]
        # rows in float32 (float64) from the op: a bf16 model's rows are not rounded to bf16 first
        acc = torch.float64 if hs[0].dtype == torch.float64 else torch.float32
        rows = linear_cross_entropy(
            torch.cat([h.reshape(-1, h.shape[-1]) for h in hs]), self.lm_head.weight, torch.cat(targets),
            ignore_index=ignore_index, reduction="none", dtype=acc, backend=backend,
        )  # fmt: skip
        parts = zip(rows.split([len(t) for t in targets]), targets)
        per = torch.stack([r.sum() / (t != ignore_index).sum() for r, t in parts])
        loss = per[0] + (mtp_weight / len(self.mtp)) * per[1:].sum() if self.mtp else per[0]
        return loss, per.detach()

    def new_cache(
        self,
        max_tokens: int,
        batch: int,
        page_size: int = 64,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ) -> PagedMLACache:
        """A paged cache with room for ``batch`` sequences of ``max_tokens``; ``dtype=torch.uint8``
        gives the FP8 cache. The default dtype is the model's."""
        p = self.lm_head.weight
        blocks = batch * -(-max_tokens // page_size)
        return PagedMLACache(
            len(self.layers),
            blocks,
            page_size,
            self.cfg.kv_lora_rank,
            self.cfg.qk_rope_head_dim,
            dtype=dtype or p.dtype,
            device=p.device,
            backend=backend,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        cache: PagedMLACache | None = None,
        page_size: int = 64,
        cache_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Greedy decoding of equal-length prompts [b, T] -> [b, T + max_new_tokens]. The prompt is
        one prefill step, every later token one absorbed decode step on the paged cache; the
        sequences are freed at the end (pass ``cache`` to reuse a pool)."""
        b, t = input_ids.shape
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if max_new_tokens == 0:
            return input_ids
        if cache is None:
            cache = self.new_cache(t + max_new_tokens, b, page_size, cache_dtype)
        sids = [cache.allocate() for _ in range(b)]
        out, step = [input_ids], input_ids
        try:
            for _ in range(max_new_tokens):
                cache.begin(sids, step.shape[1])
                logits = self(step, cache)
                cache.commit()
                step = logits[:, -1].argmax(-1, keepdim=True)
                out.append(step)
        finally:
            if cache._step is not None:  # an exception mid-step: drop the open step
                cache.rollback()
            for s in sids:
                cache.free(s)
        return torch.cat(out, dim=1)


class DeepSeekV3BlockProfile(nn.Module):
    """One MoE decoder block on hidden states [batch, seq, hidden] (``pygen profile``)."""

    def __init__(self, cfg: DeepSeekV3Config, backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.block = DeepSeekV3Block(cfg, max(cfg.first_k_dense_replace, 0), backend)
        self.rotary_emb = RotaryEmbedding(cfg)
        _init(self, cfg.initializer_range)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, s = hidden_states.shape[:2]
        pos = torch.arange(s, device=hidden_states.device)[None].expand(b, -1)
        return self.block(hidden_states, self.rotary_emb(hidden_states, pos))

    @staticmethod
    def example_inputs(
        cfg: DeepSeekV3Config, device: Device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(cfg.batch, cfg.seq, cfg.hidden_size, generator=g).to(device=device, dtype=dtype),)


class DeepSeekV3DecodeProfile(DeepSeekV3BlockProfile):
    """One MoE decoder block decoding one token for each of ``decode_batch`` sequences against a
    paged latent cache already holding ``decode_context`` tokens each (random latents: the kernel
    does the same work whatever they are): the absorbed mla_decode path (``pygen profile
    deepseek_v3_decode``). Each call opens a step and rolls it back, so repeated calls see the
    same cache. The pages are a buffer of this module, so ``.to()`` moves them."""

    PAGE = 64

    def __init__(self, cfg: DeepSeekV3Config, backend: str | None = None):
        super().__init__(cfg, backend)
        per_seq = -(-(cfg.decode_context + 1) // self.PAGE)
        g = torch.Generator().manual_seed(0)
        kv = torch.randn(cfg.decode_batch * per_seq, self.PAGE, 1, cfg.kv_lora_rank + cfg.qk_rope_head_dim, generator=g)
        self.register_buffer("pages", kv, persistent=False)
        self._cache = None

    def _paged(self) -> tuple[PagedMLACache, list[int]]:
        if self._cache is None or self._cache[0].kv[0] is not self.pages:
            c = self.cfg
            layers = self.block.self_attn.layer_idx + 1  # only the block's own layer is used
            cache = PagedMLACache(
                layers,
                self.pages.shape[0],
                self.PAGE,
                c.kv_lora_rank,
                c.qk_rope_head_dim,
                dtype=self.pages.dtype,
                device=self.pages.device,
                storage=[self.pages] * layers,
            )
            sids = [cache.allocate() for _ in range(c.decode_batch)]
            cache.begin(sids, c.decode_context)  # the context: pages reserved, contents random
            cache.commit()
            self._cache = (cache, sids)
        return self._cache

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        cache, sids = self._paged()
        cache.begin(sids, hidden_states.shape[1])
        try:
            pe = self.rotary_emb(hidden_states, cache.step_info()[3])
            return self.block(hidden_states, pe, cache)
        finally:
            cache.rollback()

    @staticmethod
    def example_inputs(
        cfg: DeepSeekV3Config, device: Device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(cfg.decode_batch, 1, cfg.hidden_size, generator=g).to(device=device, dtype=dtype),)


MODELS = {
    "deepseek_v3_block": (DeepSeekV3BlockProfile, DeepSeekV3Config),
    "deepseek_v3_decode": (DeepSeekV3DecodeProfile, DeepSeekV3Config),
}


def build(
    name: str = "deepseek_v3_block", quick: bool = False, backend: str | None = None, **overrides: Any
) -> tuple[nn.Module, Any]:
    """(model, config) like pygen.models.build, for use before the integrator registers MODELS."""
    cls, cfg_cls = MODELS[name]
    cfg = cfg_cls.quick() if quick else cfg_cls()
    if overrides:
        cfg = replace(cfg, **overrides)
    return cls(cfg, backend=backend), cfg
