"""Triton backend of the RoI family: roi_align, roi_pool, ps_roi_align, ps_roi_pool and
multi_scale_roi_align (FPN), forward and backward. Semantics are exactly pygen.ref.roi's (the
float64 oracle, torchvision's math); the launcher contract is docs/ARCHITECTURE.md's.

Layouts
-------
input / features[l] : [N, C, H, W], any strides (NCHW and channels_last are read in place)
rois                : [K, 5] rows (batch_index, x1, y1, x2, y2), any strides
out                 : [K, C', PH, PW] contiguous, input dtype (C' = C, or C // (PH*PW) for PS)
argmax (roi_pool)   : [K, C, PH, PW] int32, flat index h*W + w of the max, -1 for an empty bin
grad_input          : [N, C, H, W] contiguous float32 (float64 for float64), zero-filled by the
                      caller; the kernels only add into it

Math (k a RoI, (i, j) a bin, n = trunc(batch_index); RoIs with n outside [0, N) give 0)
----
roi_align:  o = 0.5 if aligned else 0,  x0 = x1*s - o,  w = x2*s - o - x0  (w = max(w, 1)
            unless aligned), same for y;  bh, bw = h/PH, w/PW;
            gh = sampling_ratio if > 0 else ceil(h/PH)  (a per-RoI, data-dependent trip count)
            out[k,c,i,j] = 1/max(gh*gw, 1) * sum_{a<gh, b<gw} bilinear(in[n,c],
                               y0 + i*bh + (a+.5)*bh/gh,  x0 + j*bw + (b+.5)*bw/gw)
            bilinear(y, x): 0 if y < -1 or y > H or x < -1 or x > W; else y, x clamped to >= 0,
            low = floor, high = low + 1, both clamped to the last row/column, blended.
ps_roi_align: roi_align with o = 0.5, no minimum size, and bin (i, j) of output channel c reads
            input channel c_in = (c*PH + i)*PW + j = c*PH*PW + p   (p = i*PW + j).
roi_pool:   integer bins: x1' = round_half_away(x1*s) ...,  len = max(x2' - x1' + 1, 1),
            bin rows [floor(i*len/PH), ceil((i+1)*len/PH)) + y1' clipped to [0, H];
            out = max over the bin (0 if empty), argmax = first max in row-major order.
ps_roi_pool: as roi_pool with len = max(x2' - x1', 1), the PS channel map, and the mean.
multi_scale_roi_align: level l_k = clamp(floor(L0 + log2(sqrt(area_k)/S0) + 1e-6), k_min, k_max)
            - k_min (non-positive area -> first level), then roi_align on features[l_k]. The
            kernels get that rule as area thresholds (l_k = #{j : area_k >= t_j}, computed once on
            the host from the formula; pygen.ref.roi.fpn_level_thresholds): exact on the GPU.
Backward of the averaging ops scatters g/count * (wy*wx) to the 4 neighbours of every sample
(g/area to every pixel of the bin for ps_roi_pool, g to argmax for roi_pool).

Kernels and their grids
-----------------------
(files: this one the launchers and the offline-compile specs; align.py the roi_align / ps_roi_align /
multi_scale_roi_align kernels; pool.py the integer-bin roi_pool / ps_roi_pool kernels; gather.py
the deterministic backward; device.py the @triton.jit helpers they share. A ps op runs its plain
op's kernel with the constexpr PS=True where the two share one: every one but ps_roi_pool's
backward, which has kernels of its own)
forward, backward (atomic): one program per (RoI k, channel block, bin block); grid
    (K, cdiv(C, BLOCK_C) * cdiv(PH*PW, BLOCK_P)). The RoI's box, sample grid and bilinear
    weights are computed once per program as [BLOCK_P] vectors and reused by the whole
    [BLOCK_C, BLOCK_P] tile, so there is no per-element integer division. Channels go on the
    fast (coalesced) axis when the input's channel stride is 1. The sample loops run
    gh x gw times, a trip count read from the RoI (adaptive grid).
multi_scale_roi_align: the same per-RoI programs, one launch for all levels: each program
    computes its RoI's level and selects that level's pointer / sizes / strides / scale.
backward, deterministic=True (``*_bwd_gather_kernel``, gather.py): a gather, no atomics.
    One program per (pixel tile, image n, channel block) owns its grad_input tile in registers,
    walks the RoIs of image n in index order and stores once: bitwise reproducible. Grid: one
    axis, tiles x N x channel blocks (all levels' tiles end to end for multi_scale).

Precision: everything in float32 (DT = float64 for a float64 input, which only a direct launcher
call sends: the ops run float64 on the cpu / reference backends, pygen/ops/roi.py's _pick);
f16/bf16 are upcast right after the load, and every output store rounds to nearest even
(device._store_out, through kernels/_bf16.py: the interpreter's fp32 -> bf16 cast truncates).
Triton's fp32 '/' is approximate (div.full), so the adaptive trip count ceil(h/PH) is corrected
with exact products. The integer bins of roi_pool / ps_roi_pool are computed in float64 as the
oracle does: ceil(7 * (29/7)) is 30 in float64 but 29 in exact arithmetic, and float32 differs
elsewhere (len 57), so only float64 reproduces the oracle's bins (the division itself is done
without div.rn.f64, see device._div_exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._args import split as _split, view as _view
from .._compile_spec import compile_spec
from .._device import on_tensor_device
from .align import (
    _multi_scale_roi_align_bwd_kernel,
    _multi_scale_roi_align_fwd_kernel,
    _roi_align_bwd_kernel,
    _roi_align_fwd_kernel,
)
from .gather import (
    _multi_scale_roi_align_bwd_gather_kernel,
    _ps_roi_pool_bwd_gather_kernel,
    _roi_align_bwd_gather_kernel,
    _roi_pool_bwd_gather_kernel,
)
from .pool import _ps_roi_pool_bwd_kernel, _roi_pool_bwd_kernel, _roi_pool_fwd_kernel

# ----------------------------------------------------------------------------------------------
# launchers (docs/ARCHITECTURE.md, "Launcher contract"): tensors in, nothing allocated, None out
# ----------------------------------------------------------------------------------------------


_NUM_WARPS = 4
_MAX_LEVELS = 8


def _dt(t: Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _c_fast(t: Tensor) -> bool:
    return t.shape[1] > 1 and t.stride(1) == 1


def _launch_opts(t: Tensor) -> dict:
    return {"num_warps": _NUM_WARPS} if t.is_cuda else {}


def _feat(t: Tensor, c: int) -> tuple:
    """The ``feat`` tuple argument of a feature map: (t, N, C, H, W, the 4 strides); C the kernel's
    channel count."""
    return (t, t.shape[0], c, t.shape[2], t.shape[3], *t.stride())


def _nothing_to_pool(input: Tensor, out: Tensor, argmax: Tensor | None = None) -> bool:
    """True when a forward has no work: no output, or an empty map (every bin is empty: zeros, and
    argmax -1 for roi_pool, as the oracle gives)."""
    if out.numel() and input.numel():
        return False
    if out.numel():
        out.zero_()
        if argmax is not None:
            argmax.fill_(-1)
    return True


def _tile_blocks(c: int, p: int, gpu: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of the per-RoI kernels. GPU: 512-element tiles (4 values a thread at
    4 warps) and at most 256 bins a program: at sm_90 that is 40-90 registers with either
    Triton's ptxas (3.6 and 3.9), where 1024-element tiles took up to 186 and 2048 spilled.
    Interpreter: few, large programs (each costs ~0.4 ms)."""
    if gpu:
        bp = min(triton.next_power_of_2(p), 256)
        return max(1, min(triton.next_power_of_2(c), 512 // bp)), bp
    bp = min(triton.next_power_of_2(p), 4096)
    return max(1, min(triton.next_power_of_2(c), 16384 // bp)), bp


def _gather_blocks(c: int, h: int, w: int, gpu: bool, ps: bool = False) -> dict:
    """Blocks of the deterministic gather kernels. GPU: 4 channels x a 16x32 pixel tile (16x16
    for the PS variants). Triton lays the tile out with every channel of the block in each
    thread, so per-channel work is replicated and wide channel blocks cost registers (16
    channels: 228-254 registers); these sizes stay spill-free with the ptxas of Triton 3.6 and
    3.9. Interpreter: larger tiles, fewer programs."""
    if gpu:
        return {
            "BLOCK_C": min(4, triton.next_power_of_2(c)),
            "TILE_H": 16,
            "TILE_W": 16 if ps else 32,
            "ROI_BLOCK": 128,
        }
    return {
        "BLOCK_C": min(64, triton.next_power_of_2(c)),
        "TILE_H": min(32, triton.next_power_of_2(h)),
        "TILE_W": min(32, triton.next_power_of_2(w)),
        "ROI_BLOCK": 256,
    }


def _per_roi_launch(kernel, t: Tensor, out_shape: Sequence[int], *args, **consts) -> None:
    """Launch a per-RoI kernel (forward or atomic backward) on t's device, on its grid (K, channel
    blocks x bin blocks) for an output / grad_out of shape [K, C, PH, PW]."""
    k, c, ph, pw = out_shape
    bc, bp = _tile_blocks(c, ph * pw, t.is_cuda)
    with on_tensor_device(t):
        grid = (k, triton.cdiv(c, bc) * triton.cdiv(ph * pw, bp))
        kernel[grid](*args, **consts, BLOCK_C=bc, BLOCK_P=bp, **_launch_opts(t))


def _gather_launch(kernel, t: Tensor, c: int, maps: Sequence[Tensor], *args, ps: bool = False, **consts) -> None:
    """Launch a deterministic gather kernel on t's device: one program per (pixel tile of the maps
    [N, c, H_l, W_l] it writes, laid end to end; image; channel block)."""
    cfg = _gather_blocks(c, max(m.shape[2] for m in maps), max(m.shape[3] for m in maps), t.is_cuda, ps)
    tiles = sum(triton.cdiv(m.shape[2], cfg["TILE_H"]) * triton.cdiv(m.shape[3], cfg["TILE_W"]) for m in maps)
    if tiles == 0:
        return
    with on_tensor_device(t):
        grid = (tiles * maps[0].shape[0] * triton.cdiv(c, cfg["BLOCK_C"]),)
        kernel[grid](*args, **consts, **cfg, **_launch_opts(t))


def _bwd_launch(
    kernels: tuple,
    grad_out: Tensor,
    rois: Tensor,
    grad_input: Tensor,
    op_args: tuple,
    deterministic: bool,
    ps: bool = False,
    **consts,
) -> None:
    """Backward of roi_align / ps_roi_align / ps_roi_pool (``ps``: a position-sensitive op). kernels:
    (deterministic gather, atomic per-RoI kernel), taking (go, rois, grad_input, [K,] N, C, [C_in,]
    H, W, *op_args, PH, PW); C_in, grad_input's channel count, goes to the kernels that declare it
    (the gathers, ps_roi_pool's atomic kernel)."""
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    k, c, ph, pw = grad_out.shape
    n, c_in, h, w = grad_input.shape
    tensors, rest = (_view(grad_out), _view(rois), grad_input), (*op_args, ph, pw)
    gather, atomic = kernels
    chans = lambda kernel: (c, c_in) if "C_in" in kernel.arg_names else (c,)
    if deterministic:  # the gather's grid covers the channels it writes: C_in, or C
        args = (*tensors, k, n, *chans(gather), h, w, *rest)
        _gather_launch(gather, grad_out, chans(gather)[-1], [grad_input], *args, ps=ps, **consts)
    else:
        args = (*tensors, n, *chans(atomic), h, w, *rest)
        _per_roi_launch(atomic, grad_out, grad_out.shape, *args, **consts)


def _align_fwd(input: Tensor, rois: Tensor, out: Tensor, spatial_scale: float, sampling_ratio: int, **consts) -> None:
    """Forward of roi_align / ps_roi_align (``consts``: ALIGNED, PS, C_FAST)."""
    if _nothing_to_pool(input, out):
        return
    k, c, ph, pw = out.shape
    args = (_feat(input, c), _view(rois), out, _split(spatial_scale), int(sampling_ratio), ph, pw)
    _per_roi_launch(_roi_align_fwd_kernel, input, out.shape, *args, **consts, DT=_dt(input))


def _align_bwd(
    grad_out: Tensor,
    rois: Tensor,
    grad_input: Tensor,
    spatial_scale: float,
    sampling_ratio: int,
    deterministic: bool,
    aligned: bool,
    ps: bool,
) -> None:
    """Backward of roi_align / ps_roi_align (ps: aligned=True, as the kernels require)."""
    kernels = (_roi_align_bwd_gather_kernel, _roi_align_bwd_kernel)
    op_args = (_split(spatial_scale), int(sampling_ratio))
    consts = {"ALIGNED": aligned, "PS": ps, "DT": _dt(grad_input)}
    _bwd_launch(kernels, grad_out, rois, grad_input, op_args, deterministic, ps=ps, **consts)


def roi_align_fwd(
    input: Tensor, rois: Tensor, out: Tensor, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> None:
    consts = {"ALIGNED": bool(aligned), "PS": False, "C_FAST": _c_fast(input)}
    _align_fwd(input, rois, out, spatial_scale, sampling_ratio, **consts)


def roi_align_bwd(
    grad_out: Tensor,
    rois: Tensor,
    grad_input: Tensor,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
) -> None:
    _align_bwd(
        grad_out, rois, grad_input, spatial_scale, sampling_ratio, deterministic, aligned=bool(aligned), ps=False
    )


def ps_roi_align_fwd(input: Tensor, rois: Tensor, out: Tensor, spatial_scale: float, sampling_ratio: int) -> None:
    # the bin-fast layout: input channel c*PH*PW + p is not contiguous along either tile axis
    _align_fwd(input, rois, out, spatial_scale, sampling_ratio, ALIGNED=True, PS=True, C_FAST=False)


def ps_roi_align_bwd(
    grad_out: Tensor, rois: Tensor, grad_input: Tensor, spatial_scale: float, sampling_ratio: int, deterministic: bool
) -> None:
    _align_bwd(grad_out, rois, grad_input, spatial_scale, sampling_ratio, deterministic, aligned=True, ps=True)


def _pool_fwd(input: Tensor, rois: Tensor, out: Tensor, argmax: Tensor | None, spatial_scale: float, ps: bool) -> None:
    """Forward of roi_pool (argmax: its [K, C, PH, PW] int32 buffer) / ps_roi_pool (argmax None)."""
    if _nothing_to_pool(input, out, argmax):
        return
    k, c, ph, pw = out.shape
    args = (_feat(input, c), _view(rois), out, argmax, _split(spatial_scale), ph, pw)
    consts = {"PS": ps, "C_FAST": not ps and _c_fast(input), "DT": _dt(input)}
    _per_roi_launch(_roi_pool_fwd_kernel, input, out.shape, *args, **consts)


def roi_pool_fwd(input: Tensor, rois: Tensor, out: Tensor, argmax: Tensor, spatial_scale: float) -> None:
    _pool_fwd(input, rois, out, argmax, spatial_scale, ps=False)


def roi_pool_bwd(grad_out: Tensor, argmax: Tensor, rois: Tensor, grad_input: Tensor, deterministic: bool) -> None:
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    k, c, ph, pw = grad_out.shape
    n, _, h, w = grad_input.shape
    tensors = (_view(grad_out), _view(argmax), _view(rois), grad_input)
    if not deterministic:
        args = (*tensors, n, c, h, w, ph, pw)
        _per_roi_launch(_roi_pool_bwd_kernel, grad_out, grad_out.shape, *args, DT=_dt(grad_input))
        return
    # argmax is a flat index: the gather owns flat pixel chunks of the plane, not 2-D tiles
    gpu = grad_out.is_cuda
    chunk = 256 if gpu else min(4096, triton.next_power_of_2(h * w))
    bc = min(8 if gpu else 64, triton.next_power_of_2(c))
    blocks = {"BLOCK_C": bc, "BLOCK_P": min(64 if gpu else 4096, triton.next_power_of_2(ph * pw)), "CHUNK": chunk}
    with on_tensor_device(grad_out):
        _roi_pool_bwd_gather_kernel[(triton.cdiv(h * w, chunk) * n * triton.cdiv(c, bc),)](
            *tensors,
            k,
            n,
            c,
            h * w,
            ph,
            pw,
            DT=_dt(grad_input),
            **blocks,
            ROI_BLOCK=128 if gpu else 256,
            **_launch_opts(grad_out),
        )


def ps_roi_pool_fwd(input: Tensor, rois: Tensor, out: Tensor, spatial_scale: float) -> None:
    _pool_fwd(input, rois, out, None, spatial_scale, ps=True)


def ps_roi_pool_bwd(
    grad_out: Tensor, rois: Tensor, grad_input: Tensor, spatial_scale: float, deterministic: bool
) -> None:
    kernels = (_ps_roi_pool_bwd_gather_kernel, _ps_roi_pool_bwd_kernel)
    op_args = (_split(spatial_scale),)
    _bwd_launch(kernels, grad_out, rois, grad_input, op_args, deterministic, ps=True, DT=_dt(grad_input))


def _level_args(tensors: Sequence[Tensor], spatial_scales: Sequence[float], with_strides: bool) -> tuple:
    """The per-level tuple arguments of the multi-level kernels, one per kind (pointers, heights,
    widths[, strides over N, C, H, W], scales), each padded to 8 slots with level 0."""
    pad = list(range(len(tensors))) + [0] * (_MAX_LEVELS - len(tensors))
    levels = [tensors[i] for i in pad]
    args = [tuple(levels), tuple(t.shape[2] for t in levels), tuple(t.shape[3] for t in levels)]
    if with_strides:
        args += [tuple(t.stride(d) for t in levels) for d in range(4)]
    return (*args, tuple(float(spatial_scales[i]) for i in pad))


def _level_thresholds(spatial_scales: Sequence[float], canonical_scale: float, canonical_level: float) -> tuple:
    """The ``fpn`` argument of the multi-level kernels: 8 float32 area thresholds, NaN-padded."""
    from pygen.ref.roi import fpn_level_thresholds  # the rule lives once, in the oracle

    t = list(fpn_level_thresholds(spatial_scales, canonical_scale, canonical_level, torch.float32))[:8]
    return tuple(t + [float("nan")] * (8 - len(t)))


def multi_scale_roi_align_fwd(
    features: Sequence[Tensor],
    rois: Tensor,
    out: Tensor,
    spatial_scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: float,
) -> None:
    f0 = features[0]
    if out.numel() == 0:
        return
    if f0.shape[0] == 0:  # no images (an empty level alone is the kernel's business: zeros)
        out.zero_()
        return
    k, c, ph, pw = out.shape
    thresholds = _level_thresholds(spatial_scales, canonical_scale, canonical_level)
    args = (_view(rois), out, f0.shape[0], c, int(sampling_ratio), ph, pw, thresholds)
    args += _level_args(features, spatial_scales, True)
    consts = {"NUM_LEVELS": len(features), "ALIGNED": bool(aligned), "C_FAST": _c_fast(f0), "DT": _dt(f0)}
    _per_roi_launch(_multi_scale_roi_align_fwd_kernel, f0, out.shape, *args, **consts)


def multi_scale_roi_align_bwd(
    grad_out: Tensor,
    rois: Tensor,
    grad_features: Sequence[Tensor],
    spatial_scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float,
    canonical_level: float,
    deterministic: bool,
) -> None:
    k, c, ph, pw = grad_out.shape
    n = grad_features[0].shape[0]
    if grad_out.numel() == 0 or n == 0 or c == 0:
        return
    thresholds = _level_thresholds(spatial_scales, canonical_scale, canonical_level)
    rest = (int(sampling_ratio), ph, pw, thresholds, *_level_args(grad_features, spatial_scales, False))
    consts = {"NUM_LEVELS": len(grad_features), "ALIGNED": bool(aligned), "DT": _dt(grad_features[0])}
    views = (_view(grad_out), _view(rois))
    if deterministic:
        kernel = _multi_scale_roi_align_bwd_gather_kernel
        _gather_launch(kernel, grad_out, c, grad_features, *views, k, n, c, *rest, **consts)
    else:
        kernel = _multi_scale_roi_align_bwd_kernel
        _per_roi_launch(kernel, grad_out, grad_out.shape, *views, n, c, *rest, **consts)


# ----------------------------------------------------------------------------------------------
# COMPILE_SPECS: representative offline compiles for `pygen inspect` and the compile tests
# ----------------------------------------------------------------------------------------------
# One kernels/_compile_spec.compile_spec per (kernel, representative configuration), at the FPN /
# Mask R-CNN / R-FCN heads at 800x1333 ("what"). Integer arguments equal to 1 (unit strides) are
# constexprs, as Triton's JIT specialises them at a real launch. The specs carry no divisibility
# attrs (aligned=False): they were recorded that way (docs/inspect/).


def _arg_types(data: str) -> dict[str, str | tuple[str, ...]]:
    """The Triton type of every kernel argument that is not an i32, by name (a tuple of types for a
    tuple argument). ``data``: the type of the feature / output / grad_out pointers (the RoI table
    follows it in these specs); the accumulation buffers are float32, the scales and FPN
    thresholds fp32 scalars."""
    slots = lambda t: (t,) * _MAX_LEVELS
    types: dict[str, str | tuple[str, ...]] = {"out_ptr": data, "grad_in_ptr": "*fp32", "argmax_ptr": "*i32"}
    types.update(feat=(data, *("i32",) * 8), rois=(data, "i32", "i32"), go=(data, *("i32",) * 4))
    types.update(am=("*i32", *("i32",) * 4), scale=("fp32", "fp32"), fpn=slots("fp32"), scales=slots("fp32"))
    types.update(feats=slots(data), grads=slots("*fp32"), heights=slots("i32"), widths=slots("i32"))
    types.update({f"strides_{d}": slots("i32") for d in "nchw"})
    return types


def _spec(fn, what: str, consts: dict, data: str = "*fp32") -> dict:
    types = _arg_types(data)
    sig = {a: "constexpr" if a in consts else types.get(a, "i32") for a in fn.arg_names}  # (tuple elements:
    # compile_spec marks the "arg[i]" constexprs)
    name = getattr(fn, "__name__", None) or fn.fn.__name__
    return compile_spec(fn, name, sig, dict(consts), _NUM_WARPS, None, aligned=False, what=what)


def _compile_specs() -> list[dict]:
    f32 = tl.float32
    nchw = {"feat[8]": 1, "rois[2]": 1}  # NCHW input: unit W stride
    cl = {"feat[6]": 1, "rois[2]": 1}  # channels_last input: unit C stride
    go = {"go[4]": 1, "rois[2]": 1}  # contiguous grad_out
    tile = {"DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}  # a 7x7 head's per-RoI tile
    gather = {"DT": f32, "BLOCK_C": 4, "TILE_H": 16, "TILE_W": 32, "ROI_BLOCK": 128}
    ps_gather = {**gather, "TILE_W": 16}
    am = {"go[4]": 1, "am[4]": 1, "rois[2]": 1}  # contiguous grad_out and argmax
    fpn = {"NUM_LEVELS": 4, "ALIGNED": False, "DT": f32}
    rfcn = "R-FCN: C_out=21, 7x7"
    plain, ps = {"ALIGNED": False, "PS": False}, {"ALIGNED": True, "PS": True}  # roi_align, ps_roi_align
    return [
        _spec(_roi_align_fwd_kernel, "FPN box head: C=256, 7x7, NCHW fp32", {**nchw, **plain, "C_FAST": False, **tile}),
        _spec(
            _roi_align_fwd_kernel,
            "channels_last bf16, C=256, 7x7, aligned",
            {**cl, "ALIGNED": True, "PS": False, "C_FAST": True, **tile},
            data="*bf16",
        ),
        _spec(
            _roi_align_fwd_kernel,
            "Mask R-CNN mask head: C=256, 14x14, NCHW fp32",
            {**nchw, "ALIGNED": True, "PS": False, "C_FAST": False, "DT": f32, "BLOCK_C": 2, "BLOCK_P": 256},
        ),
        _spec(_roi_align_bwd_kernel, "C=256, 7x7, atomics", {**go, **plain, **tile}),
        _spec(_roi_align_bwd_gather_kernel, "C=256, 7x7, deterministic gather", {**go, **plain, **gather}),
        _spec(_roi_align_fwd_kernel, f"{rfcn} (C_in=1029), NCHW fp32", {**nchw, **ps, "C_FAST": False, **tile}),
        _spec(_roi_align_bwd_kernel, f"{rfcn}, atomics", {**go, **ps, **tile}),
        _spec(_roi_align_bwd_gather_kernel, f"{rfcn}, deterministic gather", {**go, **ps, **ps_gather}),
        _spec(
            _roi_pool_fwd_kernel, "Fast R-CNN: C=512, 7x7, NCHW fp32", {**nchw, "PS": False, "C_FAST": False, **tile}
        ),
        _spec(_roi_pool_bwd_kernel, "Fast R-CNN: C=512, 7x7, atomics", {**am, **tile}),
        _spec(
            _roi_pool_bwd_gather_kernel,
            "Fast R-CNN: C=512, 7x7, deterministic gather",
            {**am, **tile, "CHUNK": 256, "ROI_BLOCK": 128},
        ),
        _spec(
            _roi_pool_fwd_kernel,
            f"{rfcn}, NCHW fp32",
            {"argmax_ptr": None, **nchw, "PS": True, "C_FAST": False, **tile},
        ),
        _spec(_ps_roi_pool_bwd_kernel, f"{rfcn}, atomics", {**go, **tile}),
        _spec(_ps_roi_pool_bwd_gather_kernel, f"{rfcn}, deterministic gather", {**go, **ps_gather}),
        _spec(
            _multi_scale_roi_align_fwd_kernel,
            "FPN P2-P5: C=256, 7x7, NCHW fp32",
            {**{f"strides_w[{i}]": 1 for i in range(8)}, "rois[2]": 1, **fpn, "C_FAST": False, **tile},
        ),
        _spec(_multi_scale_roi_align_bwd_kernel, "FPN P2-P5: C=256, 7x7, atomics", {**go, **fpn, **tile}),
        _spec(
            _multi_scale_roi_align_bwd_gather_kernel,
            "FPN P2-P5: C=256, 7x7, deterministic gather",
            {**go, **fpn, **gather},
        ),
    ]


COMPILE_SPECS = _compile_specs()
