"""DeepSeek-V3 block-scaled FP8 (e4m3) in plain PyTorch: the test oracle, the ``reference``
backend, and the readable statement of the recipe (DeepSeek-V3 technical report, sec. 3.3).

Quantisation
------------
An activation x [M, K] gets one float32 scale per 1x128 tile (row m, columns 128j..128j+127);
a weight w [N, K] one per 128x128 block (rows 128i.., columns 128j..). For every tile T:

    amax  = max_{t in T} |x_t|                         (NaN if any element is NaN)
    s     = max(amax, AMAX_EPS) / 448                  scale_format="fp32" (IEEE division)
    s     = 2^ceil(log2(max(amax, AMAX_EPS) / 448))    scale_format="ue8m0" (power of two, >= the
                                                       fp32 scale, so nothing saturates)
    q_t   = e4m3(clamp(x_t / s, -448, 448))            round to nearest even; 448 = e4m3 max
    x_t  ~= q_t * s                                    (s is the *dequantisation* multiplier)

K must be a multiple of 128 (the scale grid needs whole tiles along K); M and N may be ragged (a
weight's last row block is partial and its amax covers the rows that exist). AMAX_EPS = 1e-12
keeps an all-zero tile finite (scale 1e-12/448, values 0) while leaving gradients of size 1e-8
representable (DeepGEMM's tests clamp at 1e-4, which would flush such tiles to zero).

Non-finite input (documented behaviour, tested): a tile that contains NaN gets scale NaN and all
its values NaN; a tile that contains +-inf gets scale +inf, its infinite entries NaN (inf/inf) and
its finite entries 0. Either way dequantisation and every GEMM output that reads the tile is NaN:
non-finite values propagate, they are never saturated into a silently wrong finite scale.

Scale layouts
-------------
1x128 ("activation") scales: [M, K/128] float32, row-major (default) or, with
transpose_scales=True, column-major with a 16-byte aligned column stride: strides
(1, round_up(M, 4)) -- the "outer-dim-major" layout torch._scaled_mm reads for BlockWise1x128.
128x128 ("weight") scales: [ceil(N/128), K/128] float32 with the row stride padded to
round_up(K/128, 4), so ``scales.t()`` is the [K/128, N/128] near-inner-dim-major layout
torch._scaled_mm reads for BlockWise128x128. Kernels accept any strides.

GEMM (NT: out = A @ B^T)
------------------------
A [M, K] e4m3 with 1x128 scales sa [M, K/128]; B [N, K] e4m3 with 128x128 scales sb
[ceil(N/128), K/128] (``b_block=128``) or 1x128 scales sb [N, K/128] (``b_block=1``, the
weight-gradient GEMM of training, where both operands are scaled along the reduction dim):

    out[m, n] = sum_j  sa[m, j] * sb[n // b_block, j] * sum_{k in block j} A[m, k] B[n, k]  (+ bias[n])

``fp8_gemm`` evaluates it exactly in float64 (the oracle); ``fp8_gemm_recipe`` evaluates it the
way the kernel does: each 128-deep partial sum in float32 (an fp8 x fp8 product is exact in
float32), promoted into a float32 accumulator with both scales applied once per K block.

Error bound (docs/fp8.md derives it; tests/fp8/test_fp8_ops.py checks it): with
S[m, n] = sum_k |A~[m, k]| |B~[n, k]| (A~, B~ dequantised),
    |kernel - fp8_gemm| <= (EPS_BLOCK + (K/128 + 2) * 2^-24) * S + EPS_OUT[out_dtype] * |ref| + tiny
(tiny = 2^-24, fp16's subnormal spacing, for fp16 outputs; 1e-30 otherwise)
EPS_BLOCK = 2^-13 covers the Hopper tensor core's reduced-precision accumulation inside one
128-deep block (DeepSeek-V3 report: about 14 bits) and, a fortiori, exact float32 math.

Grouped GEMM (contiguous layout, MoE)
-------------------------------------
A [M_total, K] holds the rows of all experts back to back, each expert's segment starting at a
multiple of the M alignment (128) and padded with rows whose m_indices entry is -1; B [E, N, K]
with scales [E, ceil(N/128), K/128]; m_indices [M_total] int32 gives each row's expert
(-1 = padding). out[m] = A[m] @ B[m_indices[m]]^T; padding rows are 0.
"""

from __future__ import annotations

import torch

