"""DeepSeek-V3 block-scaled FP8 ops: quantisation, dequantisation and the FP8 GEMMs of the
recipe (math, layouts, non-finite behaviour and the error bound: pygen/ref/fp8.py, docs/fp8.md).

    q, s   = pygen.ops.quantize_fp8_1x128(x)                 # x [M, K]: per-token 1x128 tiles
    q, s   = pygen.ops.quantize_fp8_1x128(x, transpose_scales=True)   # torch._scaled_mm layout
    wq, ws = pygen.ops.quantize_fp8_128x128(w)               # w [N, K]: 128x128 blocks
    y      = pygen.ops.fp8_gemm(q, s, wq, ws, out_dtype=torch.bfloat16, bias=None)   # q @ wq^T
    y      = pygen.ops.fp8_gemm_grouped(q, s, wq_e, ws_e, m_indices)  # MoE, contiguous layout
    dw     = pygen.ops.fp8_gemm_wgrad(gq, gs, xq, xs)        # 1x128 x 1x128 (reduction along K)
    x~     = pygen.ops.dequantize_fp8(q, s)                  # q * s in float32

Backends: ``triton`` (kernels/fp8/__init__.py: on CUDA, or on CPU under TRITON_INTERPRET=1) and
``reference`` (pygen.ref.fp8; the GEMMs run the float32 per-K-block recipe, not the float64
oracle). The automatic choice takes ``triton`` on CUDA tensors and ``reference`` on CPU.

Contiguous grouped layout (the contract of ``fp8_gemm_grouped``; DeepGEMM's m-grouped
contiguous GEMM uses the same idea): the rows of all experts are stored back to back in A;
each expert's segment starts at a multiple of ``GROUPED_M_ALIGN`` (128, the kernel's M tile) and
is padded up to the next multiple with rows whose ``m_indices`` entry is -1. Every 128-row tile
therefore belongs to exactly one expert (or is all padding), which the kernel reads from the
tile's first ``m_indices`` entry. ``pygen.ref.fp8.grouped_layout(sizes)`` builds m_indices and
the segment starts from per-expert row counts. Padding rows of the output are 0; an index
outside [0, E) is treated as padding (never read out of bounds), and a row whose index differs
from its tile's first index (a broken contract) is 0 too.

No op here is differentiable by itself (fp8 inputs); pygen.nn.fp8.FP8Linear composes them into
a differentiable linear layer.
"""

from __future__ import annotations

import torch

from .. import _backend
from ..ref import fp8 as ref
from . import _fp8_checks as chk, _registry
from ._registry import OpSpec, register

__all__ = [
    "quantize_fp8_1x128",
    "quantize_fp8_128x128",
    "dequantize_fp8",
    "fp8_gemm",
    "fp8_gemm_grouped",
    "fp8_gemm_wgrad",
    "GROUPED_M_ALIGN",
]

_SUPPORTED = ("triton", "reference")
GROUPED_M_ALIGN = ref.BLOCK


def _kernels():
    from pygen.kernels import fp8  # lazily: triton may be missing

    return fp8


def _pick(name: str, t: torch.Tensor, backend: str | None) -> str:
    return _backend.choose(name, t.device, torch.float32, backend, _SUPPORTED)


# ----------------------------------------------------------------------------------------------
# output allocation (shared by the real and the fake implementations)
# ----------------------------------------------------------------------------------------------
def _act_scales_empty(x: torch.Tensor, m: int, kb: int, transpose: bool) -> torch.Tensor:
    if transpose:
        return (
            torch.empty_strided((m, kb), (1, ref.round_up(max(m, 1), 4)), dtype=torch.float32, device=x.device)
            if kb
            else x.new_empty((m, 0), dtype=torch.float32)
        )
    return x.new_empty((m, kb), dtype=torch.float32)


def _w_scales_empty(w: torch.Tensor, nb: int, kb: int) -> torch.Tensor:
    return torch.empty_strided((nb, kb), (ref.round_up(max(kb, 1), 4), 1), dtype=torch.float32, device=w.device)


def _gemm_out(a, b, out_dtype):
    return a.new_empty((a.shape[0], b.shape[-2]), dtype=out_dtype)


def _run_gemm(k, a, sa, b, sb, bias, b_block, out_dtype, grouped_idx=None):
    m, n = a.shape[0], b.shape[-2]
    out = a.new_empty((m, n), dtype=out_dtype)
    if m == 0 or n == 0:
        return out
    if a.shape[1] == 0:
        out.zero_()
        if bias is not None:
            out += bias.to(out_dtype)
        return out
    cfg = k.gemm_config(m, n, a.shape[1], grouped=grouped_idx is not None, device=a.device)
    # split-K programs add float32 partial sums with atomics: they need a zeroed fp32 target
    target = out if cfg.split_k == 1 else torch.zeros((m, n), dtype=torch.float32, device=a.device)
    if grouped_idx is None:
        k.fp8_gemm_fwd(a, sa, b, sb, bias, target, b_block, cfg)
    else:
        k.fp8_gemm_grouped_fwd(a, sa, b, sb, grouped_idx, target, cfg)
    if target is not out:
        out.copy_(target)
    return out


