"""RoI pooling in plain PyTorch: the test oracle, the ``reference`` backend, and the readable
statement of each op's math. Semantics are torchvision.ops' (see docs/roi.md for the two places
where pygen deliberately differs).

Layouts
-------
input  : [N, C, H, W] feature map (any strides)
rois   : [K, 5] rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates
output : [K, C, PH, PW] (roi_pool / roi_align), [K, C // (PH*PW), PH, PW] (PS variants)

roi_align (Mask R-CNN), for RoI k and bin (i, j)::

    o      = 0.5 if aligned else 0
    x0     = x1*scale - o,  w = x2*scale - o - x0   (w = max(w, 1) unless aligned); same for y
    bh, bw = h / PH, w / PW
    gh, gw = sampling_ratio if > 0 else ceil(h / PH), ceil(w / PW)
    out    = 1/max(gh*gw, 1) * sum_{a<gh, b<gw} bilinear(in[n], y0 + i*bh + (a+.5)*bh/gh,
                                                         x0 + j*bw + (b+.5)*bw/gw)

bilinear(y, x) is 0 when y < -1, y > H, x < -1 or x > W; otherwise y, x are clamped to >= 0 and
the four neighbours (clamped to the last row/column) are blended.

roi_pool (Fast R-CNN): integer bins from rounded (half away from zero) box corners, roi size
``max(x2' - x1' + 1, 1)``, bin (i, j) covers rows ``[floor(i*bh), ceil((i+1)*bh))`` shifted by
the box start and clipped to [0, H]; out = max over the bin as torchvision takes it: from
-FLT_MAX, only greater values count (NaN and -inf never; a bin of nothing else gives -FLT_MAX and
no gradient); 0 for an empty bin.

ps_roi_align / ps_roi_pool (R-FCN): as above (PS-align always uses o = 0.5 and no minimum
size; PS-pool uses size ``max(x2' - x1', 1)`` and averages), but bin (i, j) of output channel c
reads input channel ``(c*PH + i)*PW + j``.

multi_scale_roi_align (FPN): RoI k goes to level
``clamp(floor(canonical_level + log2(sqrt(area_k)/canonical_scale) + 1e-6), k_min, k_max) - k_min``
with k_min = round(-log2(scales[0])), k_max = round(-log2(scales[-1])), then roi_align on that
level's map with that level's scale. Boxes of non-positive area go to the first level.
"""

from __future__ import annotations

import functools
import math

import torch

