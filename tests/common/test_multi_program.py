"""Kernels whose other tests launch a single program, at the smallest sizes that give each launch
several programs (issue 11): with one program, program order (TRITONSAN_ORDER=reverse/shuffle
under ../shared/tools/tritonsan) and the cross-program race shadow check nothing. Each test
compares the op (Triton backend) with the float64 reference (pygen/ref), forward and backward where
the op has one, and asserts from the recorded grids that every launch of the kernels in question
really had >= 3 programs.

Sizes come from the launchers' grid rules (kernels/<family>/__init__.py); interpreter numbers (a GPU's tiles are the
same or smaller, so its grids are at least as large):
  actnorm             [2, 3, 4097]: rows 6, BLOCK_S 4096, BLOCK_R 4 -> fwd/bwd (2, 2);
                      [2, 129, 65]: BLOCK_S 128, BLOCK_R 128 -> (3, 1); finish cdiv(129, 64) = 3
  affine / additive   [5, 3, 2731] (N 8193): BLOCK_N 8192, BLOCK_B 2 -> affine fwd (1, 3) (n_split 1 on CPU),
  coupling            affine bwd and additive fwd (2, 3)
  slogdet             [513, 7, 7]: BD 8, MB 256 (fwd) / 128 (bwd) -> 3 / 5 programs
  made_sample         batch 2 * BLOCK_B + 1 (BLOCK_B from the launcher's block_sizes) -> 3
  (persistent)
  moe_route           T 129, BLOCK_T 64 -> 3
  moe_align           E 2500 experts (EXP_BLOCK 1024 -> offsets 3 programs), 2100 slots
                      (SLOT_BLOCK 1024 -> count / scatter 3), 2475 GEMM blocks (blocks kernel 3)
  moe_unpermute       T 33, H 260: BLOCK_T 16, BLOCK_H 256 -> fwd (3, 2); bwd cdiv(99, 16) = 7
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import pytest
import torch
from helpers import ATOL, assert_close_to_ref, backend_params, route_kwargs

from pygen import ops
from pygen.ref import flows as ref_flows, made as ref_made, moe as ref_moe

TRITON = [p for p in backend_params() if p.values[1] == "triton"]
F64 = torch.float64
MIN_PROGRAMS = 3


# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- launch recording ------------------------------------------------------------------------------
def _programs(grid, kwargs) -> int:
    if callable(grid):
        grid = grid(kwargs)
    return math.prod(int(g) for g in tuple(grid)) if len(tuple(grid)) else 1


@contextlib.contextmanager
def record_launches(*kernels):
    """Yields {kernel name: [programs of each launch]} for the given @triton.jit kernels.
    ``kernel[grid](...)`` calls ``kernel.run(..., grid=grid, ...)`` (triton's KernelInterface, the
    interpreter's InterpretedFunction and the GPU's JITFunction alike), so an instance attribute
    ``run`` sees every launch; it is removed again on exit."""
    seen: dict[str, list[int]] = defaultdict(list)
    for k in kernels:
        assert "run" not in vars(k), f"{k} is already wrapped"
        real = k.run
        name = k.fn.__name__

        def run(*args, grid, _real=real, _name=name, **kwargs):
            seen[_name].append(_programs(grid, kwargs))
            return _real(*args, grid=grid, **kwargs)

        k.run = run
    try:
        yield seen
    finally:
        for k in kernels:
            vars(k).pop("run", None)


def assert_multi_program(seen, *kernels, at_least: int = MIN_PROGRAMS):
    for k in kernels:
        name = k.fn.__name__
        assert seen.get(name), f"{name} was not launched"
        assert min(seen[name]) >= at_least, f"{name}: programs per launch {seen[name]} (want >= {at_least})"


def _rand(shape, gen, scale=1.0, device="cpu"):
    return (torch.randn(shape, generator=gen, dtype=F64) * scale).to(device=device, dtype=torch.float32)


def _grads(outs, leaves, cot):
    """Gradients of sum_i <out_i, cot_i> (float64 accumulation of the scalar)."""
    loss = sum((o.double() * c.double()).sum() for o, c in zip(outs, cot))
    return torch.autograd.grad(loss, leaves)


def _leaves(ts, dtype=None):
    return [t.detach().clone().to(dtype or t.dtype).requires_grad_(True) for t in ts]


def _ulp_tol(ref64: torch.Tensor, atol: float, ulps: int = 4) -> torch.Tensor:
    """``atol`` plus a few float32 ulps of |ref|: the kernels' exp / sigmoid may differ from torch's
    by an ulp or two, which the Flash-Attention rule's 2|torch32 - ref64| term does not always cover
    element by element (an output of 172.63 is 1 ulp = 1.5e-5 away from the float64 value)."""
    return atol + ulps * torch.finfo(torch.float32).eps / 2 * ref64.detach().abs().cpu()


def _sum_tol(n_terms: int) -> float:
    """Absolute slack of a float32 sum of ``n_terms`` O(1) products (parameter gradients, log-dets):
    unit roundoff times sqrt(n) (random-walk growth) times the O(sqrt(n)) size of such a sum, x16."""
    return 16 * torch.finfo(torch.float32).eps / 2 * n_terms + ATOL[torch.float32]


# ---- flows: actnorm -----------------------------------------------------------------------------------
ACTNORM_CASES = [  # (shape, log_scale (else scale), reverse)
    ((2, 3, 4097), True, False),  # 2-D grid (2 row blocks x 2 S blocks); two S tiles per row
    ((2, 129, 65), False, True),  # 3 row blocks; the backward's finish kernel has 3 channel blocks
    ((2, 129, 65), True, True),
]


@pytest.mark.parametrize("device,backend", TRITON)
@pytest.mark.parametrize("shape,log,rev", ACTNORM_CASES, ids=lambda v: str(v))
def test_actnorm_several_programs(device, backend, shape, log, rev, gen):
    from pygen.kernels import flows as K

    c = shape[1]
    x = _rand(shape, gen, device=device)
    loc = _rand((c,), gen, device=device)
    p = _rand((c,), gen, 0.3, device=device)
    if not log:  # scale, with both signs (log|m|)
        p = p.exp() * torch.where(torch.arange(c, device=device) % 2 == 0, 1.0, -1.0)
    kw = "log_scale" if log else "scale"
    leaves = _leaves((x, loc, p))
    kernels = [K._actnorm_fwd_kernel, K._actnorm_bwd_kernel]
    if c > 128:
        kernels.append(K._actnorm_bwd_finish_kernel)
    with record_launches(*kernels) as seen:
        y, ld = ops.actnorm(leaves[0], leaves[1], **{kw: leaves[2]}, reverse=rev, backend=backend)
        cot = (_rand(y.shape, gen, device=device), _rand(ld.shape, gen, device=device))
        grads = _grads((y, ld), leaves, cot)
    assert_multi_program(seen, *kernels)
    l64 = _leaves((x, loc, p), F64)
    y64, ld64 = ref_flows.actnorm(l64[0], l64[1], **{kw: l64[2]}, reverse=rev)
    g64 = _grads((y64, ld64), l64, cot)
    l32 = _leaves((x, loc, p))
    y32, ld32 = ref_flows.actnorm(l32[0], l32[1], **{kw: l32[2]}, reverse=rev)
    g32 = _grads((y32, ld32), l32, cot)
    n_sum = shape[0] * shape[2]  # terms of a per-channel parameter gradient
    assert_close_to_ref(y, y64, y32, what="actnorm y")
    assert_close_to_ref(ld, ld64, ld32, atol=_sum_tol(c) * shape[2], what="actnorm logdet")
    for name, a, b, s, tol in zip(
        ("x", "loc", kw), grads, g64, g32, (4 * ATOL[torch.float32], _sum_tol(n_sum), _sum_tol(n_sum))
    ):
        assert_close_to_ref(a, b, s, atol=tol, what=f"actnorm grad {name}")


# ---- flows: couplings ---------------------------------------------------------------------------------
COUPLING_SHAPE = (5, 3, 2731)  # N = 8193: two column blocks of 8192, three row blocks of 2 samples


def _coupling_inputs(gen, device):
    """x and (raw, t) as the two channel chunks of one conditioner output (rows with stride 2N)."""
    b, c, s = COUPLING_SHAPE
    x = _rand(COUPLING_SHAPE, gen, device=device)
    raw, t = _rand((b, 2 * c, s), gen, 1.5, device=device).chunk(2, 1)
    assert not raw.is_contiguous()
    return x, raw, t


@pytest.mark.parametrize("device,backend", TRITON)
@pytest.mark.parametrize("rev,clamp,scale", [(False, 2.0, "exp"), (True, None, "exp"), (True, None, "sigmoid")])
def test_affine_coupling_several_programs(device, backend, rev, clamp, scale, gen):
    from pygen.kernels import flows as K

    x, raw, t = _coupling_inputs(gen, device)
    leaves = _leaves((x, raw, t))
    kernels = (K._affine_coupling_fwd_kernel, K._affine_coupling_bwd_kernel)
    with record_launches(*kernels) as seen:
        y, ld = ops.affine_coupling(*leaves, reverse=rev, clamp=clamp, scale=scale, backend=backend)
        cot = (_rand(y.shape, gen, device=device), _rand(ld.shape, gen, device=device))
        grads = _grads((y, ld), leaves, cot)
    assert_multi_program(seen, *kernels)
    l64 = _leaves((x, raw, t), F64)
    y64, ld64 = ref_flows.affine_coupling(*l64, rev, clamp, scale)
    g64 = _grads((y64, ld64), l64, cot)
    l32 = _leaves((x, raw, t))
    y32, ld32 = ref_flows.affine_coupling(*l32, rev, clamp, scale)
    g32 = _grads((y32, ld32), l32, cot)
    n = math.prod(COUPLING_SHAPE[1:])
    assert_close_to_ref(y, y64, y32, atol=_ulp_tol(y64, ATOL[torch.float32]), what="affine y")
    assert_close_to_ref(ld, ld64, ld32, atol=_sum_tol(n), what="affine logdet")
    for name, a, b, s in zip(("x", "raw", "t"), grads, g64, g32):
        assert a.shape == x.shape and a.dtype == x.dtype
        assert_close_to_ref(a, b, s, atol=_ulp_tol(b, 4 * ATOL[torch.float32]), what=f"affine grad {name}")


@pytest.mark.parametrize("device,backend", TRITON)
@pytest.mark.parametrize("rev", [False, True])
def test_additive_coupling_several_programs(device, backend, rev, gen):
    from pygen.kernels import flows as K

    x, _, t = _coupling_inputs(gen, device)
    with record_launches(K._additive_coupling_fwd_kernel) as seen:
        y, ld = ops.additive_coupling(x, t, reverse=rev, backend=backend)
    assert_multi_program(seen, K._additive_coupling_fwd_kernel)
    y64, ld64 = ref_flows.additive_coupling(x.double(), t.double(), rev)
    assert_close_to_ref(y, y64, ref_flows.additive_coupling(x, t, rev)[0], what="additive y")
    assert torch.equal(ld.cpu().double(), ld64.cpu())


# ---- flows: slogdet -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", TRITON)
def test_slogdet_several_programs(device, backend, gen):
    """513 random 7x7 matrices (padded to 8x8): forward 3 programs of 256 matrices, backward 5 of
    128, so the last program of each is mostly padding. Tolerances as tests/flows/test_flows_ops.py's."""
    from pygen.kernels.flows import slogdet as KS

    n, d = 513, 7
    a = _rand((n, d, d), gen, device=device).requires_grad_(True)
    g = _rand((n,), gen, device=device)
    kernels = (KS._slogdet_fwd_kernel, KS._slogdet_bwd_kernel)
    with record_launches(*kernels) as seen:
        sign, lad = ops.slogdet(a, backend=backend)
        (ga,) = torch.autograd.grad(lad, a, g)
    assert_multi_program(seen, *kernels)
    a64 = a.detach().double().requires_grad_(True)
    s64, l64 = torch.linalg.slogdet(a64)  # pygen.ref.flows.slogdet is torch.linalg.slogdet
    (g64,) = torch.autograd.grad(l64, a64, g.double())
    a32 = a.detach().clone().requires_grad_(True)
    s32, l32 = ref_flows.slogdet(a32)
    (g32,) = torch.autograd.grad(l32, a32, g)
    assert torch.equal(sign.cpu().double(), s64.cpu())
    assert_close_to_ref(lad, l64, l32, atol=ATOL[torch.float32] * d, what="slogdet logabsdet")
    u = torch.finfo(torch.float32).eps / 2
    kappa = torch.linalg.cond(a.detach().cpu().double())
    atol = (4 * (d + 1) * u * kappa * g64.detach().cpu().abs().amax(dim=(-2, -1)))[:, None, None]
    assert_close_to_ref(ga, g64, g32, atol=atol, what="slogdet grad")