def _q1_out(x, ue8m0, transpose):
    m, kdim = x.shape
    return x.new_empty((m, kdim), dtype=chk.FP8), _act_scales_empty(x, m, kdim // ref.BLOCK, transpose)


def _q1(K, x, ue8m0, transpose):
    q, s = _q1_out(x, ue8m0, transpose)
    if x.numel():
        K.quantize_1x128_fwd(x, q, s, ue8m0)
    return q, s


def _q128_out(w, ue8m0):
    n, kdim = w.shape
    return w.new_empty((n, kdim), dtype=chk.FP8), _w_scales_empty(w, -(-n // ref.BLOCK), kdim // ref.BLOCK)


def _q128(K, w, ue8m0):
    q, s = _q128_out(w, ue8m0)
    if w.numel():
        K.quantize_128x128_fwd(w, q, s, ue8m0)
    return q, s


# no op here is differentiable (fp8 inputs): FP8Linear composes them (pygen/nn/fp8.py)
SPECS = (
    OpSpec("fp8_quantize_1x128", "(Tensor x, bool ue8m0, bool transpose_scales) -> (Tensor, Tensor)", _q1, _q1_out),
    OpSpec("fp8_quantize_128x128", "(Tensor w, bool ue8m0) -> (Tensor, Tensor)", _q128, _q128_out),
    OpSpec(
        "fp8_gemm",
        "(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor? bias, int b_block, ScalarType out_dtype) "
        "-> Tensor",
        _run_gemm,
        lambda a, sa, b, sb, bias, b_block, out_dtype: _gemm_out(a, b, out_dtype),
    ),
    OpSpec(
        "fp8_gemm_grouped",
        "(Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor m_indices, ScalarType out_dtype) -> Tensor",
        lambda K, a, sa, b, sb, m_indices, out_dtype: _run_gemm(
            K, a, sa, b, sb, None, ref.BLOCK, out_dtype, grouped_idx=m_indices
        ),
        lambda a, sa, b, sb, m_indices, out_dtype: _gemm_out(a, b, out_dtype),
    ),
)
for _spec in SPECS:
    register(_spec, "triton", _kernels)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def quantize_fp8_1x128(
    x: torch.Tensor, *, scale_format: str = "fp32", transpose_scales: bool = False, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (float32/bf16/fp16, K % 128 == 0) -> (q [M, K] float8_e4m3fn, scales [M, K/128]
    float32), one scale per 1x128 tile: x ~= q * scale. ``transpose_scales=True`` stores the
    scales column-major with strides (1, round_up(M, 4)) (torch._scaled_mm's BlockWise1x128
    layout); ``scale_format="ue8m0"`` rounds every scale up to a power of two."""
    name = "quantize_fp8_1x128"
    chk.tensor(name, x, "x", dtypes=chk.HIGH_DTYPES, dim=2)
    chk.k_multiple(name, x.shape[1], "x.shape[1] (K)")
    ue8m0 = chk.scale_format(name, scale_format)
    chk.flag(name, transpose_scales, "transpose_scales")
    if _pick(name, x, backend) == "triton":
        return _registry.get("fp8_quantize_1x128_triton")(x, ue8m0, transpose_scales)
    return ref.quantize_1x128(x, scale_format, transpose_scales)


def quantize_fp8_128x128(
    w: torch.Tensor, *, scale_format: str = "fp32", backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] (K % 128 == 0, any N) -> (q [N, K] float8_e4m3fn, scales [ceil(N/128), K/128]
    float32 with row stride round_up(K/128, 4); ``scales.t()`` is torch._scaled_mm's
    BlockWise128x128 scale_b). MoE expert weights w [E, N, K] give q [E, N, K] and scales
    [E, ceil(N/128), K/128] (one launch when N % 128 == 0), the B operand of fp8_gemm_grouped."""
    name = "quantize_fp8_128x128"
    chk.tensor(name, w, "w", dtypes=chk.HIGH_DTYPES)
    if w.dim() not in (2, 3):
        raise ValueError(f"{name}: w must be [N, K] or [E, N, K] (MoE experts), got shape {tuple(w.shape)}")
    chk.k_multiple(name, w.shape[-1], "w.shape[-1] (K)")
    ue8m0 = chk.scale_format(name, scale_format)
    be = _pick(name, w, backend)
    if w.dim() == 3:
        e, n, kdim = w.shape
        if n % ref.BLOCK == 0 and e:
            # experts stacked along N: their 128-row blocks never straddle two experts
            q, sc = quantize_fp8_128x128(w.reshape(e * n, kdim), scale_format=scale_format, backend=be)
            return q.view(e, n, kdim), sc.unflatten(0, (e, n // ref.BLOCK))
        parts = [quantize_fp8_128x128(w[i], scale_format=scale_format, backend=be) for i in range(e)]
        nb = -(-n // ref.BLOCK)
        return (
            torch.stack([p[0] for p in parts]) if e else w.new_empty(w.shape, dtype=chk.FP8),
            torch.stack([p[1] for p in parts]) if e else w.new_empty((0, nb, kdim // ref.BLOCK), dtype=torch.float32),
        )
    if be == "triton":
        return _registry.get("fp8_quantize_128x128_triton")(w, ue8m0)
    return ref.quantize_128x128(w, scale_format)


def dequantize_fp8(
    q: torch.Tensor, scales: torch.Tensor, *, block: int = 1, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """q [R, K] e4m3 and its scales ([R, K/128] for block=1, [ceil(R/128), K/128] for block=128)
    -> q * scale in ``dtype`` (for tests and debugging; plain PyTorch)."""
    name = "dequantize_fp8"
    chk.operand(name, q, "q")
    chk.k_multiple(name, q.shape[1], "q.shape[1] (K)")
    if block not in (1, ref.BLOCK):
        raise ValueError(f"{name}: block must be 1 or 128, got {block!r}")
    rows = q.shape[0] if block == 1 else -(-q.shape[0] // ref.BLOCK)
    chk.scales(name, scales, "scales", (rows, q.shape[1] // ref.BLOCK), q, f"block={block}")
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"{name}: dtype must be a floating dtype, got {dtype!r}")
    return ref.dequantize(q, scales, block, dtype)


def _gemm_args(name, a, a_scales, b, b_scales, b_block: int, grouped: bool = False):
    chk.operand(name, a, "a")
    chk.operand(name, b, "b", 3 if grouped else 2)
    chk.same_device(name, "b", b, "a", a)
    m, kdim = a.shape
    n = b.shape[-2]
    if b.shape[-1] != kdim:
        raise ValueError(
            f"{name}: a is [M, K] = {tuple(a.shape)} and b must be "
            f"{'[E, N, K]' if grouped else '[N, K]'} with the same K, got {tuple(b.shape)}"
        )
    chk.k_multiple(name, kdim, "K")
    kb = kdim // ref.BLOCK
    chk.scales(name, a_scales, "a_scales", (m, kb), a, "[M, K/128], one per 1x128 tile of a")
    nb = -(-n // ref.BLOCK) if b_block == ref.BLOCK else n
    lay = (
        "[ceil(N/128), K/128], one per 128x128 block of b"
        if b_block == ref.BLOCK
        else "[N, K/128], one per 1x128 tile of b"
    )
    want = ((b.shape[0],) if grouped else ()) + (nb, kb)
    chk.scales(name, b_scales, "b_scales", want, b, ("[E, ...] " if grouped else "") + lay)
    return m, n, kdim


TRITON_SCALE_SPAN = 2**31


def _triton_scale_span(name: str, **scales: torch.Tensor) -> None:
    """The Triton GEMM indexes scales with 32-bit offsets (64-bit scale pointers spill its wgrad
    tile): refuse a scale view whose elements span 2^31 or more (only a padded view of a huge
    storage does; compact scales are 1/128 of their operand)."""
    for what, t in scales.items():
        span = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
        if span >= TRITON_SCALE_SPAN:
            raise ValueError(
                f"{name}: {what} spans {span + 1} elements of its storage (strides {t.stride()}); "
                f"the triton backend needs fewer than 2^31: pass a compact copy"
            )


def _k_major(t: torch.Tensor) -> torch.Tensor:
    """The Triton GEMM's operands K-major (unit stride along K). An MN-major view (e.g. ``w.t()`` of
    a [K, N] weight) compiles to a pipeline without cp.async, one shared-memory buffer and 1.4 KB of
    spills at sm_90, so it is transposed once here, at the cost of one fp8 copy of the operand."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def fp8_gemm(
    a: torch.Tensor,
    a_scales: torch.Tensor,
    b: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """out [M, N] = (a * a_scales) @ (b * b_scales)^T (+ bias), NT layout: a [M, K] e4m3 with 1x128
    scales [M, K/128]; b [N, K] e4m3 with 128x128 scales [ceil(N/128), K/128]; float32
    accumulation with the scales applied once per 128-deep K block. Any M >= 0 and N; K must be
    a multiple of 128. The triton backend copies an MN-major a or b (stride along K != 1) into
    K-major order first (one fp8 copy): pass K-major operands to avoid it."""
    name = "fp8_gemm"
    _, n, _ = _gemm_args(name, a, a_scales, b, b_scales, ref.BLOCK)
    chk.out_dtype(name, out_dtype)
    chk.bias(name, bias, n, a)
    if _pick(name, a, backend) == "triton":
        _triton_scale_span(name, a_scales=a_scales, b_scales=b_scales)
        return _registry.get("fp8_gemm_triton")(
            _k_major(a), a_scales, _k_major(b), b_scales, bias, ref.BLOCK, out_dtype
        )
    return ref.fp8_gemm_recipe(a, a_scales, b, b_scales, bias, ref.BLOCK, out_dtype)


def fp8_gemm_wgrad(
    a: torch.Tensor,
    a_scales: torch.Tensor,
    b: torch.Tensor,
    b_scales: torch.Tensor,
    out_dtype: torch.dtype = torch.float32,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The weight-gradient GEMM of FP8 training: both operands 1x128-scaled along the reduction
    dim. a [M, K] with scales [M, K/128], b [N, K] with scales [N, K/128] -> out [M, N] =
    (a * sa) @ (b * sb)^T. For dW = dY^T X: a = quantize_fp8_1x128(dY^T), b = quantize_fp8_1x128(X^T)
    (K = tokens, padded with zero rows of dY and X to a multiple of 128)."""
    name = "fp8_gemm_wgrad"
    _gemm_args(name, a, a_scales, b, b_scales, 1)
    chk.out_dtype(name, out_dtype)
    if _pick(name, a, backend) == "triton":
        _triton_scale_span(name, a_scales=a_scales, b_scales=b_scales)
        return _registry.get("fp8_gemm_triton")(a, a_scales, b, b_scales, None, 1, out_dtype)
    return ref.fp8_gemm_recipe(a, a_scales, b, b_scales, None, 1, out_dtype)


def fp8_gemm_grouped(
    a: torch.Tensor,
    a_scales: torch.Tensor,
    b: torch.Tensor,
    b_scales: torch.Tensor,
    m_indices: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """MoE grouped GEMM in the contiguous layout (module docstring): a [M_total, K] e4m3 with 1x128
    scales, b [E, N, K] e4m3 with scales [E, ceil(N/128), K/128], m_indices [M_total] int32 (expert
    of each row, -1 for padding; M_total a multiple of 128 and each 128-row tile one expert) ->
    out [M_total, N] with out[m] = a[m] @ b[m_indices[m]]^T and padding rows 0."""
    name = "fp8_gemm_grouped"
    m, _, _ = _gemm_args(name, a, a_scales, b, b_scales, ref.BLOCK, grouped=True)
    chk.out_dtype(name, out_dtype)
    chk.tensor(name, m_indices, "m_indices", dtypes=(torch.int32,), dim=1)
    if m_indices.shape[0] != m:
        raise ValueError(
            f"{name}: m_indices must have shape ({m},) (one entry per row of a), got {tuple(m_indices.shape)}"
        )
    chk.same_device(name, "m_indices", m_indices, "a", a)
    if m % GROUPED_M_ALIGN:
        raise ValueError(
            f"{name}: a.shape[0] (M_total) must be a multiple of {GROUPED_M_ALIGN} in the "
            f"contiguous layout (each expert's rows padded to a multiple of {GROUPED_M_ALIGN}), "
            f"got {m}; see pygen.ref.fp8.grouped_layout"
        )
    if _pick(name, a, backend) == "triton":
        _triton_scale_span(name, a_scales=a_scales, b_scales=b_scales)
        return _registry.get("fp8_gemm_grouped_triton")(
            _k_major(a), a_scales, _k_major(b), b_scales, m_indices.contiguous(), out_dtype
        )
    return _grouped_reference(a, a_scales, b, b_scales, m_indices, out_dtype)


def _grouped_reference(a, sa, b, sb, m_indices, out_dtype):
    """The float32 recipe per 128-row tile (each tile one expert; invalid ids give zeros)."""
    m, n = a.shape[0], b.shape[1]
    out = torch.zeros((m, n), dtype=out_dtype, device=a.device)
    tile_g = m_indices.view(-1, GROUPED_M_ALIGN)[:, :1]
    tiles = tile_g.flatten().tolist() if m else []
    for t, g in enumerate(tiles):
        if 0 <= g < b.shape[0]:
            rows = slice(t * GROUPED_M_ALIGN, (t + 1) * GROUPED_M_ALIGN)
            out[rows] = ref.fp8_gemm_recipe(a[rows], sa[rows], b[g], sb[g], None, ref.BLOCK, out_dtype)
    # padding rows, invalid ids and rows that break the one-expert-per-tile contract are 0 (as in
    # the kernel)
    keep = (m_indices.view(-1, GROUPED_M_ALIGN) == tile_g).flatten() & (m_indices >= 0) & (m_indices < b.shape[0])
    return out.masked_fill(~keep[:, None], 0)