# Bound on the elements of one gathered chunk, so the reference runs at benchmark sizes too.
_CHUNK_ELEMS = 1 << 25


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunks(k: int, per_roi: int):
    step = max(1, _CHUNK_ELEMS // max(per_roi, 1))
    for s in range(0, k, step):
        yield s, min(k, s + step)


def _empty_result(out: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """Zeros that stay attached to ``input``'s autograd graph (zero gradient, as the kernels give):
    the sum of an empty slice of it, so a NaN or inf in ``input`` cannot reach them (sum * 0 did)."""
    return out.to(input.dtype) + input.reshape(-1)[:0].sum().to(input.dtype)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _axis_samples(start, size, pooled: int, grid, gmax: int):
    """Sample coordinates along one axis: [K, pooled, gmax] and the mask of real samples."""
    dt = start.dtype
    bin_size = size / pooled
    p = torch.arange(pooled, device=start.device, dtype=dt).view(1, -1, 1)
    g = torch.arange(gmax, device=start.device, dtype=dt).view(1, 1, -1)
    gridf = grid.to(dt).clamp_min(1).view(-1, 1, 1)
    coord = start.view(-1, 1, 1) + p * bin_size.view(-1, 1, 1) + (g + 0.5) * bin_size.view(-1, 1, 1) / gridf
    real = g < grid.view(-1, 1, 1).to(dt)
    return coord, real.expand_as(coord)


def _axis_bilinear(coord, real, size: int):
    """Per-axis part of torchvision's bilinear_interpolate: low/high indices and weights."""
    valid = real & (coord >= -1.0) & (coord <= size)
    c = coord.clamp_min(0)
    low = torch.floor(c).long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, max(size - 1, 0)), low)
    high = torch.where(at_edge, low, low + 1)
    c = torch.where(at_edge, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    zero = torch.zeros_like(frac)
    return low, high, torch.where(valid, 1 - frac, zero), torch.where(valid, frac, zero)


def _zeros_and_rois(input, rois, pooled_h: int, pooled_w: int, ps: bool):
    """(the zero output [K, C_out, PH, PW] in the compute dtype, rois in that dtype), the rois None
    when there is nothing to compute (no RoI, no output channel or an empty map)."""
    n, c, h, w = input.shape
    k = rois.shape[0]
    dt = _compute_dtype(input)
    c_out = c // (pooled_h * pooled_w) if ps else c
    out = input.new_zeros((k, c_out, pooled_h, pooled_w), dtype=dt)
    if k == 0 or c_out == 0 or h == 0 or w == 0:
        return out, None
    return out, rois.to(dt)


def _channels_last(input, dt: torch.dtype, c_out: int, pooled_h: int, pooled_w: int, ps: bool):
    """(input as [N, H*W, C] in ``dt``, so one advanced-indexing gather returns channels last;
    for the position-sensitive ops the input channel (c * PH + i) * PW + j of output channel c at
    bin (i, j), shaped [1, PH, 1, PW, 1, C_out], else None)."""
    n, c, h, w = input.shape
    feat = input.to(dt).reshape(n, c, h * w).transpose(1, 2)
    if not ps:
        return feat, None
    dev = input.device
    ch = (
        torch.arange(c_out, device=dev).view(1, 1, 1, 1, 1, -1) * pooled_h
        + torch.arange(pooled_h, device=dev).view(1, -1, 1, 1, 1, 1)
    ) * pooled_w + torch.arange(pooled_w, device=dev).view(1, 1, 1, -1, 1, 1)
    return feat, ch


def _batch(col: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, valid) of RoI batch-index values: truncated, as torchvision and the kernels do,
    so -1 < b < N is image trunc(b); any other value (or NaN) is invalid, read as image 0, and its
    RoI pools zeros (what the kernels give when value checks are off)."""
    valid = (col > -1) & (col < n)
    return torch.where(valid, col, 0).long(), valid


def _sampled_average(input, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, offset, min_size, ps: bool):
    """Shared body of roi_align and ps_roi_align (bilinear samples averaged per bin)."""
    out, r = _zeros_and_rois(input, rois, pooled_h, pooled_w, ps)
    if r is None:
        return _empty_result(out, input)
    (h, w), k, dt, c_out = input.shape[2:], r.shape[0], r.dtype, out.shape[1]
    x0 = r[:, 1] * spatial_scale - offset
    y0 = r[:, 2] * spatial_scale - offset
    rw = r[:, 3] * spatial_scale - offset - x0
    rh = r[:, 4] * spatial_scale - offset - y0
    if min_size:
        rw, rh = rw.clamp_min(1.0), rh.clamp_min(1.0)
    if sampling_ratio > 0:
        gh = torch.full((k,), sampling_ratio, device=r.device, dtype=torch.long)
        gw = gh
    else:
        gh = torch.ceil(rh / pooled_h).long()
        gw = torch.ceil(rw / pooled_w).long()
    count = (gh * gw).clamp_min(1).to(dt)
    ghmax, gwmax = int(gh.max().clamp_min(0)), int(gw.max().clamp_min(0))
    if ghmax == 0 or gwmax == 0:
        return _empty_result(out, input)
    feat, ch = _channels_last(input, dt, c_out, pooled_h, pooled_w, ps)
    per_roi = pooled_h * ghmax * pooled_w * gwmax * c_out
    for s, e in _chunks(k, per_roi):
        ys, ry = _axis_samples(y0[s:e], rh[s:e], pooled_h, gh[s:e], ghmax)
        xs, rx = _axis_samples(x0[s:e], rw[s:e], pooled_w, gw[s:e], gwmax)
        yl, yh, wyl, wyh = _axis_bilinear(ys, ry, h)
        xl, xh, wxl, wxh = _axis_bilinear(xs, rx, w)
        b, ok = _batch(r[s:e, 0], input.shape[0])
        b = b.view(-1, 1, 1, 1, 1, 1)
        acc = 0
        for yi, wy in ((yl, wyl), (yh, wyh)):
            for xi, wx in ((xl, wxl), (xh, wxh)):
                hw = yi[:, :, :, None, None] * w + xi[:, None, None, :, :]
                # [k, PH, gh, PW, gw, C']
                vals = feat[b, hw.unsqueeze(-1), ch] if ps else feat[b.squeeze(-1), hw]
                acc = acc + (wy[:, :, :, None, None, None] * wx[:, None, None, :, :, None]) * vals
        pooled = acc.sum(dim=(2, 4)).permute(0, 3, 1, 2)  # [k, C', PH, PW]
        out[s:e] = torch.where(ok.view(-1, 1, 1, 1), pooled / count[s:e].view(-1, 1, 1, 1), 0.0)
    return out.to(input.dtype)


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    ph, pw = output_size
    return _sampled_average(
        input, rois, ph, pw, spatial_scale, sampling_ratio, 0.5 if aligned else 0.0, min_size=not aligned, ps=False
    )


def ps_roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1):
    ph, pw = output_size
    return _sampled_average(input, rois, ph, pw, spatial_scale, sampling_ratio, 0.5, min_size=False, ps=True)


def _integer_bins(rois, pooled: int, size: int, lo_col: int, hi_col: int, plus_one: int, dt):
    """Rows (or columns) [start, end) of every bin of every RoI, clipped to [0, size]: [K, pooled]."""
    start = _round_half_away(rois[:, lo_col] * 1.0).long()
    end = _round_half_away(rois[:, hi_col] * 1.0).long()
    length = (end - start + plus_one).clamp_min(1).to(dt)
    bin_size = (length / pooled).view(-1, 1)
    p = torch.arange(pooled, device=rois.device, dtype=dt).view(1, -1)
    lo = torch.floor(p * bin_size).long() + start.view(-1, 1)
    hi = torch.ceil((p + 1) * bin_size).long() + start.view(-1, 1)
    return lo.clamp(0, size), hi.clamp(0, size)


def _size_sorted_chunks(ext_h: torch.Tensor, ext_w: torch.Tensor, per_cell: int):
    """Yield (RoI indices, bin height, bin width) chunks of RoIs of similar bin size, each chunk
    gathering at most about _CHUNK_ELEMS elements."""
    order = torch.argsort(ext_h * ext_w)
    eh, ew = ext_h[order].tolist(), ext_w[order].tolist()
    start, bh, bw = 0, 1, 1
    for i in range(len(eh)):
        nbh, nbw = max(bh, eh[i]), max(bw, ew[i])
        if i > start and (i - start + 1) * nbh * nbw * per_cell > _CHUNK_ELEMS:
            yield order[start:i], bh, bw
            start, nbh, nbw = i, eh[i], ew[i]
        bh, bw = nbh, nbw
    if eh:
        yield order[start:], bh, bw


# roi_pool's start value: torchvision's -FLT_MAX, in every dtype
POOL_MAX_START = -torch.finfo(torch.float32).max


def _integer_pool(input, rois, pooled_h, pooled_w, spatial_scale, plus_one: int, ps: bool, reduce_max: bool):
    """Shared body of roi_pool (max) and ps_roi_pool (mean) over integer bins."""
    out, r = _zeros_and_rois(input, rois, pooled_h, pooled_w, ps)
    if r is None:
        return _empty_result(out, input)
    (h, w), dt, c_out = input.shape[2:], r.dtype, out.shape[1]
    scaled = torch.cat([r[:, :1], r[:, 1:] * spatial_scale], dim=1)
    hs, he = _integer_bins(scaled, pooled_h, h, 2, 4, plus_one, dt)
    ws, we = _integer_bins(scaled, pooled_w, w, 1, 3, plus_one, dt)
    feat, ch = _channels_last(input, dt, c_out, pooled_h, pooled_w, ps)
    # Bins are padded to the largest bin of a chunk; visiting RoIs by bin size keeps that padding
    # small (one huge RoI would otherwise pad all of them).
    ext_h = (he - hs).amax(dim=1).clamp_min(1)
    ext_w = (we - ws).amax(dim=1).clamp_min(1)
    for idx, bh, bw in _size_sorted_chunks(ext_h, ext_w, pooled_h * pooled_w * c_out):
        oy = torch.arange(bh, device=r.device).view(1, 1, -1)
        ox = torch.arange(bw, device=r.device).view(1, 1, -1)
        yy = hs[idx, :, None] + oy  # [k, PH, bh]
        xx = ws[idx, :, None] + ox  # [k, PW, bw]
        inside = (
            (yy < he[idx, :, None])[:, :, :, None, None] & (xx < we[idx, :, None])[:, None, None, :, :]
        ).unsqueeze(-1)
        hw = yy.clamp(max=h - 1)[:, :, :, None, None] * w + xx.clamp(max=w - 1)[:, None, None, :, :]
        b, ok = _batch(r[idx, 0], input.shape[0])
        b = b.view(-1, 1, 1, 1, 1, 1)
        # [k, PH, bh, PW, bw, C']
        vals = feat[b, hw.unsqueeze(-1), ch] if ps else feat[b.squeeze(-1), hw]
        empty = ~inside.any(dim=4).any(dim=2)  # [k, PH, PW, 1]
        if reduce_max:
            # torchvision's max starts from -FLT_MAX and takes only greater values: NaN, -inf and
            # -FLT_MAX never win (nor get gradient), a bin of nothing else gives -FLT_MAX
            vals = torch.where(inside & (vals > POOL_MAX_START), vals, POOL_MAX_START)
            flat = vals.permute(0, 1, 3, 5, 2, 4).reshape(len(idx), pooled_h, pooled_w, -1, bh * bw)
            best = flat.max(dim=-1).values  # [k, PH, PW, C']
            best = torch.where(empty, torch.zeros_like(best), best)
        else:
            area = inside.sum(dim=(2, 4)).to(dt).clamp_min(1)  # [k, PH, PW, 1]
            best = (vals * inside).sum(dim=(2, 4)) / area
        out[idx] = torch.where(ok.view(-1, 1, 1, 1), best.permute(0, 3, 1, 2), 0.0)
    return out.to(input.dtype)


def roi_pool(input, rois, output_size, spatial_scale=1.0):
    ph, pw = output_size
    return _integer_pool(input, rois, ph, pw, spatial_scale, plus_one=1, ps=False, reduce_max=True)


def ps_roi_pool(input, rois, output_size, spatial_scale=1.0):
    ph, pw = output_size
    return _integer_pool(input, rois, ph, pw, spatial_scale, plus_one=0, ps=True, reduce_max=False)


def level_range(spatial_scales) -> tuple[int, int]:
    """(k_min, k_max) of the FPN levels given each level's scale (finest first)."""
    return round(-math.log2(spatial_scales[0])), round(-math.log2(spatial_scales[-1]))


def _fpn_level_formula(area, canonical_scale, canonical_level, k_min):
    """torchvision's LevelMapper rule on box areas, in the areas' dtype, before the clamp:
    floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6); k_min where area <= 0."""
    pos = area > 0
    s = torch.sqrt(torch.where(pos, area, torch.ones_like(area)))
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + 1e-6)
    return torch.where(pos, lvl, torch.full_like(lvl, k_min))


