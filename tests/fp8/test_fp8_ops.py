"""FP8 family numerics: quantisation (scales bit-exact, pre-cast values exact, the e4m3 cast
checked against torch's -- exactly on a GPU, up to the interpreter's documented cast defects on
CPU), scale layouts, round trips; fp8_gemm against the float64 oracle within the documented bound
and against the float32 per-K-block recipe tightly, for M in {1, 7, 64, 128, 1000}, ragged N,
every schedule (swap-AB, split-K, persistent); the wgrad GEMM; the grouped GEMM against a loop of
dense GEMMs; NaN/inf propagation; the offline sm_90 compile (wgmma, no spills)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_compiled_without_spills, assert_rounded_bf16, compile_in_child, requires_cuda
from hypothesis import given, settings, strategies as st

from pygen import _backend
from pygen.kernels import fp8 as K
from pygen.ops import fp8 as ops
from pygen.ref import fp8 as ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETING = _backend.triton_interpreting() and DEV == "cpu"
FP8 = torch.float8_e4m3fn


def _randn(shape, seed, dtype=torch.float32, scale=1.0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    # per-row magnitudes spread over 2^-8 .. 2^8 so tiles get very different scales
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if len(shape) == 2:
        x = x * torch.exp2(torch.randint(-8, 9, (shape[0], 1), generator=g).double())
    return (x * scale).to(device=device, dtype=dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8).int().cpu()


def _check_cast(q: torch.Tensor, pre: torch.Tensor) -> None:
    """q (kernel's fp8) against torch's cast of the kernel's own pre-cast values: bit-identical.
    The interpreter's own fp32 -> fp8 cast is wrong (measured with triton 3.9, docs/fp8.md:
    126.6 -> 64, ties away from zero, subnormals off by a step, NaN -> 384), so under it the
    kernel first rounds onto the e4m3 grid in float32 (ROUND_IN_FP32; exactly representable
    values do cast exactly) -- only NaN, which that cannot fix, may differ there."""
    want = pre.to(FP8)
    diff = _bits(q) != _bits(want)
    if INTERPRETING:
        diff &= ~torch.isnan(pre.cpu())
    assert not diff.any(), (
        f"{int(diff.sum())} fp8 values differ from torch's cast, e.g. "
        f"pre={pre.cpu()[diff][:4].tolist()} got={q.float().cpu()[diff][:4].tolist()}"
    )


def _same_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num())


# ---- quantisation --------------------------------------------------------------------------------
@pytest.mark.parametrize("scale_format", ["fp32", "ue8m0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transpose", [False, True])
def test_quantize_1x128_kernel_vs_reference(scale_format, dtype, transpose):
    m, k = 70, 384
    x = _randn((m, k), 1, dtype)
    x[5, 128:256] = 0  # all-zero tile: finite tiny scale, zeros
    x[6, :3] = torch.tensor([448.0 * 2**20, -1e-30, 3.0], dtype=dtype)  # huge / tiny in one tile
    q = torch.empty((m, k), dtype=FP8, device=DEV)
    s = ops._act_scales_empty(x, m, k // 128, transpose)
    pre = torch.empty((m, k), device=DEV)
    K.quantize_1x128_fwd(x, q, s, scale_format == "ue8m0", pre)
    rq, rs, rpre = ref.quantize_1x128(x, scale_format, transpose, return_precast=True)
    assert s.stride() == rs.stride()
    assert torch.equal(s, rs), (s - rs).abs().max()
    assert torch.equal(pre, rpre)
    _check_cast(q, pre)
    # the op returns the same thing
    q2, s2 = ops.quantize_fp8_1x128(x, scale_format=scale_format, transpose_scales=transpose, backend="triton")
    assert torch.equal(s2, rs) and s2.stride() == rs.stride() and torch.equal(_bits(q2), _bits(q))


@pytest.mark.parametrize("scale_format", ["fp32", "ue8m0"])
@pytest.mark.parametrize("n", [256, 200, 1])
def test_quantize_128x128_kernel_vs_reference(scale_format, n):
    k = 256
    w = _randn((n, k), 2, torch.bfloat16, scale=0.02)
    q = torch.empty((n, k), dtype=FP8, device=DEV)
    s = ops._w_scales_empty(w, -(-n // 128), k // 128)
    pre = torch.empty((n, k), device=DEV)
    K.quantize_128x128_fwd(w, q, s, scale_format == "ue8m0", pre)
    rq, rs, rpre = ref.quantize_128x128(w, scale_format, return_precast=True)
    assert s.stride() == rs.stride() == (4, 1)
    assert torch.equal(s, rs) and torch.equal(pre, rpre)
    _check_cast(q, pre)


@requires_cuda
@pytest.mark.parametrize("scale_format", ["fp32", "ue8m0"])
def test_quantize_kernel_cast_bit_exact_on_gpu(scale_format):
    """The in-kernel fp32 -> e4m3 cast (cvt.rn.satfinite; ROUND_IN_FP32 off) equals torch's cast
    bit for bit, NaN included."""
    x = _randn((1000, 1024), 3, torch.bfloat16, device="cuda")
    x[1, 5], x[2, 300] = float("nan"), float("inf")
    q, s = ops.quantize_fp8_1x128(x, scale_format=scale_format, backend="triton")
    rq, rs = ref.quantize_1x128(x, scale_format)
    assert _same_nan(s, rs) and torch.equal(_bits(q), _bits(rq))
    w = _randn((7168 // 4, 1024), 4, torch.bfloat16, scale=0.02, device="cuda")
    q, s = ops.quantize_fp8_128x128(w, scale_format=scale_format, backend="triton")
    rq, rs = ref.quantize_128x128(w, scale_format)
    assert torch.equal(s, rs) and torch.equal(_bits(q), _bits(rq))


def test_quantize_rounding_corner_cases():
    """One tile with amax 448 (scale exactly 1), so the values below are cast as they are: ties
    (to even), carries into the next binade, subnormals, subnormal ties, signed zeros."""
    step = 2.0**-9
    vals = [
        448.0,
        42.0,
        46.0,
        -42.0,
        126.6,
        127.9,
        15.5,
        7.8,
        447.9,
        436.0,
        -0.00747,
        0.0017,
        1e-9,
        -0.0,
        0.5 * step,
        1.5 * step,
        2.5 * step,
        -2.5 * step,
        0.015625,
        0.0156,
        0.9999,
        1.0625,
        1.1875,
        240.0,
        232.0,
    ]
    x = torch.zeros((2, 128), device=DEV)
    x[0, : len(vals)] = torch.tensor(vals)
    x[1] = torch.linspace(-448, 448, 128)
    q, s = ops.quantize_fp8_1x128(x, backend="triton")
    assert torch.equal(s, torch.ones_like(s))
    rq, _ = ref.quantize_1x128(x)
    assert torch.equal(_bits(q), _bits(rq)), (q.float()[_bits(q) != _bits(rq)], rq.float()[_bits(q) != _bits(rq)])


@pytest.mark.parametrize("scale_format", ["fp32", "ue8m0"])
def test_round_trip_and_scale_properties(scale_format):
    x = _randn((33, 256), 5)
    q, s = ops.quantize_fp8_1x128(x, scale_format=scale_format, backend="reference")
    deq = ops.dequantize_fp8(q, s).double()
    xs = x.double()
    tile_s = s.double().repeat_interleave(128, 1)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normals, 2^-10 * s absolute below
    assert ((deq - xs).abs() <= 2.0**-4 * xs.abs() + 2.0**-10 * tile_s).all()
    amax = xs.view(33, 2, 128).abs().amax(2)
    assert (q.float().abs().view(33, 2, 128).amax(2) <= 448).all()
    if scale_format == "ue8m0":
        assert (torch.log2(s).frac() == 0).all() and (s.double() >= amax / 448).all()
        assert (s.double() < amax / 448 * 2).all()
    else:
        # the largest element of every tile maps to +-448 exactly
        assert torch.equal(q.float().abs().view(33, 2, 128).amax(2), torch.full((33, 2), 448.0))


def test_scale_layouts_are_what_scaled_mm_reads():
    m, n, k = 6, 384, 384  # _scaled_mm needs N % 16 == 0
    x, w = _randn((m, k), 6), _randn((n, k), 7)
    q, s = ops.quantize_fp8_1x128(x, transpose_scales=True)
    assert s.shape == (m, 3) and s.stride() == (1, 8)  # outer-dim-major, 16-byte columns
    wq, ws = ops.quantize_fp8_128x128(w)
    assert ws.shape == (3, 3) and ws.stride() == (4, 1)  # ws.t(): [K/128, N/128], stride (1, 4)
    # torch's own shape rules for (BlockWise1x128, BlockWise128x128), on meta tensors
    out = torch._scaled_mm(
        q.to("meta"), wq.to("meta").t(), scale_a=s.to("meta"), scale_b=ws.t().to("meta"), out_dtype=torch.bfloat16
    )
    assert out.shape == (m, n)
    # the transposed layout holds the same values
    assert torch.equal(s.contiguous(), ops.quantize_fp8_1x128(x)[1])


@settings(max_examples=8, deadline=None)
@given(m=st.integers(1, 40), kb=st.integers(1, 3), e=st.integers(-30, 30), ue=st.booleans(), tr=st.booleans())
def test_quantize_fuzz(m, kb, e, ue, tr):
    x = _randn((m, kb * 128), m * 7 + kb, scale=2.0**e)
    fmt = "ue8m0" if ue else "fp32"
    q, s = ops.quantize_fp8_1x128(x, scale_format=fmt, transpose_scales=tr, backend="triton")
    rq, rs = ref.quantize_1x128(x, fmt, tr)
    assert torch.equal(s, rs) and s.stride() == rs.stride()
    _check_cast(q, ref.quantize_1x128(x, fmt, return_precast=True)[2])


# ---- GEMM ----------------------------------------------------------------------------------------
def _operands(m, n, k, seed, w_scale=0.05, b_block=128):
    x, w = _randn((m, k), seed), _randn((n, k), seed + 1, scale=w_scale)
    q, s = ref.quantize_1x128(x, transpose_scales=bool(seed % 2))
    wq, ws = ref.quantize_128x128(w) if b_block == 128 else ref.quantize_1x128(w)
    return q, s, wq, ws


def _check_gemm(y, q, s, wq, ws, bias=None, b_block=128, out_dtype=torch.bfloat16):
    y64 = ref.fp8_gemm(q, s, wq, ws, bias, b_block)
    bound = ref.error_bound(q, s, wq, ws, y64, out_dtype, b_block)
    if INTERPRETING and out_dtype == torch.bfloat16:
        # the interpreter's fp32 -> bf16 store truncates (docs/ARCHITECTURE.md): one ulp, not half
        bound = bound + ref.EPS_OUT[out_dtype] * y64.abs()
    err = (y.double().cpu() - y64.cpu()).abs()
    if out_dtype == torch.float16:
        # beyond fp16's range the output is +-inf, as for any cast to fp16
        big = y64.abs().cpu() > 65504
        assert torch.isinf(y.cpu()[big & (y64.abs().cpu() > 65520)]).all()
        err = torch.where(big, torch.zeros_like(err), err)
    assert (err <= bound.cpu()).all(), f"max err/bound {(err / bound.cpu()).max():.3g}"
    if y.dtype == torch.float32:
        # against the float32 recipe the only difference is summation order inside a block
        rec = ref.fp8_gemm_recipe(q, s, wq, ws, bias, b_block)
        tight = 2.0**-20 * ref.abs_product(q, s, wq, ws, b_block) + 2.0**-22 * rec.abs().double() + 1e-30
        assert ((y - rec).abs().double().cpu() <= tight.cpu()).all()


@pytest.mark.parametrize("m,n,k", [(1, 200, 384), (7, 256, 256), (64, 200, 384), (128, 256, 384), (1000, 120, 256)])
def test_fp8_gemm_vs_float64(m, n, k):
    q, s, wq, ws = _operands(m, n, k, m + n + k)
    bias = _randn((n,), 9, torch.bfloat16)
    y = ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.float32, bias=bias, backend="triton")
    _check_gemm(y, q, s, wq, ws, bias, out_dtype=torch.float32)
    if m <= 64:  # bf16 / fp16 output on the cheap shapes (same kernel, different store)
        y = ops.fp8_gemm(q, s, wq, ws, backend="triton")
        assert y.dtype == torch.bfloat16
        _check_gemm(y, q, s, wq, ws)
        y = ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.float16, backend="triton")
        _check_gemm(y, q, s, wq, ws, out_dtype=torch.float16)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fp8_gemm_reference_backend_within_bound(out_dtype):
    q, s, wq, ws = _operands(37, 200, 512, 3)
    y = ops.fp8_gemm(q, s, wq, ws, out_dtype=out_dtype, backend="reference")
    _check_gemm(y, q, s, wq, ws, out_dtype=out_dtype)


@pytest.mark.parametrize(
    "cfg",
    [
        K.GemmConfig(16, 64, swap_ab=True, split_k=3, num_programs=5),  # decode, split-K, persistent
        K.GemmConfig(32, 64, swap_ab=False, split_k=2, num_programs=3),  # split-K without swap
        K.GemmConfig(64, 128, num_programs=1),  # one persistent program
    ],
    ids=["swap-splitk-persistent", "splitk", "one-program"],
)
def test_gemm_schedules(cfg):
    m, n, k = 40, 200, 384
    q, s, wq, ws = _operands(m, n, k, 11)
    bias = _randn((n,), 12)
    out = torch.zeros((m, n), device=DEV)
    K.fp8_gemm_fwd(q, s, wq, ws, bias, out, 128, cfg)
    _check_gemm(out, q, s, wq, ws, bias, out_dtype=torch.float32)


@settings(max_examples=6, deadline=None)
@given(m=st.integers(1, 70), n=st.integers(1, 260), kb=st.integers(1, 3), bias=st.booleans(), tr=st.booleans())
def test_fp8_gemm_fuzz(m, n, kb, bias, tr):
    x, w = _randn((m, kb * 128), m + n), _randn((n, kb * 128), kb, scale=0.05)
    q, s = ops.quantize_fp8_1x128(x, transpose_scales=tr, backend="triton")
    wq, ws = ops.quantize_fp8_128x128(w, backend="triton")
    b = _randn((n,), 3) if bias else None
    y = ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.float32, bias=b, backend="triton")
    _check_gemm(y, q, s, wq, ws, b, out_dtype=torch.float32)


def test_default_configs_cover_the_shape_classes():
    """The table picks swap-AB for decode and split-K where tiles do not fill the SMs; the
    persistent grid size is left to the launcher (SMs x CTAs per SM)."""
    c = K.gemm_config(64, 2112, 7168, device="cpu")
    assert c.swap_ab and c.split_k > 1 and c.num_programs is None
    c = K.gemm_config(4096, 7168, 2048, device="cpu")
    assert (c.block_m, c.block_n, c.split_k, c.num_programs) == (128, 128, 1, None)
    c = K.gemm_config(128, 7168, 2048, device="cpu")
    assert not c.swap_ab and c.block_m == 64
    c = K.gemm_config(1, 256, 256, device="cpu")
    assert c.swap_ab and c.block_m == 16


def test_no_split_k_under_deterministic_algorithms():
    """Split-K adds float32 partials with atomics in run-to-run order: FP8Linear's dgrad (kv_b_proj:
    N = 512, K = 32768) took split 16 under torch.use_deterministic_algorithms(True)."""
    assert K.gemm_config(64, 512, 32768, device="cpu").split_k > 1
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert K.gemm_config(64, 512, 32768, device="cpu").split_k == 1
        assert K.gemm_config(64, 2112, 7168, device="cpu").split_k == 1
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def test_ctas_per_sm():
    """Occupancy from the compiled kernel's registers and shared memory (the offline sm_90 compile's
    numbers for the three tile classes, docs/fp8.md), registers rounded to 256 per warp."""
    assert K.ctas_per_sm(230, 98816, 4) == 2  # 64 x 128, 4 warps: promotion of one CTA overlaps the other
    assert K.ctas_per_sm(167, 65536, 4) == 3  # swap-AB decode 64 x 64
    assert K.ctas_per_sm(218, 98304, 8) == 1  # 128 x 128, 8 warps
    assert K.ctas_per_sm(255, 0, 8) == 1  # never below one
    assert K.ctas_per_sm(32, 0, 4) == 16  # thread-bound: 2048 threads / 128
    assert K.ctas_per_sm(128, 116 * 1024, 4) == 1  # shared-memory-bound (1 KB reserved per CTA)


@pytest.mark.parametrize("occupancy", [1, 2, 3])
def test_persistent_grid_follows_occupancy(monkeypatch, occupancy):
    """The launcher sizes the persistent grid as min(units, SMs x CTAs per SM) and the result does
    not depend on it (the programs stride over the work units)."""
    monkeypatch.setattr(K, "_num_sms", lambda device: 2)
    monkeypatch.setattr(K, "_occupancy", lambda args, kwargs, device: occupancy)
    grids = []
    real = K._fp8_gemm_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return real[grid]

    monkeypatch.setattr(K, "_fp8_gemm_fwd_kernel", Spy())
    m, n, k = 130, 384, 256  # 64 x 128 tiles: 3 x 3 = 9 units
    x, w = _randn((m, k), 1), _randn((n, k), 2)
    q, s = ops.quantize_fp8_1x128(x, backend="triton")
    wq, ws = ops.quantize_fp8_128x128(w, backend="triton")
    y = ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.float32, backend="triton")
    assert grids == [(min(9, 2 * occupancy),)]
    _check_gemm(y, q, s, wq, ws, None, out_dtype=torch.float32)


@requires_cuda
def test_occupancy_probe_on_gpu():
    """On a GPU the launcher reads the compiled kernel's registers and shared memory: the 64 x 128
    tile (M = 128) fits two CTAs per SM (offline: 230-236 registers, 98.8 KB under Triton 3.6-3.9)."""
    K._OCCUPANCY.clear()
    del K.OCCUPANCY_ERRORS[:]
    x, w = _randn((128, 512), 1, device="cuda"), _randn((1024, 512), 2, device="cuda")
    q, s = ops.quantize_fp8_1x128(x, backend="triton")
    wq, ws = ops.quantize_fp8_128x128(w, backend="triton")
    y = ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.float32, backend="triton")
    torch.cuda.synchronize()
    assert not K.OCCUPANCY_ERRORS, K.OCCUPANCY_ERRORS
    assert list(K._OCCUPANCY.values()) == [2], K._OCCUPANCY
    _check_gemm(y, q, s, wq, ws, None, out_dtype=torch.float32)


def test_fp8_gemm_transposed_b_view():
    """B given as a transposed view (the input-gradient GEMM reads W^T this way)."""
    m, n, k = 20, 256, 256
    q, s, _, _ = _operands(m, n, k, 13)
    w = _randn((k, n), 14, scale=0.05)  # W [K_out=256, N_in=256]
    wq, ws = ref.quantize_128x128(w)
    wt, wst = wq.t(), ws.t()  # B = W^T as views; block scales transpose
    y = ops.fp8_gemm(q, s, wt, wst, out_dtype=torch.float32, backend="triton")
    _check_gemm(y, q, s, wt, wst, out_dtype=torch.float32)


def test_fp8_gemm_wgrad_vs_float64():
    a, sa, b, sb = _operands(64, 200, 256, 15, b_block=1)
    y = ops.fp8_gemm_wgrad(a, sa, b, sb, backend="triton")
    assert y.dtype == torch.float32
    _check_gemm(y, a, sa, b, sb, b_block=1, out_dtype=torch.float32)
    yr = ops.fp8_gemm_wgrad(a, sa, b, sb, backend="reference")
    _check_gemm(yr, a, sa, b, sb, b_block=1, out_dtype=torch.float32)


def test_fp8_gemm_grouped_vs_loop():
    sizes = [5, 0, 130, 1]  # an empty expert, one spanning 2 tiles
    mi, starts = ref.grouped_layout(sizes, device=DEV)
    e, mt, n, k = len(sizes), mi.numel(), 120, 256
    x = _randn((mt, k), 16)
    q, s = ref.quantize_1x128(x)
    wq = torch.empty((e, n, k), dtype=FP8, device=DEV)
    ws = torch.empty((e, 1, 2), device=DEV)
    for g in range(e):
        wq[g], ws[g] = ref.quantize_128x128(_randn((n, k), 17 + g, scale=0.05))
    y = ops.fp8_gemm_grouped(q, s, wq, ws, mi, out_dtype=torch.float32, backend="triton")
    for g, (st_, sz) in enumerate(zip(starts.tolist(), sizes)):
        rows = slice(st_, st_ + sz)
        if sz:
            dense = ops.fp8_gemm(q[rows], s[rows], wq[g], ws[g], out_dtype=torch.float32, backend="triton")
            torch.testing.assert_close(y[rows], dense, rtol=1e-6, atol=1e-6)
            _check_gemm(y[rows], q[rows], s[rows], wq[g], ws[g], out_dtype=torch.float32)
    assert (y[mi < 0] == 0).all()
    # the reference backend agrees, and the float64 oracle too
    yr = ops.fp8_gemm_grouped(q, s, wq, ws, mi, out_dtype=torch.float32, backend="reference")
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)  # fp32 summation order
    # out-of-range expert ids act as padding (never read out of bounds)
    bad = mi.clone()
    bad[:128] = torch.where(bad[:128] >= 0, 99, bad[:128])
    y2 = ops.fp8_gemm_grouped(q, s, wq, ws, bad, out_dtype=torch.float32, backend="triton")
    assert (y2[:128] == 0).all() and torch.equal(y2[128:], y[128:])


@pytest.mark.parametrize("n", [256, 200])
def test_quantize_expert_weights_3d(n):
    w = _randn((3, n, 256), 23, scale=0.02).view(3, n, 256)
    q, s = ops.quantize_fp8_128x128(w, backend="triton")
    assert q.shape == (3, n, 256) and s.shape == (3, -(-n // 128), 2)
    for e in range(3):
        rq, rs = ref.quantize_128x128(w[e])
        assert torch.equal(s[e], rs) and torch.equal(_bits(q[e]), _bits(rq))


def test_gemm_empty_dims():
    q, s, wq, ws = _operands(3, 128, 128, 19)
    assert ops.fp8_gemm(q[:0], s[:0], wq, ws, backend="triton").shape == (0, 128)
    assert ops.fp8_gemm(q, s, wq[:0], ws[:0], backend="triton").shape == (3, 0)
    qq, ss = ops.quantize_fp8_1x128(torch.zeros((0, 256), device=DEV), backend="triton")
    assert qq.shape == (0, 256) and ss.shape == (0, 2)


# ---- NaN / inf -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_nonfinite_inputs_propagate(backend):
    x = _randn((4, 256), 20)
    x[1, 3] = float("nan")
    x[2, 200] = float("inf")
    q, s = ops.quantize_fp8_1x128(x, backend=backend)
    assert torch.isnan(s[1, 0]) and torch.isinf(s[2, 1]) and torch.isfinite(s[[0, 3]]).all()
    if not (INTERPRETING and backend == "triton"):  # the interpreter casts NaN to 384 (docs/fp8.md)
        assert torch.isnan(q[1, :128].float()).all()  # the whole NaN tile
        assert torch.isnan(q[2, 200].float())
    assert (q[2, 128:200].float() == 0).all()
    assert torch.isnan(ops.dequantize_fp8(q, s)[1:3]).any(dim=1).all()
    wq, ws = ref.quantize_128x128(_randn((128, 256), 21, scale=0.05))
    y = ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.float32, backend=backend)
    assert (~torch.isfinite(y[1:3])).all() and torch.isfinite(y[[0, 3]]).all()
    if not (INTERPRETING and backend == "triton"):  # there the inf entry's q is finite: +-inf, not NaN
        assert torch.isnan(y[1:3]).all()
    w = _randn((128, 256), 22)
    w[0, 0] = float("nan")
    _, ws = ops.quantize_fp8_128x128(w, backend=backend)
    assert torch.isnan(ws[0, 0]) and torch.isfinite(ws[0, 1])


# ---- offline sm_90 compile --------------------------------------------------------------------------
CHILD = """
import json
from pygen.tools.inspect import compile_triton_spec
from pygen.kernels import fp8
want = ("fp8_gemm[M=4096]", "fp8_gemm[M=64]", "fp8_gemm[M=64,pointers]", "quantize_1x128[fp32,col]")
rows = [compile_triton_spec(s, "fp8") for s in fp8.COMPILE_SPECS if s["name"] in want]
print(json.dumps([{k: r.get(k) for k in ("kernel", "error", "spill_stores", "spill_loads", "registers", "wgmma",
                                         "tma")}
                  for r in rows]))