# ---- made_sample (persistent kernel) ------------------------------------------------------------------
def _made_network(gen, d, hidden, mult, bsz, device):
    """A feedforward MADE with inputs in a random degree order, float64 and float32 copies."""
    in_deg = torch.randperm(d, generator=gen) + 1
    degrees = [in_deg] + [ref_made.hidden_degrees(d, h) for h in hidden] + [in_deg.repeat_interleave(mult)]
    sizes = [d, *hidden, d * mult]
    w64 = [torch.randn(o, i, generator=gen, dtype=F64) / i**0.5 for i, o in zip(sizes[:-1], sizes[1:])]
    b64 = [torch.randn(o, generator=gen, dtype=F64) * 0.3 if k % 2 == 0 else None for k, o in enumerate(sizes[1:])]
    c64 = [torch.randn(bsz, hidden[0], generator=gen, dtype=F64) * 0.5] + [None] * (len(w64) - 1)
    cast = lambda ts: [None if t is None else t.to(device=device, dtype=torch.float32) for t in ts]
    return (w64, b64, c64), (cast(w64), cast(b64), cast(c64)), degrees


@pytest.mark.parametrize("device,backend", TRITON)
@pytest.mark.parametrize("kind,hidden", [("gaussian", [13, 11]), ("affine", [9, 21, 11])])
def test_made_sample_persistent_several_programs(device, backend, kind, hidden, gen):
    from pygen.kernels.made import sample as KM

    block_b = KM.block_sizes(torch.float32)[0]  # the launcher's BLOCK_B (16 interpreted, 64 on a GPU)
    bsz, d, mult, act = 2 * block_b + 1, 6, 2, "tanh"
    (w64, b64, c64), (w, b, c), degs = _made_network(gen, d, hidden, mult, bsz, device)
    noise64 = torch.randn(bsz, d, generator=gen, dtype=F64)
    with record_launches(KM._made_sample_persistent_kernel) as seen, torch.no_grad():
        x, prm = ops.made_sample(
            w,
            b,
            [t.to(device) for t in degs],
            noise64.to(device, torch.float32),
            kind=kind,
            activation=act,
            context_terms=c,
            backend=backend,
            return_params=True,
            persistent=True,
        )
    assert seen[KM._made_sample_persistent_kernel.fn.__name__] == [bsz // block_b + 1]
    assert_multi_program(seen, KM._made_sample_persistent_kernel)

    def net(t):
        return ref_made.made_forward(t, w64, b64, degs, act, c64)

    x64 = ref_made.made_sample(net, noise64, degs[0], mult, kind)  # D full float64 passes
    prm64 = net(x64)
    torch.testing.assert_close(x.cpu().double(), x64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prm.cpu().double(), prm64, rtol=1e-4, atol=1e-4)


# ---- MoE ----------------------------------------------------------------------------------------------
ROUTE_CASES = [  # (T, E, top_k, n_group, topk_group, scoring, bias, norm, scale)
    (129, 64, 6, 8, 3, "sigmoid", True, True, 2.5),
    (129, 12, 3, 4, 2, "softmax", True, False, 1.0),
]


@pytest.mark.parametrize("device,backend", TRITON)
@pytest.mark.parametrize("case", ROUTE_CASES, ids=lambda c: f"T{c[0]}E{c[1]}-{c[5]}")
def test_moe_route_several_programs(device, backend, case, gen):
    from pygen.kernels import moe as KMoE

    t, e, k, g, tg, scoring, has_bias, norm, scale = case
    logits = _rand((t, e), gen, device=device).requires_grad_(True)
    bias = _rand((e,), gen, 0.1, device=device) if has_bias else None
    kw = route_kwargs(g, tg, scoring, bias, norm, scale)
    with record_launches(KMoE._moe_route_fwd_kernel) as seen:
        ids, w = ops.moe_route(logits, k, backend=backend, **kw)
    assert_multi_program(seen, KMoE._moe_route_fwd_kernel)
    l64 = logits.detach().double().requires_grad_(True)
    rid, rw = ref_moe.moe_route(l64, k, **{**kw, "e_score_correction_bias": None if bias is None else bias.double()})
    assert torch.equal(ids.cpu(), rid.cpu())
    assert_close_to_ref(w, rw, atol=1e-6, what="topk_weights")
    gw = _rand(w.shape, gen, device=device)
    (gl,) = torch.autograd.grad(w, logits, gw)
    (gl64,) = torch.autograd.grad(rw, l64, gw.double())
    assert_close_to_ref(gl, gl64, atol=1e-6, what="d router_logits")


@pytest.mark.parametrize("device,backend", TRITON)
def test_moe_align_offsets_several_programs(device, backend):
    """2500 experts: _moe_align_offsets_kernel runs cdiv(2500, 1024) = 3 programs (it was only
    multi-program above 1024 experts before), over 3 slot blocks; a few hot experts in the third
    expert block, so every program has work."""
    from pygen.kernels import moe as KMoE

    e, bs = 2500, 16
    gen = torch.Generator().manual_seed(2500)
    ids = torch.randint(0, e, (525, 4), generator=gen, dtype=torch.int32)  # 2100 slots
    ids[::7, 0] = 2047  # last expert of block 1, first and last of block 2
    ids[::5, 1] = 2048
    ids[::11, 2] = e - 1
    kernels = (
        KMoE._moe_align_count_kernel,
        KMoE._moe_align_offsets_kernel,
        KMoE._moe_align_scatter_kernel,
        KMoE._moe_align_blocks_kernel,
    )
    with record_launches(*kernels, KMoE._moe_align_scan_kernel) as seen:
        out = ops.moe_align(ids.to(device), e, bs, backend=backend)
    assert_multi_program(seen, *kernels)
    for name, got, want in zip(
        ("sorted_ids", "expert_ids", "num_tokens_post_padded"), out, ref_moe.moe_align(ids, e, bs)
    ):
        assert torch.equal(got.cpu(), want), name


@pytest.mark.parametrize("device,backend", TRITON)
@pytest.mark.parametrize("weighted", [True, False])
def test_moe_unpermute_several_programs(device, backend, weighted, gen):
    """T = 33 tokens, H = 260: the unpermute forward is a (3, 2) grid, its backward and the permute
    7 and (7, 2) programs; the ids route some tokens twice to one expert and leave experts empty."""
    from pygen.kernels import moe as KMoE

    t, k, e, h = 33, 3, 8, 260
    ids = torch.randint(0, e - 2, (t, k), generator=gen).to(device)  # experts 6, 7 unused
    x = _rand((t, h), gen, device=device).requires_grad_(True)
    w = torch.rand(t, k, generator=gen, dtype=F64).to(device=device, dtype=torch.float32).requires_grad_(True)
    kernels = (KMoE._moe_permute_fwd_kernel, KMoE._moe_unpermute_fwd_kernel, KMoE._moe_unpermute_bwd_kernel)
    with record_launches(*kernels) as seen:
        perm, slots, offs = ops.moe_permute(x, ids, e, backend=backend)
        y = perm * 2.0
        out = ops.moe_unpermute(y, slots, w if weighted else None, top_k=k, backend=backend)
        g = _rand((t, h), gen, device=device)
        leaves = (x, w) if weighted else (x,)
        grads = torch.autograd.grad(out, leaves, g)
    assert_multi_program(seen, *kernels)
    x64 = x.detach().double().requires_grad_(True)
    w64 = w.detach().double().requires_grad_(True)
    rperm, rslots, roffs = ref_moe.moe_permute(x64, ids, e)
    assert torch.equal(slots.cpu(), rslots.cpu()) and torch.equal(offs.cpu(), roffs.cpu())
    assert_close_to_ref(perm, rperm, what="permuted")
    rout = ref_moe.moe_unpermute(rperm * 2.0, rslots, w64 if weighted else None, t, k)
    assert_close_to_ref(out, rout, what="unpermuted")
    rgrads = torch.autograd.grad(rout, (x64, w64) if weighted else (x64,), g.double())
    for name, a, b in zip(("dx", "dw"), grads, rgrads):
        assert_close_to_ref(a, b, atol=ATOL[torch.float32] * h**0.5, what=name)