__all__ = [
    "FP8_MAX",
    "AMAX_EPS",
    "BLOCK",
    "EPS_BLOCK",
    "EPS_OUT",
    "tile_scales",
    "quantize_1x128",
    "quantize_128x128",
    "dequantize",
    "fp8_gemm",
    "fp8_gemm_recipe",
    "fp8_gemm_grouped",
    "error_bound",
    "abs_product",
    "grouped_layout",
    "pad_rows_to",
    "SCALE_FORMATS",
]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_EPS = 1e-12
BLOCK = 128
SCALE_FORMATS = ("fp32", "ue8m0")
EPS_BLOCK = 2.0**-13
EPS_OUT = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10, torch.float64: 2.0**-23}


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _ue8m0(s: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= s for positive normal float32 s (exact: exponent bits, rounded up
    when any mantissa bit is set); NaN and inf pass through."""
    bits = s.contiguous().view(torch.int32)
    exp = (bits >> 23) & 0xFF
    up = torch.where((bits & 0x7FFFFF) != 0, exp + 1, exp)
    p = (up << 23).view(torch.float32)
    return torch.where(torch.isfinite(s), p, s)


def tile_scales(amax: torch.Tensor, scale_format: str = "fp32") -> torch.Tensor:
    """Dequantisation scales (float32) from per-tile amax values (float32)."""
    s = amax.float().clamp_min(AMAX_EPS) / FP8_MAX  # clamp_min keeps NaN
    if scale_format == "ue8m0":
        s = _ue8m0(s)
    elif scale_format != "fp32":
        raise ValueError(f"scale_format must be one of {SCALE_FORMATS}, got {scale_format!r}")
    return s


def _nan_amax(t: torch.Tensor, dims) -> torch.Tensor:
    return t.abs().amax(dim=dims)  # torch.amax propagates NaN


def scaled_values(x: torch.Tensor, s_full: torch.Tensor) -> torch.Tensor:
    """The pre-cast values clamp(x / s, -448, 448) in float32 (NaN kept: clamp propagates it)."""
    return torch.clamp(x.float() / s_full, -FP8_MAX, FP8_MAX)


def quantize_1x128(
    x: torch.Tensor, scale_format: str = "fp32", transpose_scales: bool = False, return_precast: bool = False
):
    """x [M, K] (K % 128 == 0) -> (q [M, K] e4m3, scales [M, K/128] float32)."""
    m, k = x.shape
    kb = k // BLOCK
    xf = x.float().reshape(m, kb, BLOCK)
    s = tile_scales(_nan_amax(xf, 2), scale_format)  # [M, KB]
    pre = scaled_values(xf, s[:, :, None]).reshape(m, k)
    q = pre.to(FP8_DTYPE)
    if transpose_scales:
        s = scales_col_major(s)
    return (q, s, pre) if return_precast else (q, s)


def scales_col_major(s: torch.Tensor) -> torch.Tensor:
    """[M, KB] values in the column-major layout with strides (1, round_up(M, 4))."""
    m, kb = s.shape
    buf = s.new_zeros((kb, round_up(max(m, 1), 4)))
    buf[:, :m] = s.t()
    return buf[:, :m].t()


def weight_scales_buffer(nb: int, kb: int, device, like: torch.Tensor | None = None) -> torch.Tensor:
    """[NB, KB] float32 view of a [NB, round_up(KB, 4)] buffer (module docstring: layouts)."""
    buf = torch.zeros((nb, round_up(max(kb, 1), 4)), dtype=torch.float32, device=device)
    return buf[:, :kb]


def quantize_128x128(w: torch.Tensor, scale_format: str = "fp32", return_precast: bool = False):
    """w [N, K] (K % 128 == 0, N any) -> (q [N, K] e4m3, scales [ceil(N/128), K/128] float32)."""
    n, k = w.shape
    nb, kb = -(-n // BLOCK), k // BLOCK
    wf = w.float()
    pad = nb * BLOCK - n
    if pad:  # zero rows do not change an amax
        wf = torch.cat([wf, wf.new_zeros(pad, k)])
    blocks = wf.reshape(nb, BLOCK, kb, BLOCK)
    s = tile_scales(_nan_amax(blocks, (1, 3)), scale_format)  # [NB, KB]
    pre = scaled_values(blocks, s[:, None, :, None]).reshape(nb * BLOCK, k)[:n]
    q = pre.to(FP8_DTYPE)
    out = weight_scales_buffer(nb, kb, w.device)
    out.copy_(s)
    return (q, out, pre) if return_precast else (q, out)


def expand_scales(scales: torch.Tensor, rows: int, row_block: int) -> torch.Tensor:
    """[R', K/128] scales -> [rows, K] per-element multipliers."""
    s = scales.repeat_interleave(row_block, dim=0)[:rows] if row_block > 1 else scales
    return s.repeat_interleave(BLOCK, dim=1)


def dequantize(q: torch.Tensor, scales: torch.Tensor, block: int = 1, dtype=torch.float32) -> torch.Tensor:
    """q [R, K] e4m3 with scales [ceil(R/block), K/128] (block 1: 1x128 tiles, 128: 128x128) ->
    q * s in ``dtype`` (float64 for the oracle)."""
    return (q.to(dtype) * expand_scales(scales.to(dtype), q.shape[0], block)).to(dtype)


def fp8_gemm(
    a, a_scales, b, b_scales, bias=None, b_block: int = 128, dtype=torch.float64, out_dtype=None
) -> torch.Tensor:
    """out = deq(A) @ deq(B)^T (+ bias) computed in ``dtype`` (float64: the oracle)."""
    out = dequantize(a, a_scales, 1, dtype) @ dequantize(b, b_scales, b_block, dtype).t()
    if bias is not None:
        out = out + bias.to(dtype)
    return out if out_dtype is None else out.to(out_dtype)


def fp8_gemm_recipe(a, a_scales, b, b_scales, bias=None, b_block: int = 128, out_dtype=torch.float32):
    """The kernel's algorithm in PyTorch: float32 partial sums per 128-deep K block, each scaled
    by sa * sb and added into a float32 accumulator (the ``reference`` backend runs this)."""
    m, k = a.shape
    n = b.shape[0]
    acc = torch.zeros((m, n), dtype=torch.float32, device=a.device)
    sa = a_scales.float()
    sb = b_scales.float().repeat_interleave(b_block, dim=0)[:n] if b_block > 1 else b_scales.float()
    af, bf = a.float(), b.float()
    for j in range(k // BLOCK):
        part = af[:, j * BLOCK : (j + 1) * BLOCK] @ bf[:, j * BLOCK : (j + 1) * BLOCK].t()
        acc = acc + part * sa[:, j : j + 1] * sb[:, j][None, :]
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(out_dtype)


def abs_product(a, a_scales, b, b_scales, b_block: int = 128) -> torch.Tensor:
    """S = |deq(A)| @ |deq(B)|^T in float64 (the scale of the accumulation error)."""
    return dequantize(a, a_scales, 1, torch.float64).abs() @ dequantize(b, b_scales, b_block, torch.float64).abs().t()


def error_bound(
    a, a_scales, b, b_scales, ref64: torch.Tensor, out_dtype, b_block: int = 128, eps_block: float = EPS_BLOCK
) -> torch.Tensor:
    """Elementwise bound on |kernel - ref64| (module docstring)."""
    k = a.shape[1]
    s = abs_product(a, a_scales, b, b_scales, b_block)
    tiny = 2.0**-24 if out_dtype == torch.float16 else 1e-30  # fp16 subnormal spacing
    return (eps_block + (k // BLOCK + 2) * 2.0**-24) * s + EPS_OUT[out_dtype] * ref64.abs() + tiny


def fp8_gemm_grouped(a, a_scales, b, b_scales, m_indices, dtype=torch.float64, out_dtype=None):
    """Contiguous-layout grouped GEMM: out[m] = deq(A[m]) @ deq(B[g])^T with g = m_indices[m];
    rows with g = -1 are 0."""
    m = a.shape[0]
    out = torch.zeros((m, b.shape[1]), dtype=dtype, device=a.device)
    for g in range(b.shape[0]):
        rows = (m_indices == g).nonzero().flatten()
        if rows.numel():
            out[rows] = fp8_gemm(a[rows], a_scales[rows], b[g], b_scales[g], dtype=dtype)
    return out if out_dtype is None else out.to(out_dtype)


def grouped_layout(group_sizes, align: int = BLOCK, device="cpu"):
    """(m_indices [M_total] int32, starts [E] int64) of the contiguous layout for experts with
    ``group_sizes`` rows: expert g's rows start at starts[g], a multiple of ``align``."""
    sizes = [int(s) for s in group_sizes]
    starts, m_idx, pos = [], [], 0
    for g, s in enumerate(sizes):
        starts.append(pos)
        padded = round_up(s, align)
        m_idx += [g] * s + [-1] * (padded - s)
        pos += padded
    return (
        torch.tensor(m_idx, dtype=torch.int32, device=device),
        torch.tensor(starts, dtype=torch.int64, device=device),
    )


def pad_rows_to(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


def gemm_flops(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def e4m3_ulp(v: torch.Tensor) -> torch.Tensor:
    """Spacing of e4m3 values at |v| (subnormal spacing 2^-9 below 2^-6)."""
    a = v.abs().float().clamp_min(2.0**-6)
    return torch.exp2(torch.floor(torch.log2(a)) - 3)
