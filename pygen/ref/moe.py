"""DeepSeekMoE reference ops (pure PyTorch): routing, alignment, permutation and the expert MLP.

This module is the oracle the kernels are tested against, the ``reference`` backend of
pygen.ops.moe, and the readable statement of the math. Every function runs in any float dtype
(float64 for tests) on any device, and is differentiable where the op is.

Routing (DeepSeek-V3, Hugging Face ``DeepseekV3TopkRouter`` semantics)
--------------------------------------------------------------------
For one token with router logits x [E], E experts in G groups of E/G consecutive experts:

    s      = sigmoid(x)            (scoring="sigmoid", DeepSeek-V3)   or  softmax(x) ("softmax")
    b      = s + bias              (bias = e_score_correction_bias, zeros when None)
    gs[g]  = sum of the top-2 b in group g       (top-1 when a group has one expert)
    keep   = the topk_group groups with the largest gs
    c      = b on the experts of the kept groups, -inf on the others ("masked")
    ids    = the top_k experts by c                 (top_k may exceed the kept groups' experts:
             the rest are masked experts, all tied at -inf, so the tie rule picks them)
    w      = s[ids]                                 (unbiased, unmasked scores: masked picks too)
    w      = w / (sum(w) + 1e-20)      if norm_topk_prob  (HF adds 1e-20 to the denominator)
    w      = w * routed_scaling_factor

This is transformers 5.25's ``DeepseekV3TopkRouter`` for every config it accepts, including
top_k > topk_group * E/G (its own DeepseekV3 tests use E=8, G=2, topk_group=1, top_k=8); older
transformers releases filled masked experts with 0.0 instead of -inf.

Tie rule: among equal values the LOWER index wins (lower group index when selecting groups,
lower expert index when selecting experts, so masked picks are the lowest masked ids). ``ids``
are returned ordered by c, descending (ties by ascending expert id: masked picks come last).
torch.topk, which HF calls, documents no tie rule. On CUDA its source (gatherTopK in ATen's
TensorTopK.cu, not measured here) fills the ties at the k-th value in ascending index order, the
rule above; on CPU the outcome depends on the length and the selection algorithm
(``torch.topk(torch.zeros(8), 3)`` gives [6, 5, 4], ``torch.zeros(256)`` gives [0, 1, 2]), and so
do the masked experts HF picks when top_k exceeds the kept groups' experts but not all of them.
``tie_break="torch"`` replays HF's calls to torch.topk exactly (same tie outcome as HF on the same
device) and is what the bitwise HF comparison tests use; ``tie_break="index"`` (default) is the
deterministic rule every pygen kernel follows. Without ties both agree as sets, and HF returns its
ids unsorted (``sorted=False``).

Alignment (``moe_align``)
-------------------------
topk_ids [T, k] int, slot s = t*k + j. For block size B:
    count[e]   = number of slots routed to expert e (ids outside [0, E) are not routed anywhere)
    padded[e]  = ceil(count[e] / B) * B
    start[e]   = sum_{e' < e} padded[e']
    sorted_token_ids [T*k + E*(B-1)] int32: positions start[e] .. start[e]+count[e]-1 hold the
        slots of expert e in ascending slot order; every other position holds the sentinel T*k
    expert_ids [ceil((T*k + E*(B-1)) / B)] int32: the expert of each block of B positions, -1 for
        blocks at or past num_tokens_post_padded
    num_tokens_post_padded [1] int32 = sum_e padded[e]

Permutation (``moe_permute`` / ``moe_unpermute``)
-------------------------------------------------
    permuted[r]  = hidden[sorted_slots[r] // k],  rows grouped by expert (ascending), stable;
    expert_offsets [E+1] int32: rows of expert e are expert_offsets[e] .. expert_offsets[e+1]-1;
    sorted_slots [T*k] int32: the slot of each row; rows past expert_offsets[E] (ids outside
        [0, E) only) are zero and carry the sentinel T*k.
    unpermute: out[t] = sum_j w[t, j] * y[row of slot t*k+j]   (w = 1 when topk_weights is None)

Expert MLP (``fused_moe``)
--------------------------
hidden [T, H], w1 [E, 2I, H] (rows 0..I-1 gate, I..2I-1 up), w2 [E, H, I]:
    y[t] = sum_j w[t, j] * W2[e] @ ( act(W1g[e] @ x_t) * (W1u[e] @ x_t) ),   e = ids[t, j]
act = silu (default) or gelu (tanh approximation: "gelu_tanh", exact: "gelu").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


def _scores(router_logits: torch.Tensor, scoring: str) -> torch.Tensor:
    if scoring == "sigmoid":
        return router_logits.sigmoid()
    if scoring == "softmax":
        return router_logits.softmax(dim=-1)
    raise ValueError(f"scoring must be 'sigmoid' or 'softmax', got {scoring!r}")


def _topk_index(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest along the last dim, descending, ties to the lower index."""
    # A stable descending sort keeps equal values in ascending index order.
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