@functools.lru_cache(maxsize=256)
def _thresholds(scales: tuple, canonical_scale: float, canonical_level: float, dtype: torch.dtype) -> tuple:
    k_min, k_max = level_range(scales)
    ibits = {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    hi_bits = torch.tensor(float("inf"), dtype=dtype).view(ibits).item()
    out = []
    for k in range(k_min + 1, k_max + 1):
        # The rule is non-decreasing in the area, so the smallest area of level >= k is found by
        # bisection over the bit patterns of the positive floats (their order is the integers').
        lo, hi = 0, hi_bits  # formula(+0) < k (k_min), formula(+inf) >= k
        while hi - lo > 1:
            mid = (lo + hi) // 2
            a = torch.tensor(mid, dtype=ibits).view(dtype).reshape(1)
            if _fpn_level_formula(a, canonical_scale, canonical_level, k_min).item() >= k:
                hi = mid
            else:
                lo = mid
        out.append(torch.tensor(hi, dtype=ibits).view(dtype).item())
    return tuple(out)


def fpn_level_thresholds(spatial_scales, canonical_scale=224, canonical_level=4, dtype=torch.float32) -> tuple:
    """The FPN level rule as area thresholds: ``t[j]`` is the smallest area (a ``dtype`` value)
    that torchvision's LevelMapper formula, evaluated in ``dtype`` on the CPU, sends to level
    index j + 1 or beyond (len(t) = k_max - k_min). A box's level index is then the number of
    thresholds <= its area (0 for area <= 0 or NaN). Comparing areas with these needs no sqrt, no
    division and no log, so every backend and device picks exactly the level the CPU formula
    picks, also for boxes one ulp from a boundary, whatever its log2 or division rounding."""
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return _thresholds(tuple(float(s) for s in spatial_scales), float(canonical_scale), float(canonical_level), dtype)


def fpn_levels(rois, spatial_scales, canonical_scale=224, canonical_level=4):
    """Index into ``spatial_scales`` of the level each RoI is pooled from: int64 [K]. Areas are
    computed in float64 for float64 rois and in float32 otherwise, and compared with
    ``fpn_level_thresholds`` (the kernels do the same), which reproduces torchvision's LevelMapper
    formula evaluated on the CPU (tests/roi/test_roi_fpn_level.py checks both at every boundary)."""
    r = rois.to(torch.float64) if rois.dtype == torch.float64 else rois.to(torch.float32)
    area = (r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])
    t = torch.tensor(
        fpn_level_thresholds(spatial_scales, canonical_scale, canonical_level, r.dtype), dtype=r.dtype, device=r.device
    )
    # area >= t[j] counted over j; NaN compares false everywhere, so it lands on level 0
    return (area[:, None] >= t[None, :]).sum(dim=1, dtype=torch.int64)


def multi_scale_roi_align(
    features,
    rois,
    output_size,
    spatial_scales,
    sampling_ratio=-1,
    canonical_scale=224,
    canonical_level=4,
    aligned=False,
):
    levels = fpn_levels(rois, spatial_scales, canonical_scale, canonical_level)
    ph, pw = output_size
    f0 = features[0]
    out = _empty_result(f0.new_zeros((rois.shape[0], f0.shape[1], ph, pw)), f0)
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.nonzero(levels == lvl).flatten()
        if idx.numel():
            out = out.index_put((idx,), roi_align(feat, rois[idx], output_size, scale, sampling_ratio, aligned))
        else:  # a map no box reaches gets a zero gradient, as torchvision's and the kernels' (not None)
            out = _empty_result(out, feat)
    return out
