"""Expert parallelism of pygen.nn.MoE: 2 and 4 gloo processes on CPU must give the single-process
layer's output, input gradient, expert gradients (each rank's slice) and, after
MoE.all_reduce_replicated_grads (a sum over ranks), the replicated gate / shared-expert
gradients; the balancing counters summed over ranks must equal the single-process ones.

Scenarios (one spawn per world size, tiny float64 layers):
    grouped   E=8, top-3 of 4 groups / 2 kept; uneven token counts, one rank with no tokens
    uneven    E=10 (experts split 3/3/2/2 over 4 ranks), 2 groups / 1 kept, no shared experts
    skewed    a large correction bias sends every token to rank 0's experts: the other ranks
              receive nothing (their empty exchanges must still run forward and backward)

The dispatch bookkeeping is also fuzzed (hypothesis) in one process: W virtual ranks whose
exchanges are emulated by slicing must give the single-process expert output.
"""

from __future__ import annotations

import pytest
import torch
from helpers import GROUPED_ROUTING, moe_routing, run_gloo_ranks
from hypothesis import given, settings, strategies as st

from pygen.nn._moe_ep import dispatch_plan, expert_partition, local_experts

SCENARIOS = {
    "grouped": dict(
        fields=dict(
            hidden_size=12, moe_intermediate_size=6, **GROUPED_ROUTING, n_shared_experts=1, routed_scaling_factor=2.5
        ),
        tokens=[5, 0, 8, 2],
    ),
    "uneven": dict(
        fields=dict(
            hidden_size=10,
            moe_intermediate_size=4,
            **moe_routing(experts=10, top_k=3, n_group=2, topk_group=1),
            n_shared_experts=0,
            norm_topk_prob=False,
        ),
        tokens=[3, 6, 1, 4],
    ),
    "skewed": dict(
        fields=dict(
            hidden_size=8, moe_intermediate_size=4, n_routed_experts=10, num_experts_per_tok=2, n_shared_experts=1
        ),
        tokens=[4, 3, 0, 5],
        bias_rank0=10.0,
    ),
}


def _token_split(tokens: list[int], world: int) -> list[int]:
    # world 2: fold the 4-rank split into two uneven halves, keeping a zero-token rank
    return tokens if world == 4 else [sum(tokens), 0]


def _run_scenario(name: str, rank: int, world: int, group) -> list[str]:
    from pygen.nn.moe import MoE

    sc = SCENARIOS[name]
    fields = sc["fields"]
    torch.manual_seed(1234)
    full = MoE(**fields).double()  # automatic backends, like the EP layer
    if "bias_rank0" in sc:
        n0 = expert_partition(fields["n_routed_experts"], world)[1]
        full.gate.e_score_correction_bias[:n0] = sc["bias_rank0"]
    ep = MoE(**fields, ep_group=group).double()  # (csrc routing on CPU tensors)
    ep.load_state_dict(full.state_dict())  # full tensors: each rank keeps its slice
    sizes = _token_split(sc["tokens"], world)
    total = sum(sizes)
    g = torch.Generator().manual_seed(99)
    x_all = torch.randn(total, fields["hidden_size"], generator=g, dtype=torch.float64)
    gout = torch.randn(total, fields["hidden_size"], generator=g, dtype=torch.float64)
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]

    x_loc = x_all[lo:hi].clone().requires_grad_()
    out = ep(x_loc)
    (out * gout[lo:hi]).sum().backward()

    xr = x_all.clone().requires_grad_()
    out_r = full(xr)
    (out_r * gout).sum().backward()

    errs = []

    def check(what, a, b, tol=1e-10):
        a = torch.zeros_like(b) if a is None else a
        if a.shape != b.shape or not torch.allclose(a, b, atol=tol, rtol=tol):
            err = (a - b).abs().max().item() if a.shape == b.shape else "shape"
            errs.append(f"[{name} rank {rank}/{world}] {what}: max err {err}")

    check("output", out, out_r[lo:hi])
    check("d x", x_loc.grad, xr.grad[lo:hi])
    e_lo, e_hi = ep.experts.expert_offset, ep.experts.expert_offset + ep.experts.num_experts
    check("d gate_up_proj", ep.experts.gate_up_proj.grad, full.experts.gate_up_proj.grad[e_lo:e_hi])
    check("d down_proj", ep.experts.down_proj.grad, full.experts.down_proj.grad[e_lo:e_hi])
    ep.all_reduce_replicated_grads()  # gate and shared experts: sum over ranks
    full_params = dict(full.named_parameters())
    names = [n for n, _ in ep.named_parameters() if not n.startswith("experts.")]
    assert [p for n, p in ep.named_parameters() if n in names] == ep.replicated_parameters()
    for n in names:
        check(f"d {n} (summed over ranks)", dict(ep.named_parameters())[n].grad, full_params[n].grad)
    # balancing: global counts and the same bias step on every rank
    load = ep.update_bias(0.01)
    full_load = full.update_bias(0.01)
    check("load", load.double(), full_load.double(), 0)
    check("bias after update", ep.gate.e_score_correction_bias, full.gate.e_score_correction_bias, 0)
    if "bias_rank0" in sc and rank > 0:
        n_mine = int(
            (
                (e_lo <= torch.arange(fields["n_routed_experts"])) & (torch.arange(fields["n_routed_experts"]) < e_hi)
            ).double()
            @ load.double()
        )
        if n_mine:
            errs.append(f"[{name} rank {rank}] expected no routed slots on this rank, got {n_mine}")
    return errs