def moe_route(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "sigmoid",
    e_score_correction_bias: torch.Tensor | None = None,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
    tie_break: str = "index",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_ids int32 [T, k], topk_weights [T, k]) for router_logits [T, E] (see module docstring).

    Scores are computed in float32 (float64 for float64 logits); weights have that dtype and are
    differentiable with respect to router_logits (and not to the bias, which only selects)."""
    cdt = torch.float64 if router_logits.dtype == torch.float64 else torch.float32
    x = router_logits.to(cdt)
    t, e = x.shape
    scores = _scores(x, scoring)
    choice = scores.detach()
    if e_score_correction_bias is not None:
        choice = choice + e_score_correction_bias.detach().to(cdt)
    if tie_break == "torch":
        return _route_torch(scores, choice, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor)
    if tie_break != "index":
        raise ValueError(f"tie_break must be 'index' or 'torch', got {tie_break!r}")
    per = e // n_group
    if topk_group < n_group:  # (topk_group = 0 masks every expert, as in transformers)
        grouped = choice.view(t, n_group, per)
        top2 = torch.sort(grouped, dim=-1, descending=True).values[..., : min(2, per)]
        group_scores = top2.sum(-1)
        keep = _topk_index(group_scores, topk_group)
        gmask = torch.zeros(t, n_group, dtype=torch.bool, device=x.device).scatter_(1, keep, True)
        emask = gmask.unsqueeze(-1).expand(t, n_group, per).reshape(t, e)
        choice = choice.masked_fill(~emask, float("-inf"))
    ids = _topk_index(choice, top_k)
    w = scores.gather(1, ids)
    if norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    w = w * routed_scaling_factor
    return ids.to(torch.int32), w


def _route_torch(scores, choice, top_k, n_group, topk_group, norm, scale):
    """HF DeepseekV3TopkRouter's sequence of torch.topk calls (ties as torch.topk breaks them)."""
    t, e = choice.shape
    per = e // n_group
    group_scores = choice.view(t, n_group, per).topk(min(2, per), dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    gmask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    emask = gmask.unsqueeze(-1).expand(-1, n_group, per).reshape(-1, e)
    choice = choice.masked_fill(~emask.bool(), float("-inf"))
    ids = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
    w = scores.gather(1, ids)
    if norm:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return ids.to(torch.int32), w * scale


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """(sorted_token_ids, expert_ids, num_tokens_post_padded), see the module docstring."""
    ids = topk_ids.reshape(-1).long()
    n = ids.numel()
    e, b = num_experts, block_size
    dev = topk_ids.device
    cap = n + e * (b - 1)
    valid = (ids >= 0) & (ids < e)
    counts = torch.bincount(ids[valid], minlength=e) if n else torch.zeros(e, dtype=torch.long, device=dev)
    padded = (counts + b - 1) // b * b
    starts = torch.cumsum(padded, 0) - padded
    total = padded.sum()
    sorted_ids = torch.full((cap,), n, dtype=torch.int32, device=dev)
    slots = torch.arange(n, device=dev)
    key = torch.where(valid, ids, e)
    order = torch.sort(key, stable=True).indices[: int(valid.sum())]
    exp_sorted = ids[order]
    cstart = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=dev) - cstart[exp_sorted]
    sorted_ids[starts[exp_sorted] + rank] = slots[order].to(torch.int32)
    nblocks = (cap + b - 1) // b
    block_start = torch.arange(nblocks, device=dev) * b
    # block i belongs to the last expert whose padded segment starts at or before it
    bexp = torch.searchsorted(starts + padded, block_start, right=True)
    expert_ids = torch.where(block_start < total, bexp, -1).to(torch.int32)
    return sorted_ids, expert_ids, total.reshape(1).to(torch.int32)


