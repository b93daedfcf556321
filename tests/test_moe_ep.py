"""Expert parallelism of pygen.nn.MoE: 2 and 4 gloo processes on CPU must give the single-process
layer's output, input gradient, expert gradients (each rank's slice) and, after
MoE.all_reduce_replicated_grads (a sum over ranks), the replicated gate / shared-expert gradients; the balancing counters summed over
ranks must equal the single-process ones.

Scenarios (one spawn per world size, tiny float64 layers):
    grouped   E=8, top-3 of 4 groups / 2 kept; uneven token counts, one rank with no tokens
    uneven    E=10 (experts split 3/3/2/2 over 4 ranks), 2 groups / 1 kept, no shared experts
    skewed    a large correction bias sends every token to rank 0's experts: the other ranks
              receive nothing (their empty exchanges must still run forward and backward)
"""
from __future__ import annotations

import datetime
import os
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pygen.nn._moe_ep import expert_partition

SCENARIOS = {
    "grouped": dict(fields=dict(hidden_size=12, moe_intermediate_size=6, n_routed_experts=8,
                                num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1,
                                routed_scaling_factor=2.5), tokens=[5, 0, 8, 2]),
    "uneven": dict(fields=dict(hidden_size=10, moe_intermediate_size=4, n_routed_experts=10,
                               num_experts_per_tok=3, n_group=2, topk_group=1, n_shared_experts=0,
                               norm_topk_prob=False), tokens=[3, 6, 1, 4]),
    "skewed": dict(fields=dict(hidden_size=8, moe_intermediate_size=4, n_routed_experts=10,
                               num_experts_per_tok=2, n_shared_experts=1), tokens=[4, 3, 0, 5],
                   bias_rank0=10.0),
}


def _token_split(tokens: list[int], world: int) -> list[int]:
    # world 2: fold the 4-rank split into two uneven halves, keeping a zero-token rank
    return tokens if world == 4 else [sum(tokens), 0]


def _run_scenario(name: str, rank: int, world: int, group) -> list[str]:
    from pygen.nn.moe import MoE
    sc = SCENARIOS[name]
    fields = sc["fields"]
    torch.manual_seed(1234)
    full = MoE(**fields, backend="reference").double()
    if "bias_rank0" in sc:
        n0 = expert_partition(fields["n_routed_experts"], world)[1]
        full.gate.e_score_correction_bias[:n0] = sc["bias_rank0"]
    ep = MoE(**fields, backend="reference", ep_group=group).double()
    ep.load_state_dict(full.state_dict())             # full tensors: each rank keeps its slice
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
    ep.all_reduce_replicated_grads()                 # gate and shared experts: sum over ranks
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
        n_mine = int(((e_lo <= torch.arange(fields["n_routed_experts"])) &
                      (torch.arange(fields["n_routed_experts"]) < e_hi)).double() @ load.double())
        if n_mine:
            errs.append(f"[{name} rank {rank}] expected no routed slots on this rank, got {n_mine}")
    return errs


def _worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    errs: list[str] = []
    try:
        for name in SCENARIOS:
            try:
                errs += _run_scenario(name, rank, world, dist.group.WORLD)
            except Exception:
                # a rank that dies mid-collective would leave its peers waiting: report instead
                errs.append(f"[{name} rank {rank}] raised:\n{traceback.format_exc()}")
                raise
    finally:
        if errs:
            raise AssertionError("\n".join(errs))
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_ep_matches_single_process(world):
    # forkserver: torch and pygen are imported once in the server, each rank is a cheap fork of
    # it (spawn re-imported them per rank: 17 s instead of 5 s for 4 ranks on 2 loaded cores),
    # and unlike a plain fork no rank inherits OpenMP state from the pytest process.
    mp.set_forkserver_preload(["torch", "torch.distributed", "pygen.nn.moe", "pygen.nn._moe_ep"])
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(world, os.path.join(d, "rendezvous")), nprocs=world,
                           join=True, start_method="forkserver")


def test_expert_partition():
    assert expert_partition(10, 4) == [0, 3, 6, 8, 10]
    assert expert_partition(8, 2) == [0, 4, 8]
    assert expert_partition(5, 5) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="at least one expert per rank"):
        expert_partition(3, 4)
    with pytest.raises(ValueError, match="world_size"):
        expert_partition(3, 0)