def _run_all(rank: int, world: int, group) -> list[str]:
    return [e for name in SCENARIOS for e in _run_scenario(name, rank, world, group)]


@pytest.mark.parametrize("world", [2, 4])
def test_ep_matches_single_process(world):
    run_gloo_ranks(_run_all, world, ["pygen.nn.moe", "pygen.nn._moe_ep"])


def _run_frozen_router(rank: int, world: int, group) -> list[str]:
    """Only the experts train (gate frozen, x from frozen embeddings) and every token goes to rank
    0's experts: rank 1's empty expert pass must still need a gradient (its backward skipped the
    combine exchange, and rank 0 waited for it); the frozen gate gets no gradient from
    all_reduce_replicated_grads (a zero one moved it under AdamW's weight decay)."""
    import torch.distributed as dist

    from pygen.nn.moe import MoE

    fields = dict(hidden_size=8, moe_intermediate_size=4, n_routed_experts=4, num_experts_per_tok=2)
    torch.manual_seed(7)
    full = MoE(**fields).double()
    full.gate.e_score_correction_bias[:2] = 10.0  # experts 0 and 1: rank 0's
    full.gate.weight.requires_grad_(False)
    ep = MoE(**fields, ep_group=group).double()
    ep.load_state_dict(full.state_dict())
    ep.gate.weight.requires_grad_(False)
    x_all = torch.randn(6, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_loc = x_all[:4] if rank == 0 else x_all[4:]
    ep(x_loc).sum().backward()
    ep.all_reduce_replicated_grads()
    full(x_all).sum().backward()
    errs = []
    e_lo, e_hi = ep.experts.expert_offset, ep.experts.expert_offset + ep.experts.num_experts
    if not torch.allclose(ep.experts.gate_up_proj.grad, full.experts.gate_up_proj.grad[e_lo:e_hi], atol=1e-10):
        errs.append(f"rank {rank}: d gate_up_proj differs")
    if ep.gate.weight.grad is not None:
        errs.append(f"rank {rank}: the frozen gate got a gradient")
    sub = dist.new_group([0])
    for bad, kind in ((sub if rank == 1 else None, ValueError), (True, TypeError)):
        if bad is None:
            continue
        try:
            MoE(**fields, ep_group=bad)
            errs.append(f"rank {rank}: ep_group={bad!r} accepted")
        except kind as e:
            if "ep_group" not in str(e):
                errs.append(f"rank {rank}: {e}")
    return errs


def test_ep_frozen_router_and_bad_groups():
    run_gloo_ranks(_run_frozen_router, 2, ["pygen.nn.moe", "pygen.nn._moe_ep"], timeout_s=30)


def test_expert_partition():
    assert expert_partition(10, 4) == [0, 3, 6, 8, 10]
    assert expert_partition(8, 2) == [0, 4, 8]
    assert expert_partition(5, 5) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="at least one expert per rank"):
        expert_partition(3, 4)
    with pytest.raises(ValueError, match="world_size"):
        expert_partition(3, 0)


