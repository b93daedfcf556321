"""DeepSeekMoE ops: routing, alignment, permutation and the fused expert MLP.

    ids, w = pygen.ops.moe.moe_route(router_logits, top_k, scoring="sigmoid",
                                     e_score_correction_bias=bias, n_group=8, topk_group=4,
                                     norm_topk_prob=True, routed_scaling_factor=2.5)
    sorted_ids, expert_ids, n_post = moe_align(ids, num_experts, block_size)
    permuted, sorted_slots, offsets = moe_permute(x, ids, num_experts)
    out = moe_unpermute(y, sorted_slots, w)                   # weighted combine back to tokens
    out = fused_moe(x, w1, w2, w, ids, activation="silu")     # w1 [E, 2I, H], w2 [E, H, I]

Semantics, layouts and the tie rule are stated in pygen/ref/moe.py (the oracle) and docs/moe.md.

Backends
--------
* fused_moe: ``triton`` (kernels/moe/fused.py: on CUDA, or on CPU under TRITON_INTERPRET=1) and
  ``reference``. The automatic choice is triton on CUDA tensors, reference on CPU tensors;
  float64 always runs on the reference.
* moe_align, moe_permute, moe_unpermute: ``cuda`` and ``cpu`` (csrc/moe, one set of per-element
  bodies), ``triton`` and ``reference``. Automatic: cuda then triton on CUDA tensors, cpu then
  reference on CPU tensors (float64: cpu/reference).
* moe_route: ``triton``, ``cpu`` (csrc/moe/moe_cpu.cpp, OpenMP over tokens, float64 included) and
  ``reference``. Automatic: triton on CUDA tensors, cpu then reference on CPU tensors.

No op synchronises with the host except the optional id range check (``check_ids=True``, see
pygen/ops/_moe_checks.py); outputs have static shapes (moe_align's upper bound
T*k + E*(block_size-1)), so every op is CUDA-graph capturable with ``check_ids=False``.

Autograd: moe_route's weights are differentiable in router_logits (the ids are not), moe_permute
in hidden_states, moe_unpermute in its rows and weights, fused_moe in hidden_states, w1, w2 and
topk_weights. fused_moe's combine uses float32 atomics unless
``torch.are_deterministic_algorithms_enabled()``, in which case every slot's output row is
written once and the k rows of a token are summed in a fixed order (bitwise reproducible).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .. import _backend
from ..ref import moe as ref
from . import _moe_checks as chk, _registry
from ._registry import Backward, OpSpec, register

__all__ = ["moe_route", "moe_align", "moe_permute", "moe_unpermute", "fused_moe"]

ACTIVATIONS = ref.ACTIVATIONS
_TRITON_REF = ("triton", "reference")
_ALIGN_SUPPORTED = ("cuda", "triton", "cpu", "reference")
_ROUTE_SUPPORTED = ("triton", "cpu", "reference")
_PERMUTE_SUPPORTED = ("cuda", "triton", "cpu", "reference")


def _kernels():
    from pygen.kernels import moe  # imported lazily: triton may be missing

    return moe


def _native():
    from pygen.native import moe

    return moe


def _pick(name: str, t: torch.Tensor, backend: str | None, supported=_TRITON_REF) -> str:
    return _backend.choose_for(name, t, backend, supported, ("reference", "cpu"))


# ==============================================================================================
# moe_route
# ==============================================================================================
def _new_route(logits: torch.Tensor, top_k: int):
    t = logits.shape[0]
    wdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # (weights, ids): the float output first (opcheck's aot test sums outputs into the first one's dtype)
    return (
        torch.empty((t, top_k), dtype=wdt, device=logits.device),
        torch.empty((t, top_k), dtype=torch.int32, device=logits.device),
    )


def _route_grad(logits, ids, grad_w, scoring, norm, scale):
    """d router_logits from d topk_weights (plain PyTorch: O(T*E) elementwise work)."""
    # float32 math, float64 for float64 logits (so the float64 oracle comparisons stay exact)
    ct = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(ct)
    s = x.sigmoid() if scoring == "sigmoid" else x.softmax(-1)
    idx = ids.long()
    sel = s.gather(1, idx)
    g = grad_w.to(ct) * scale
    if norm:
        den = sel.sum(-1, keepdim=True) + 1e-20
        dsel = g / den - (g * sel).sum(-1, keepdim=True) / (den * den)
    else:
        dsel = g
    if scoring == "sigmoid":
        dx = torch.zeros_like(s).scatter_(1, idx, dsel * sel * (1 - sel))
    else:
        ds = torch.zeros_like(s).scatter_(1, idx, dsel)
        dx = s * (ds - (ds * s).sum(-1, keepdim=True))
    return dx.to(logits.dtype)


def _route_triton(K, logits, bias, top_k, scoring, n_group, topk_group, norm, scale):
    w, ids = _new_route(logits, top_k)
    if logits.shape[0] and top_k:
        K.route_fwd(logits, bias, ids, w, scoring, n_group, topk_group, norm, scale)
    return w, ids


def _route_native(N, logits, bias, top_k, scoring, n_group, topk_group, norm, scale):
    w, ids = _new_route(logits, top_k)
    if logits.shape[0] and top_k:
        # the C++ loops read unit-stride rows and a bias in the weights' dtype
        x = logits if logits.shape[1] == 1 or logits.stride(1) == 1 else logits.contiguous()
        bb = None if bias is None else bias.to(w.dtype).contiguous()
        N.route_fwd(x, bb, ids, w, scoring, n_group, topk_group, norm, scale)
    return w, ids


ROUTE = OpSpec(
    "moe_route",
    "(Tensor router_logits, Tensor? bias, int top_k, str scoring, int n_group, int topk_group, "
    "bool norm_topk_prob, float routed_scaling_factor) -> (Tensor, Tensor)",
    _route_triton,
    lambda logits, bias, top_k, *_: _new_route(logits, top_k),
    Backward(
        None,
        None,
        None,
        save=lambda i, out: ((i.router_logits, out[1]), (i.scoring, i.norm_topk_prob, i.routed_scaling_factor)),
        grads=lambda c, gw, _gids: {"router_logits": _route_grad(*c.saved, gw, *c.args)},
    ),
    non_differentiable=(1,),
)
register(ROUTE, "triton", _kernels)
register(replace(ROUTE, impl=_route_native), "cpu", _native)


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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing of router_logits [T, E] -> (topk_ids int32 [T, top_k], topk_weights
    float32 [T, top_k]; float64 for float64 logits). ids are ordered by biased score, descending,
    ties to the lower expert id (pygen/ref/moe.py). As in transformers, top_k may exceed the
    experts of the topk_group kept groups: the lowest ids of the other (masked) groups fill in.
    Weights are float64 for float64 logits (cpu and reference backends)."""
    top_k, n_group, topk_group, scale = chk.route(
        router_logits,
        top_k,
        scoring,
        e_score_correction_bias,
        n_group,
        topk_group,
        norm_topk_prob,
        routed_scaling_factor,
    )
    b = _pick("moe_route", router_logits, backend, _ROUTE_SUPPORTED)
    if b == "reference":
        return ref.moe_route(
            router_logits,
            top_k,
            scoring=scoring,
            e_score_correction_bias=e_score_correction_bias,
            n_group=n_group,
            topk_group=topk_group,
            norm_topk_prob=norm_topk_prob,
            routed_scaling_factor=scale,
        )
    w, ids = _registry.get(f"moe_route_{b}")(
        router_logits, e_score_correction_bias, top_k, scoring, n_group, topk_group, norm_topk_prob, scale
    )
    return ids, w


