"""DeepSeekMoE layer (DeepSeek-V2/V3): shared experts plus fine-grained routed experts, on
pygen's routing (``moe_route``) and fused expert MLP (``fused_moe``).

Drop-in for Hugging Face transformers 5.x ``DeepseekV3MoE``: the same attribute names, the same
state_dict keys and shapes, so a checkpoint's weights load unchanged.

    MoE(config)            or MoE(hidden_size=..., moe_intermediate_size=..., n_routed_experts=...,
                              num_experts_per_tok=..., n_group=..., topk_group=..., ...)

    gate.weight                   [E, H]  float32 (router; logits are computed in float32)
    gate.e_score_correction_bias  [E]     float32 buffer (aux-loss-free balancing bias)
    experts.gate_up_proj          [E, 2I, H]  rows 0..I-1 gate, I..2I-1 up
    experts.down_proj             [E, H, I]
    shared_experts.{gate,up,down}_proj.weight   [I*S, H], [I*S, H], [H, I*S]  (S = n_shared_experts)

Forward, for x [..., H] flattened to [T, H]:

    logits = x.float() @ gate.weight.T      (float64 for float64 x)      [T, E]
    ids, w = moe_route(logits, top_k, scoring, bias, n_group, topk_group, norm_topk_prob,
                       routed_scaling_factor)                            [T, k] int32 / float32
    y      = fused_moe(x, gate_up_proj, down_proj, w, ids, act)          [T, H]
             (y[t] = sum_j w[t,j] * W2[e] (act(W1g[e] x_t) * W1u[e] x_t),  e = ids[t, j])
    out    = y + shared_experts(x)

Gradients reach every parameter the way they do in transformers: gate.weight through the
routing weights (the selection itself is discrete), the experts and shared experts through
their products; the bias gets none (it only selects).

Auxiliary-loss-free load balancing (DeepSeek-V3 technical report, sec. 2.1.2; Wang et al. 2024,
"Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"): in training mode the
layer adds the number of token-slots routed to each expert to the non-persistent buffer
``tokens_per_expert`` [E] (int64, on the device, no host synchronisation). After each step the
training loop calls ``moe.update_bias(gamma)``, which applies

    load  = tokens_per_expert  (summed over the expert-parallel group, and over ``group`` when
                                data-parallel replicas must agree)
    bias += gamma * sign(mean(load) - load)        (under-loaded experts up, over-loaded down)

and zeroes the counter. ``load_balance_stats(load)`` reports the paper's MaxVio
((max - mean) / mean) and the coefficient of variation.

Expert parallelism: ``MoE(config, ep_group=pg)`` keeps the gate and the shared experts
replicated and only this rank's contiguous slice of the routed experts (rank r of W holds
E // W experts, plus one for r < E % W); ``experts.gate_up_proj`` is then
[E_local, 2I, H]. Loading a full (single-process) state_dict slices it automatically. Tokens
move with all_to_all_single (pygen/nn/_moe_ep.py; docs/moe_layer.md has the design and torchrun
usage). Gradients of the replicated parameters are per-rank partial sums:
``all_reduce_replicated_grads()`` sums them, which gives the single-process gradient (DDP over the
EP group would also average the per-rank expert gradients: use it for the replicated ones only).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MoE",
    "MoEGate",
    "MoEExperts",
    "MoEMLP",
    "expert_load",
    "bias_update",
    "load_balance_stats",
    "ACTIVATION_NAMES",
]

# Hugging Face ``hidden_act`` names -> pygen.ops.fused_moe activation names.
ACTIVATION_NAMES = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}

# Constructor fields (DeepseekV3Config names) and their defaults when neither the config nor a
# keyword gives them. None: required.
_FIELDS: dict[str, Any] = {
    "hidden_size": None,
    "moe_intermediate_size": None,
    "n_routed_experts": None,
    "num_experts_per_tok": None,
    "n_group": 1,
    "topk_group": 1,
    "n_shared_experts": 1,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": True,
    "hidden_act": "silu",
    "scoring_func": "sigmoid",
    "initializer_range": 0.02,
}


def _moe_ops():
    from pygen.ops import moe as ops_moe  # imported late: pygen.nn must import without it

    return ops_moe


def _activation(name: str) -> str:
    try:
        return ACTIVATION_NAMES[name]
    except KeyError:
        raise ValueError(
            f"hidden_act must be one of {sorted(ACTIVATION_NAMES)} for the MoE layer, got {name!r}"
        ) from None


def _act_fn(kind: str):
    return {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[kind]


def resolve_fields(config: Any = None, **overrides: Any) -> dict[str, Any]:
    """The layer's fields from a DeepseekV3-style config and/or keywords (keywords win). Raises
    ValueError naming the field for missing or inconsistent values."""
    unknown = set(overrides) - set(_FIELDS)
    if unknown:
        raise TypeError(f"MoE got unexpected keyword argument(s) {sorted(unknown)}; known fields: {sorted(_FIELDS)}")
    f: dict[str, Any] = {}
    for name, default in _FIELDS.items():
        v = overrides.get(name)
        if v is None and config is not None:
            v = getattr(config, name, None)
            if v is None and name == "n_routed_experts":
                v = getattr(config, "num_local_experts", None)
        if v is None:
            v = default
        if v is None:
            raise ValueError(f"MoE needs {name} (from the config or as a keyword argument)")
        f[name] = v
    for name in ("hidden_size", "moe_intermediate_size", "n_routed_experts", "n_group"):
        if not isinstance(f[name], int) or isinstance(f[name], bool) or f[name] < 1:
            raise ValueError(f"{name} must be a positive int, got {f[name]!r}")
    # 0 routed experts per token / 0 kept groups (every expert masked) are degenerate, but
    # transformers runs them
    for name in ("num_experts_per_tok", "topk_group", "n_shared_experts"):
        if not isinstance(f[name], int) or isinstance(f[name], bool) or f[name] < 0:
            raise ValueError(f"{name} must be an int >= 0, got {f[name]!r}")
    e, k, g, tg = f["n_routed_experts"], f["num_experts_per_tok"], f["n_group"], f["topk_group"]
    if e % g:
        raise ValueError(f"n_routed_experts ({e}) must be divisible by n_group ({g})")
    if tg > g:
        raise ValueError(f"topk_group ({tg}) must be <= n_group ({g})")
    # more than the kept groups' experts is allowed (transformers routes the rest to masked
    # experts, pygen/ref/moe.py); more than all of them is what transformers' topk refuses
    if k > e:
        raise ValueError(f"num_experts_per_tok ({k}) must be <= n_routed_experts ({e})")
    if f["scoring_func"] not in ("sigmoid", "softmax"):
        raise ValueError(f"scoring_func must be 'sigmoid' or 'softmax', got {f['scoring_func']!r}")
    _activation(f["hidden_act"])
    return f


# ----------------------------------------------------------------------------------------------
# Load statistics and the bias update rule
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def expert_load(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Token-slots per expert, int64 [num_experts], from topk_ids [T, k] (ids outside
    [0, num_experts) are not counted). Static shapes, no host synchronisation."""
    ids = topk_ids.reshape(-1).long()
    valid = (ids >= 0) & (ids < num_experts)
    out = torch.zeros(num_experts, dtype=torch.int64, device=ids.device)
    return out.scatter_add_(0, ids.clamp(0, num_experts - 1), valid.long())