# ---- one-process fuzzing of the dispatch / local compute / combine bookkeeping ---------------------
@st.composite
def _ep_problem(draw):
    world = draw(st.integers(1, 5))
    experts = draw(st.integers(world, 12))
    k = draw(st.integers(1, min(4, experts)))
    sizes = draw(st.lists(st.integers(0, 6), min_size=world, max_size=world))
    seed = draw(st.integers(0, 2**16))
    return world, experts, k, sizes, seed


@settings(max_examples=40, deadline=None)
@given(_ep_problem())
def test_dispatch_plan_and_emulated_exchange(problem):
    from pygen.nn.moe import MoEExperts

    world, n_exp, k, sizes, seed = problem
    h, inter = 6, 3
    g = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    ids = (
        torch.stack([torch.randperm(n_exp, generator=g)[:k] for _ in range(total)]).to(torch.int32)
        if total
        else torch.zeros(0, k, dtype=torch.int32)
    )
    w = torch.rand(total, k, generator=g, dtype=torch.float64)
    x = torch.randn(total, h, generator=g, dtype=torch.float64)
    full = MoEExperts(n_exp, h, inter, backend="reference").double()
    with torch.no_grad():
        full.gate_up_proj.normal_(generator=g)
        full.down_proj.normal_(generator=g)
    starts = expert_partition(n_exp, world)
    shards = []
    for d in range(world):
        e = MoEExperts(
            starts[d + 1] - starts[d], h, inter, backend="reference", expert_offset=starts[d], num_global_experts=n_exp
        ).double()
        e.load_state_dict(full.state_dict())  # keeps rows starts[d]:starts[d+1]
        shards.append(e)

    offs = [sum(sizes[:r]) for r in range(world + 1)]
    plans = [dispatch_plan(ids[offs[r] : offs[r + 1]], w[offs[r] : offs[r + 1]], starts) for r in range(world)]
    for r, (tok, counts, route) in enumerate(plans):
        ids_r, w_r = ids[offs[r] : offs[r + 1]].long(), w[offs[r] : offs[r + 1]]
        owner = torch.bucketize(ids_r, torch.tensor(starts[1:]), right=True)
        assert int(counts.sum()) == tok.numel() == route.shape[0]
        dst = torch.repeat_interleave(torch.arange(world), counts)
        # once per (token, destination owning one of its experts), ordered by destination
        want = {(t, d) for t in range(ids_r.shape[0]) for d in owner[t].tolist()}
        assert sorted(zip(tok.tolist(), dst.tolist())) == sorted(want) and len(want) == tok.numel()
        # every (token, slot) is valid in exactly one row, with its weight and local id
        seen = torch.zeros_like(w_r)
        for row in range(tok.numel()):
            t, d = int(tok[row]), int(dst[row])
            for j in range(k):
                lid, wt = route[row, k + j].item(), route[row, j].item()
                if owner[t, j] == d:
                    assert lid == ids_r[t, j] - starts[d] and wt == w_r[t, j]
                    seen[t, j] += 1
                else:
                    assert lid == -1 and wt == 0
        assert bool((seen == 1).all())

    # emulated all_to_all: rank d receives, from every r in order, r's rows for d
    def pieces(tensor, counts):
        return list(torch.split(tensor, counts.tolist()))

    sent_x = [pieces(x[offs[r] : offs[r + 1]][p[0]], p[1]) for r, p in enumerate(plans)]
    sent_route = [pieces(p[2], p[1]) for p in plans]
    y_recv = []
    for d in range(world):
        xr = torch.cat([sent_x[r][d] for r in range(world)])
        rr = torch.cat([sent_route[r][d] for r in range(world)])
        y_recv.append(local_experts(shards[d], xr, rr))
    out = []
    for r, (tok, _counts, _) in enumerate(plans):
        back = []
        for d in range(world):
            recv_sizes = [int(plans[q][1][d]) for q in range(world)]
            back.append(torch.split(y_recv[d], recv_sizes)[r])
        y_back = torch.cat(back)
        out.append(torch.zeros(sizes[r], h, dtype=torch.float64).index_add(0, tok, y_back))
    out = torch.cat(out)
    expected = full(x, ids, w)
    assert torch.allclose(out, expected, atol=1e-12, rtol=1e-12)