def moe_permute(hidden_states: torch.Tensor, topk_ids: torch.Tensor, num_experts: int):
    """(permuted [T*k, H], sorted_slots int32 [T*k], expert_offsets int32 [E+1]); differentiable in
    hidden_states. Rows past expert_offsets[E] (only when some ids are outside [0, E)) are zero and
    carry the sentinel slot T*k."""
    t, k = topk_ids.shape
    n = t * k
    ids = topk_ids.reshape(-1).long()
    e = num_experts
    valid = (ids >= 0) & (ids < e)
    key = torch.where(valid, ids, e)
    order = torch.sort(key, stable=True).indices
    ok = valid[order]
    counts = torch.bincount(ids[valid], minlength=e) if n else ids.new_zeros(e)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).to(torch.int32)
    permuted = hidden_states[order // k] * ok.unsqueeze(-1).to(hidden_states.dtype)
    slots = torch.where(ok, order, n).to(torch.int32)
    return permuted, slots, offsets


def moe_unpermute(
    permuted: torch.Tensor, sorted_slots: torch.Tensor, topk_weights: torch.Tensor | None, num_tokens: int, top_k: int
) -> torch.Tensor:
    """out[t] = sum_j w[t, j] * permuted[row of slot t*k + j]; differentiable in permuted and
    topk_weights. Rows whose slot is outside [0, T*k) (the sentinel) contribute nothing."""
    n = num_tokens * top_k
    slots = sorted_slots.long()
    ok = (slots >= 0) & (slots < n)
    slots, y = slots[ok], permuted[ok]
    if topk_weights is not None:
        y = y * topk_weights.reshape(-1)[slots].unsqueeze(-1).to(y.dtype)
    out = y.new_zeros((num_tokens, permuted.shape[1]))
    return out.index_add(0, slots // top_k, y)


def activation(gate: torch.Tensor, kind: str = "silu") -> torch.Tensor:
    if kind == "silu":
        return F.silu(gate)
    if kind == "gelu":
        return F.gelu(gate)
    if kind == "gelu_tanh":
        return F.gelu(gate, approximate="tanh")
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")


def fused_moe(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation_kind: str = "silu",
) -> torch.Tensor:
    """The expert MLP as a loop over experts (module docstring); output in hidden_states' dtype,
    computed in hidden_states' dtype (run it in float64 for the oracle). Differentiable in
    hidden_states, w1, w2 and topk_weights."""
    t, h = hidden_states.shape
    inter = w1.shape[1] // 2
    ids = topk_ids.long()
    out = hidden_states.new_zeros((t, h))
    # unbind once: indexing w1[e] inside the loop would give every expert's backward a full-size
    # zero gradient of w1 / w2 (67-80 s per fwd+bwd at 256 experts on a 2-core CPU)
    w1s, w2s = w1.unbind(0), w2.unbind(0)
    for e in torch.unique(ids[(ids >= 0) & (ids < w1.shape[0])]).tolist():
        tok, j = torch.where(ids == e)
        x = hidden_states[tok]
        gu = x @ w1s[e].to(x.dtype).t()
        hmid = activation(gu[:, :inter], activation_kind) * gu[:, inter:]
        y = hmid @ w2s[e].to(x.dtype).t()
        y = y * topk_weights[tok, j].unsqueeze(-1).to(y.dtype)
        out = out.index_add(0, tok, y)
    return out