"""


def test_kernels_compile_for_sm90_with_wgmma_and_no_spills():
    """The GEMMs use wgmma; the default GEMM path loads its operands with TMA (the pointer path,
    for operands TMA cannot address, with cp.async)."""
    rows = compile_in_child(CHILD, env_extra={"TRITON_DEFAULT_FP_FUSION": "1"})
    assert len(rows) == 4
    assert_compiled_without_spills(rows)
    for r in rows:
        assert r["wgmma"] == r["kernel"].startswith("fp8_gemm"), r
        assert r["tma"] == (r["kernel"] in ("fp8_gemm[M=4096]", "fp8_gemm[M=64]")), r


def _gemm_tma_flags(monkeypatch):
    """Records USE_TMA of every GEMM launch."""
    flags = []
    real = K._fp8_gemm_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                flags.append(kwargs["USE_TMA"])
                return real[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(K, "_fp8_gemm_fwd_kernel", Spy())
    return flags


def test_tma_and_pointer_paths_agree(monkeypatch):
    """Aligned K-major operands take the TMA path (host descriptors; rows past M or past a grouped
    expert's N come back as zeros or are never stored); the pointer path gives the same bits."""
    flags = _gemm_tma_flags(monkeypatch)
    sizes = [5, 0, 130]
    mi, _ = ref.grouped_layout(sizes, device=DEV)
    xg = _randn((mi.numel(), 256), 31)
    qg, sg = ref.quantize_1x128(xg)
    wg = torch.stack([_randn((120, 256), 32 + g, scale=0.05) for g in range(3)])
    wgq, wgs = zip(*(ref.quantize_128x128(w) for w in wg))
    wgq, wgs = torch.stack(wgq), torch.stack(wgs)
    cases = []
    for m, n in ((7, 200), (130, 384)):
        cases.append(
            lambda m=m, n=n: ops.fp8_gemm(*_operands(m, n, 384, m + n), out_dtype=torch.float32, backend="triton")
        )
    cases.append(lambda: ops.fp8_gemm_grouped(qg, sg, wgq, wgs, mi, out_dtype=torch.float32, backend="triton"))
    cases.append(lambda: ops.fp8_gemm_wgrad(*_operands(64, 200, 256, 15, b_block=1), backend="triton"))
    for case in cases:
        del flags[:]
        monkeypatch.setattr(K, "USE_TMA", True)
        with_tma = case()
        assert flags == [True], flags
        monkeypatch.setattr(K, "USE_TMA", False)
        without = case()
        assert flags == [True, False], flags
        assert torch.equal(with_tma, without)


def test_tma_needs_aligned_rows_and_back_to_back_experts():
    k = 256
    x = torch.zeros((40, k), dtype=FP8)
    assert K._tma_2d(x) is not None
    assert K._tma_2d(torch.zeros((40, k + 8), dtype=FP8)[:, :k]) is None  # row stride 264 B
    assert K._tma_2d(torch.zeros((40 * k + 8,), dtype=FP8)[8:].view(40, k)) is None  # base + 8 B
    w = torch.zeros((3, 64, k), dtype=FP8)
    v = K._tma_2d(w)
    assert v is not None and v.shape == (192, k) and v.data_ptr() == w.data_ptr()
    assert K._tma_2d(torch.zeros((3, 80, k), dtype=FP8)[:, :64]) is None  # experts not back to back


def test_triton_gemm_gets_k_major_operands(monkeypatch, gen):
    """An MN-major a or b (a transposed view) reaches the Triton GEMM as a K-major copy (the kernel
    compiles to no cp.async and spills on MN-major operands) and gives the same result."""
    from pygen.ops import _registry

    m, n, k = 32, 48, 256
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    xq, xs = ops.quantize_fp8_1x128(x, backend="reference")
    wq, ws = ops.quantize_fp8_128x128(w, backend="reference")
    want = ops.fp8_gemm(xq, xs, wq, ws, out_dtype=torch.float32, backend="triton")
    a_mn = xq.t().contiguous().t()  # same values, stride along K = m
    b_mn = wq.t().contiguous().t()
    assert a_mn.stride(1) != 1 and b_mn.stride(1) != 1
    seen = []
    real = _registry.get

    def spy(name):
        fn = real(name)
        return lambda a, sa, b, sb, *rest: (seen.append((a.stride(-1), b.stride(-1))), fn(a, sa, b, sb, *rest))[1]

    monkeypatch.setattr(_registry, "get", spy)
    got = ops.fp8_gemm(a_mn, xs, b_mn, ws, out_dtype=torch.float32, backend="triton")
    assert seen == [(1, 1)], seen
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.skipif(not INTERPRETING, reason="interpreter only: the GPU's fp8 MMA accumulates with ~14 bits")
@pytest.mark.parametrize("m", [32, 256], ids=["swap_ab", "plain"])
def test_gemm_bf16_store_rounds_to_nearest(m):
    """The FP8 GEMM stores its float32 tile rounded to nearest in bf16 under the interpreter too, as
    the GPU's store does (kernels/_bf16.py; the interpreter's own store truncates): its products of
    e4m3 values are exact in float32, so the output is the float64 reference rounded."""
    q, s, wq, ws = _operands(m, 256, 256, 7)
    y = ops.fp8_gemm(q, s, wq, ws, torch.bfloat16, backend="triton")
    assert_rounded_bf16(y, ref.fp8_gemm(q, s, wq, ws), f"fp8_gemm M={m}")