@torch.no_grad()
def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """In place: ``bias += gamma * sign(mean(load) - load)``; returns the applied step [E].
    Under-loaded experts (load below the mean) gain gamma, over-loaded ones lose gamma, experts
    exactly at the mean are unchanged."""
    if load.shape != bias.shape:
        raise ValueError(f"load must have the bias's shape {tuple(bias.shape)}, got {tuple(load.shape)}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    lf = load.to(device=bias.device, dtype=torch.float64)
    step = (gamma * torch.sign(lf.mean() - lf)).to(bias.dtype)
    bias.add_(step)
    return step


@torch.no_grad()
def load_balance_stats(load: torch.Tensor) -> dict[str, float]:
    """Summary of a per-expert load vector: max_violation = (max - mean) / mean (MaxVio of the
    aux-loss-free balancing paper), cv = std / mean, and min / max / mean. Synchronises."""
    lf = load.double()
    mean = float(lf.mean())
    if mean == 0.0:
        return {"max_violation": 0.0, "cv": 0.0, "min": 0.0, "max": 0.0, "mean": 0.0}
    return {
        "max_violation": (float(lf.max()) - mean) / mean,
        "cv": float(lf.std(unbiased=False)) / mean,
        "min": float(lf.min()),
        "max": float(lf.max()),
        "mean": mean,
    }


# ----------------------------------------------------------------------------------------------
# Sub-modules (transformers' DeepseekV3TopkRouter / DeepseekV3Experts / DeepseekV3MLP)
# ----------------------------------------------------------------------------------------------
class MoEGate(nn.Module):
    """Router: ``weight`` [E, H] float32, buffer ``e_score_correction_bias`` [E] float32.
    forward(hidden_states [..., H]) -> (router_logits [T, E] float32, topk_weights [T, k]
    float32, topk_indices [T, k] int32), like transformers' DeepseekV3TopkRouter."""

    def __init__(
        self,
        hidden_size: int,
        n_routed_experts: int,
        num_experts_per_tok: int,
        *,
        n_group: int = 1,
        topk_group: int = 1,
        norm_topk_prob: bool = True,
        routed_scaling_factor: float = 1.0,
        scoring_func: str = "sigmoid",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.top_k = num_experts_per_tok
        self.num_experts = n_routed_experts
        self.hidden_dim = hidden_size
        self.routed_scaling_factor = routed_scaling_factor
        self.num_group = n_group
        self.topk_group = topk_group
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.backend = backend
        self.weight = nn.Parameter(torch.zeros(n_routed_experts, hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(n_routed_experts, dtype=torch.float32))

    def route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_ids int32 [T, k], topk_weights float32 [T, k]) from float32 logits [T, E]."""
        ids, w = _moe_ops().moe_route(
            router_logits,
            self.top_k,
            scoring=self.scoring_func,
            e_score_correction_bias=self.e_score_correction_bias,
            n_group=self.num_group,
            topk_group=self.topk_group,
            norm_topk_prob=self.norm_topk_prob,
            routed_scaling_factor=self.routed_scaling_factor,
            backend=self.backend,
        )
        return ids, w  # w is differentiable in the logits on every backend (pygen.ops.moe)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = hidden_states.reshape(-1, self.hidden_dim)
        # float32 logits as in transformers; float64 for float64 inputs (tests, gradcheck)
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        router_logits = F.linear(x.to(cdt), self.weight.to(cdt))
        ids, w = self.route(router_logits)
        return router_logits, w, ids

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_dim} -> {self.num_experts} experts, top_k={self.top_k}, "
            f"groups={self.num_group}/top {self.topk_group}, scoring={self.scoring_func}"
        )


class MoEExperts(nn.Module):
    """Routed experts as 3-D tensors: ``gate_up_proj`` [E_local, 2I, H] (gate rows first),
    ``down_proj`` [E_local, H, I]. forward(hidden_states [T, H], top_k_index [T, k],
    top_k_weights [T, k]) -> [T, H] through pygen.ops.fused_moe; ids are local expert ids.

    ``expert_offset`` / ``num_global_experts`` describe the slice an expert-parallel rank
    holds; loading a state_dict whose tensors have num_global_experts rows keeps that slice."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        *,
        activation: str = "silu",
        backend: str | None = None,
        expert_offset: int = 0,
        num_global_experts: int | None = None,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.hidden_dim = hidden_size
        self.intermediate_dim = intermediate_size
        self.activation = activation
        self.backend = backend
        self.expert_offset = expert_offset
        self.num_global_experts = num_experts if num_global_experts is None else num_global_experts
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self._register_load_state_dict_pre_hook(self._slice_global)

    def _slice_global(self, state_dict, prefix, *args, **kwargs):
        if self.num_global_experts == self.num_experts:
            return
        lo, hi = self.expert_offset, self.expert_offset + self.num_experts
        for name in ("gate_up_proj", "down_proj"):
            t = state_dict.get(prefix + name)
            if t is not None and t.dim() == 3 and t.shape[0] == self.num_global_experts:
                state_dict[prefix + name] = t[lo:hi]

    def forward(
        self,
        hidden_states: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
        *,
        check_ids: bool = True,
    ) -> torch.Tensor:
        # check_ids=False (the MoE layer, whose router only emits valid ids) skips fused_moe's
        # id range check, the one host synchronisation, so the layer stays graph-capturable
        return _moe_ops().fused_moe(
            hidden_states,
            self.gate_up_proj,
            self.down_proj,
            top_k_weights,
            top_k_index.int(),
            activation=self.activation,
            backend=self.backend,
            check_ids=check_ids,
        )

    def extra_repr(self) -> str:
        s = f"{self.num_experts} experts, {self.hidden_dim} -> 2x{self.intermediate_dim} -> {self.hidden_dim}"
        if self.num_global_experts != self.num_experts:
            lo, hi = self.expert_offset, self.expert_offset + self.num_experts
            s += f", experts [{lo}, {hi}) of {self.num_global_experts}"
        return s + f", act={self.activation}"


class MoEMLP(nn.Module):
    """Shared experts: down_proj(act(gate_proj(x)) * up_proj(x)), bias-free nn.Linear layers."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "silu") -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.activation = activation
        self.act_fn = _act_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------
class MoE(nn.Module):
    """DeepSeekMoE layer; see the module docstring. ``backend`` (None: pygen's choice,
    "reference", "triton", ...) applies to routing and experts; ``ep_group`` enables expert
    parallelism over that torch.distributed process group."""

    def __init__(self, config: Any = None, *, backend: str | None = None, ep_group: Any = None, **fields: Any) -> None:
        super().__init__()
        f = resolve_fields(config, **fields)
        self.config = config
        self.hidden_size = f["hidden_size"]
        self.moe_intermediate_size = f["moe_intermediate_size"]
        self.n_routed_experts = f["n_routed_experts"]
        self.num_experts_per_tok = f["num_experts_per_tok"]
        self.n_shared_experts = f["n_shared_experts"]
        self.hidden_act = f["hidden_act"]
        act = _activation(f["hidden_act"])
        self.ep_group = ep_group
        if ep_group is not None:
            from . import _moe_ep

            _moe_ep.check_group(ep_group)
            starts = _moe_ep.expert_partition(self.n_routed_experts, _moe_ep.group_size(ep_group))
            rank = _moe_ep.group_rank(ep_group)
            offset, n_local = starts[rank], starts[rank + 1] - starts[rank]
        else:
            offset, n_local = 0, self.n_routed_experts
        # registration order as in transformers (experts, gate, shared_experts): same state_dict order
        self.experts = MoEExperts(
            n_local,
            self.hidden_size,
            self.moe_intermediate_size,
            activation=act,
            backend=backend,
            expert_offset=offset,
            num_global_experts=self.n_routed_experts,
        )
        self.gate = MoEGate(
            self.hidden_size,
            self.n_routed_experts,
            self.num_experts_per_tok,
            n_group=f["n_group"],
            topk_group=f["topk_group"],
            norm_topk_prob=f["norm_topk_prob"],
            routed_scaling_factor=f["routed_scaling_factor"],
            scoring_func=f["scoring_func"],
            backend=backend,
        )
        self.shared_experts = (
            MoEMLP(self.hidden_size, self.moe_intermediate_size * self.n_shared_experts, act)
            if self.n_shared_experts > 0
            else None
        )
        self.register_buffer(
            "tokens_per_expert", torch.zeros(self.n_routed_experts, dtype=torch.int64), persistent=False
        )
        self._backend = backend
        self.reset_parameters(f["initializer_range"])

    # -- configuration ------------------------------------------------------------------------
    @property
    def backend(self) -> str | None:
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        self._backend = value
        self.gate.backend = value
        self.experts.backend = value

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Normal(0, std) weights (transformers' DeepseekV3 init), zero balancing bias. Each
        expert-parallel rank draws its own slice: seed per rank, or load a state_dict."""
        nn.init.normal_(self.gate.weight, std=std)
        self.gate.e_score_correction_bias.zero_()
        nn.init.normal_(self.experts.gate_up_proj, std=std)
        nn.init.normal_(self.experts.down_proj, std=std)
        if self.shared_experts is not None:
            for lin in (self.shared_experts.gate_proj, self.shared_experts.up_proj, self.shared_experts.down_proj):
                nn.init.normal_(lin.weight, std=std)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states must have last dimension hidden_size={self.hidden_size}, "
                f"got shape {tuple(hidden_states.shape)}"
            )
        orig_shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size)
        _, topk_weights, topk_ids = self.gate(x)
        if self.training:
            self.tokens_per_expert += expert_load(topk_ids, self.n_routed_experts)
        if self.ep_group is not None:
            from . import _moe_ep

            y = _moe_ep.ep_experts_forward(self.experts, x, topk_ids, topk_weights, self.ep_group)
        else:
            y = self.experts(x, topk_ids, topk_weights, check_ids=False)
        y = y.view(orig_shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(hidden_states)
        return y

    # -- expert parallelism helpers -----------------------------------------------------------
    def expert_parameters(self) -> list[nn.Parameter]:
        """This rank's routed-expert parameters (sharded under expert parallelism)."""
        return list(self.experts.parameters())

    def replicated_parameters(self) -> list[nn.Parameter]:
        """The gate's and shared experts' parameters (the same on every expert-parallel rank)."""
        return [p for n, p in self.named_parameters() if not n.startswith("experts.")]

    @torch.no_grad()
    def all_reduce_replicated_grads(self, group: Any = None) -> None:
        """Sum the replicated parameters' gradients over ``group`` (default: the EP group), so
        that with expert parallelism every rank holds the gradient of the sum of all ranks'
        losses, as the expert gradients already are (they collect every rank's tokens). Divide
        by the group size yourself for a mean. A missing gradient counts as zero (every rank
        must join every all_reduce); a frozen parameter (requires_grad False) is left alone, as
        it is on every rank. Do not wrap the layer in DDP over the EP group instead:
        DDP would also average the expert gradients, which differ per rank."""
        group = self.ep_group if group is None else group
        if group is None:
            return
        import torch.distributed as dist

        for p in self.replicated_parameters():
            if not p.requires_grad:  # frozen: no gradient (an optimizer's weight decay would move a zero one)
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=group)

    # -- load balancing ------------------------------------------------------------------------
    @torch.no_grad()
    def update_bias(
        self, gamma: float = 1e-3, *, load: torch.Tensor | None = None, group: Any = None, reset: bool = True
    ) -> torch.Tensor:
        """Aux-loss-free balancing step: ``bias += gamma * sign(mean(load) - load)``.

        ``load`` defaults to the ``tokens_per_expert`` counted since the last call; it is summed
        over the expert-parallel group and over ``group`` (e.g. the data-parallel group) so that
        every replica of the gate applies the same step. Zeroes the counter when ``reset``.
        Returns the global load (int64 [E]) the step was computed from."""
        load = (self.tokens_per_expert if load is None else load).to(torch.int64).clone()
        if self.ep_group is not None:
            import torch.distributed as dist

            dist.all_reduce(load, group=self.ep_group)
        if group is not None:
            import torch.distributed as dist

            dist.all_reduce(load, group=group)
        bias_update(self.gate.e_score_correction_bias, load, gamma)
        if reset:
            self.tokens_per_expert.zero_()
        return load

    def extra_repr(self) -> str:
        s = f"backend={self.backend!r}"
        if self.ep_group is not None:
            s += ", expert parallel"
        return s