# ==============================================================================================
# moe_align
# ==============================================================================================
def align_sizes(num_slots: int, num_experts: int, block_size: int) -> tuple[int, int]:
    """(len(sorted_token_ids), len(expert_ids)): the static upper bounds."""
    cap = num_slots + num_experts * (block_size - 1)
    return cap, -(-cap // block_size)


def _new_align(ids: torch.Tensor, num_experts: int, block_size: int):
    cap, nblk = align_sizes(ids.numel(), num_experts, block_size)
    dev = ids.device
    return (
        torch.empty((cap,), dtype=torch.int32, device=dev),
        torch.empty((nblk,), dtype=torch.int32, device=dev),
        torch.empty((1,), dtype=torch.int32, device=dev),
        torch.empty((num_experts + 1,), dtype=torch.int32, device=dev),
    )


def _align(L, ids, num_experts, block_size):
    out = _new_align(ids, num_experts, block_size)
    flat = ids.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    ws = torch.zeros((L.align_workspace_size(flat.numel(), num_experts),), dtype=torch.int32, device=ids.device)
    L.align_fwd(flat, num_experts, block_size, *out, ws)
    return out


ALIGN = OpSpec(
    "moe_align",
    "(Tensor topk_ids, int num_experts, int block_size) -> (Tensor, Tensor, Tensor, Tensor)",
    _align,
    lambda ids, e, bs: _new_align(ids, e, bs),
)


def _align4(topk_ids, num_experts, block_size, backend):
    """moe_align plus the padded segment starts [E+1] (start of expert e; [E] = the total)."""
    b = _backend.choose("moe_align", topk_ids.device, torch.float32, backend, _ALIGN_SUPPORTED)
    if b == "reference":
        s, e_ids, n = ref.moe_align(topk_ids, num_experts, block_size)
        starts = _ref_starts(topk_ids, num_experts, block_size)
        return s, e_ids, n, starts
    return _registry.get(f"moe_align_{b}")(topk_ids, num_experts, block_size)


def _ref_starts(topk_ids, num_experts, block_size):
    ids = topk_ids.reshape(-1).long()
    valid = ids[(ids >= 0) & (ids < num_experts)]
    counts = torch.bincount(valid, minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    return torch.cat([padded.new_zeros(1), torch.cumsum(padded, 0)]).to(torch.int32)


def moe_align(
    topk_ids: torch.Tensor, num_experts: int, block_size: int, backend: str | None = None, *, check_ids: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort token-slots by expert and pad each expert's segment to ``block_size`` ->
    (sorted_token_ids int32 [T*k + E*(block_size-1)], expert_ids int32 [ceil(that / block_size)],
    num_tokens_post_padded int32 [1]). Slot s = t*k + j; padding holds the sentinel T*k; unused
    trailing blocks have expert -1. Within an expert, slots are in ascending order."""
    e, bs = chk.align(topk_ids, num_experts, block_size)
    chk.ids_in_range("moe_align", topk_ids, e, check_ids)
    s, e_ids, n, _ = _align4(topk_ids, e, bs, backend)
    return s, e_ids, n


# ==============================================================================================
# moe_permute / moe_unpermute
# ==============================================================================================
def _inverse(sorted_slots: torch.Tensor, n: int) -> torch.Tensor:
    """row_of_slot [n] int32 (-1 for a slot in no row), device-only."""
    inv = torch.full((n + 1,), -1, dtype=torch.int32, device=sorted_slots.device)
    rows = torch.arange(sorted_slots.numel(), dtype=torch.int32, device=sorted_slots.device)
    slots = sorted_slots.long()
    inv.scatter_(0, torch.where((slots >= 0) & (slots < n), slots, n), rows)  # foreign values: dropped
    return inv[:n]


def _new_perm(x, ids, num_experts):
    n = ids.numel()
    return (
        x.new_empty((n, x.shape[1])),
        torch.empty((n,), dtype=torch.int32, device=x.device),
        torch.empty((num_experts + 1,), dtype=torch.int32, device=x.device),
    )


def _permute(L, x, ids, num_experts):
    # block_size 1 pads nothing: the sorted ids are the T*k slots and the starts the offsets
    slots, _, _, offsets = _align(L, ids, num_experts, 1)
    out = x.new_empty((ids.numel(), x.shape[1]))
    if out.numel():
        L.permute_fwd(x, slots, ids.shape[1], out)
    return out, slots, offsets


def _new_unperm(y, slots, w, num_tokens, top_k):
    return y.new_empty((num_tokens, y.shape[1]))


def _unpermute(L, y, slots, w, num_tokens, top_k):
    out = _new_unperm(y, slots, w, num_tokens, top_k)
    if out.numel() and top_k == 0:  # no slot: every token's sum is empty (the kernels take k >= 1)
        return out.zero_()
    if out.numel():
        L.unpermute_fwd(y, _inverse(slots, num_tokens * top_k), w, top_k, out)
    return out


def _new_unperm_bwd(g, y, slots, w, need_y, need_w):
    return (
        y.new_empty(y.shape if need_y else (0,)),
        (w.new_empty(w.shape) if (need_w and w is not None) else g.new_empty((0,))),
    )


def _unpermute_bwd(L, g, y, slots, w, need_y, need_w):
    dy, dw = _new_unperm_bwd(g, y, slots, w, need_y, need_w)
    n = slots.numel()
    if n:
        k = n // g.shape[0] if g.shape[0] else 1
        L.unpermute_bwd(g.contiguous(), y, slots, w, k, dy if need_y else None, dw if dw.numel() else None)
    elif dw.numel():
        dw.zero_()
    return dy, dw


def _unpermute_grads(c, g):
    y, slots, w = c.saved
    need_y, need_w = c.needs.permuted, w is not None and c.needs.topk_weights
    dy, dw = c.bwd(g, y, slots, w, need_y, need_w)
    return {"permuted": dy if need_y else None, "topk_weights": dw if need_w else None}


PERMUTE = OpSpec(
    "moe_permute",
    "(Tensor hidden_states, Tensor topk_ids, int num_experts) -> (Tensor, Tensor, Tensor)",
    _permute,
    _new_perm,
    Backward(
        None,
        None,
        None,
        save=lambda i, out: ((out[1],), tuple(i.topk_ids.shape)),
        # the gradient of a gather by slot is the unweighted combine of the rows back to tokens
        grads=lambda c, g, _gs, _go: {
            "hidden_states": _registry.get(f"moe_unpermute_{c.backend}")(g.contiguous(), c.saved[0], None, *c.args)
        },
    ),
    non_differentiable=(1, 2),
)
UNPERMUTE = OpSpec(
    "moe_unpermute",
    "(Tensor permuted, Tensor sorted_slots, Tensor? topk_weights, SymInt num_tokens, int top_k) -> Tensor",
    _unpermute,
    _new_unperm,
    Backward(
        "(Tensor grad, Tensor permuted, Tensor sorted_slots, Tensor? topk_weights, bool need_permuted, "
        "bool need_weights) -> (Tensor, Tensor)",
        _unpermute_bwd,
        _new_unperm_bwd,
        save=lambda i, out: ((i.permuted, i.sorted_slots, i.topk_weights), ()),
        grads=_unpermute_grads,
    ),
)

for _b, _launchers in (("triton", _kernels), ("cpu", _native), ("cuda", _native)):
    for _spec in (ALIGN, PERMUTE, UNPERMUTE):
        register(_spec, _b, _launchers)


def moe_permute(
    hidden_states: torch.Tensor,
    topk_ids: torch.Tensor,
    num_experts: int,
    backend: str | None = None,
    *,
    check_ids: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group token rows by expert -> (permuted [T*k, H], sorted_slots int32 [T*k],
    expert_offsets int32 [E+1]). Row r is hidden_states[sorted_slots[r] // k]; the rows of expert
    e are expert_offsets[e] .. expert_offsets[e+1]-1, in ascending slot order. Rows past
    expert_offsets[E] exist only for ids outside [0, E): zero, slot T*k."""
    name = "moe_permute"
    chk.tensor(name, hidden_states, "hidden_states", dim=2, dtypes=chk.FLOAT_DTYPES)
    chk.topk_ids(name, topk_ids, tokens=hidden_states.shape[0])
    chk.same_device(name, "topk_ids", topk_ids, "hidden_states", hidden_states)
    e = chk.integer(name, num_experts, "num_experts", 1, chk.MAX_EXPERTS)
    chk.ids_in_range(name, topk_ids, e, check_ids)
    b = _pick(name, hidden_states, backend, _PERMUTE_SUPPORTED)
    if b == "reference":
        return ref.moe_permute(hidden_states, topk_ids, e)
    x = hidden_states if hidden_states.shape[1] <= 1 or hidden_states.stride(-1) == 1 else hidden_states.contiguous()
    return _registry.get(f"moe_permute_{b}")(x, topk_ids.contiguous(), e)


def moe_unpermute(
    permuted: torch.Tensor,
    sorted_slots: torch.Tensor,
    topk_weights: torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Weighted combine of permuted rows back to tokens -> [T, H]:
    out[t] = sum_j topk_weights[t, j] * permuted[row of slot t*k + j] (weights 1 when None; then
    ``top_k`` gives k). Rows with the sentinel slot (>= T*k) are ignored. The sum over j runs in
    ascending j (deterministic)."""
    name = "moe_unpermute"
    chk.tensor(name, permuted, "permuted", dim=2, dtypes=chk.FLOAT_DTYPES)
    chk.tensor(name, sorted_slots, "sorted_slots", dim=1, dtypes=(torch.int32,))
    n = permuted.shape[0]
    if sorted_slots.shape[0] != n:
        raise ValueError(
            f"{name}: sorted_slots must have one entry per permuted row ({n}), got {tuple(sorted_slots.shape)}"
        )
    chk.same_device(name, "sorted_slots", sorted_slots, "permuted", permuted)
    if topk_weights is not None:
        chk.tensor(name, topk_weights, "topk_weights", dim=2, dtypes=chk.FLOAT_DTYPES)
        chk.same_device(name, "topk_weights", topk_weights, "permuted", permuted)
        t, k = topk_weights.shape
        if top_k is not None and top_k != k:
            raise ValueError(f"{name}: top_k={top_k} disagrees with topk_weights' shape {tuple(topk_weights.shape)}")
        if t * k != n:
            raise ValueError(
                f"{name}: topk_weights {tuple(topk_weights.shape)} must hold one weight per permuted row ({n})"
            )
    else:
        if top_k is None:
            raise ValueError(f"{name}: pass topk_weights or top_k")
        k = chk.integer(name, top_k, "top_k", 1)
        if n % k:
            raise ValueError(f"{name}: {n} permuted rows are not a multiple of top_k={k}")
        t = n // k
    b = _pick(name, permuted, backend, _PERMUTE_SUPPORTED)
    if b == "reference":
        return ref.moe_unpermute(permuted, sorted_slots, topk_weights, t, k)
    y = permuted if permuted.shape[1] <= 1 or permuted.stride(-1) == 1 else permuted.contiguous()
    w = None if topk_weights is None else topk_weights.contiguous()
    return _registry.get(f"moe_unpermute_{b}")(y, sorted_slots.contiguous(), w, t, k)


# ==============================================================================================
# fused_moe
# ==============================================================================================
def _new_fused(x, w1, ids, save):
    t, h = x.shape
    n = ids.numel()
    inter = w1.shape[1] // 2
    # hmid (the down projection's input) is always written; gu only when a backward will need it
    return x.new_empty((t, h)), x.new_empty((n, 2 * inter) if save else (0,)), x.new_empty((n, inter))


def _new_fused_bwd(x, w1, w2, w, nx, nw1, nw2, nw):
    return (
        x.new_empty(x.shape if nx else (0,)),
        w1.new_empty(w1.shape if nw1 else (0,)),
        w2.new_empty(w2.shape if nw2 else (0,)),
        w.new_empty(w.shape if nw else (0,)),
    )


def _fused(K, x, w1, w2, w, ids, act, deterministic, save):
    out, gu, hmid = _new_fused(x, w1, ids, save)
    t, h = x.shape
    if t == 0 or h == 0:
        return out, gu, hmid
    cfg = K.fused_config("fwd", ids.numel(), w1.shape[0], h, w1.shape[1] // 2, x.dtype)
    al = _registry.get("moe_align_triton")(ids, w1.shape[0], cfg.block_m)
    K.fused_moe_fwd(x, w1, w2, w, ids, al, out, gu if save else None, hmid, act, deterministic, cfg)
    return out, gu, hmid


def _fused_bwd(K, g, x, w1, w2, w, ids, gu, hmid, act, deterministic, nx, nw1, nw2, nw):
    dx, dw1, dw2, dw = _new_fused_bwd(x, w1, w2, w, nx, nw1, nw2, nw)
    t, h = x.shape
    cfg = K.fused_config("bwd", ids.numel(), w1.shape[0], h, w1.shape[1] // 2, x.dtype)
    al = _registry.get("moe_align_triton")(ids, w1.shape[0], cfg.block_m)
    K.fused_moe_bwd(
        g.contiguous(),
        x,
        w1,
        w2,
        w,
        ids,
        al,
        gu,
        hmid,
        dx if nx else None,
        dw1 if nw1 else None,
        dw2 if nw2 else None,
        dw if nw else None,
        act,
        deterministic,
        cfg,
    )
    return dx, dw1, dw2, dw


def _fused_grads(c, g, _ggu, _gh):
    names = ("hidden_states", "w1", "w2", "topk_weights")
    need = [getattr(c.needs, n) for n in names]
    grads = c.bwd(g, *c.saved, *c.args, *need)
    return {n: gr if nd else None for n, gr, nd in zip(names, grads, need)}


FUSED = OpSpec(
    "fused_moe",
    "(Tensor hidden_states, Tensor w1, Tensor w2, Tensor topk_weights, Tensor topk_ids, str activation, "
    "bool deterministic, bool save) -> (Tensor, Tensor, Tensor)",
    _fused,
    lambda x, w1, w2, w, ids, act, det, save: _new_fused(x, w1, ids, save),
    Backward(
        "(Tensor grad, Tensor hidden_states, Tensor w1, Tensor w2, Tensor topk_weights, Tensor topk_ids, "
        "Tensor gate_up, Tensor hidden_mid, str activation, bool deterministic, bool need_x, bool need_w1, "
        "bool need_w2, bool need_weights) -> (Tensor, Tensor, Tensor, Tensor)",
        _fused_bwd,
        lambda g, x, w1, w2, w, ids, gu, hm, act, det, nx, nw1, nw2, nw: _new_fused_bwd(x, w1, w2, w, nx, nw1, nw2, nw),
        save=lambda i, out: (
            (i.hidden_states, i.w1, i.w2, i.topk_weights, i.topk_ids, out[1], out[2]),
            (i.activation, i.deterministic),
        ),
        grads=_fused_grads,
    ),
    non_differentiable=(1, 2),
)
register(FUSED, "triton", _kernels)


def fused_moe(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
    backend: str | None = None,
    *,
    check_ids: bool = True,
) -> torch.Tensor:
    """Routed expert MLP -> [T, H] in hidden_states' dtype:
    out[t] = sum_j w[t, j] * w2[e] @ (act(w1[e, :I] @ x_t) * (w1[e, I:] @ x_t)), e = topk_ids[t, j].
    hidden_states [T, H]; w1 [E, 2I, H] (gate rows, then up rows); w2 [E, H, I]; topk_weights
    [T, k] (any float dtype; float32 from moe_route); topk_ids [T, k] int32/int64."""
    e, _inter = chk.fused(hidden_states, w1, w2, topk_weights, topk_ids, activation, ACTIVATIONS)
    chk.ids_in_range("fused_moe", topk_ids, e, check_ids)
    b = _pick("fused_moe", hidden_states, backend)
    if b == "reference":
        return ref.fused_moe(hidden_states, w1, w2, topk_weights, topk_ids, activation)
    x = hidden_states if hidden_states.is_contiguous() else hidden_states.contiguous()
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (hidden_states, w1, w2, topk_weights))
    det = torch.are_deterministic_algorithms_enabled()
    out, _gu, _h = _registry.get("fused_moe_triton")(
        x, w1.contiguous(), w2.contiguous(), topk_weights.contiguous(), topk_ids.contiguous(), activation, det, save
    )
    return out
