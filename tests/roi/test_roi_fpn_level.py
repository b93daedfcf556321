"""The FPN level choice of multi_scale_roi_align is exact on every backend: boxes whose area lies
exactly at, and one ulp on either side of, each level boundary land on the level that
torchvision's LevelMapper formula, floor(4 + log2(sqrt(area) / 224) + 1e-6), gives on the CPU.
The kernels compare areas with thresholds computed once from that formula
(pygen.ref.roi.fpn_level_thresholds), so the GPU's approximate division and lg2 cannot move a
box across a boundary (issue 11)."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_params

from pygen import ops
from pygen.ref import roi as ref

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def formula_levels(area: torch.Tensor, scales=SCALES, canonical_scale=224.0, canonical_level=4.0) -> torch.Tensor:
    """torchvision's LevelMapper rule, clamped and shifted to a level index, in area's dtype."""
    k_min, k_max = ref.level_range(scales)
    lvl = ref._fpn_level_formula(area, canonical_scale, canonical_level, k_min)
    return (lvl.clamp(k_min, k_max) - k_min).long()


def boundary_areas(dtype: torch.dtype, scales=SCALES, **kw) -> torch.Tensor:
    """Each threshold and its two neighbouring floats."""
    out = []
    for t in ref.fpn_level_thresholds(scales, dtype=dtype, **kw):
        t = torch.tensor([t], dtype=dtype)
        out += [torch.nextafter(t, torch.zeros_like(t)), t, torch.nextafter(t, torch.full_like(t, float("inf")))]
    return torch.cat(out)


def boxes_with_areas(areas: torch.Tensor) -> torch.Tensor:
    """rois [K, 5] (batch 0) whose (x2 - x1) * (y2 - y1), computed in areas' dtype, equals each
    area exactly: a near-square box at the image origin, its height nudged ulp by ulp."""
    rows = []
    for a in areas:
        w = torch.sqrt(a).to(a.dtype)
        h = a / w
        for _ in range(64):
            p = w * h
            if p == a:
                break
            h = torch.nextafter(h, torch.full_like(h, float("inf") if p < a else 0.0))
        assert w * h == a, f"no box of area {a.item()!r}"
        rows.append(torch.stack([torch.zeros_like(a), torch.zeros_like(a), torch.zeros_like(a), w, h]))
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("canonical", [(224.0, 4.0), (160.0, 5.0)])
def test_thresholds_reproduce_the_formula(dtype, canonical):
    cs, cl = canonical
    g = torch.Generator().manual_seed(0)
    area = torch.cat(
        [
            torch.rand(50_000, generator=g, dtype=torch.float64) * 4e5,
            torch.rand(50_000, generator=g, dtype=torch.float64) ** 6 * 1e8,
        ]
    ).to(dtype)
    area = torch.cat(
        [
            area,
            boundary_areas(dtype, canonical_scale=cs, canonical_level=cl),
            torch.tensor([0.0, -3.0, float("inf"), float("nan")], dtype=dtype),
        ]
    )
    rois = torch.zeros(area.numel(), 5, dtype=dtype)
    rois[:, 3] = area  # width = area, height 1: the product is the area itself
    rois[:, 4] = 1.0
    got = ref.fpn_levels(rois, SCALES, cs, cl)
    want = formula_levels(area, canonical_scale=cs, canonical_level=cl)
    assert torch.equal(got, want), (area[got != want][:5], got[got != want][:5], want[got != want][:5])


def test_boundary_boxes_straddle_each_boundary():
    # the test below is only meaningful if the three boxes around each threshold differ in level
    levels = formula_levels(boundary_areas(torch.float32)).view(-1, 3)
    assert torch.equal(levels, torch.tensor([[0, 1, 1], [1, 2, 2], [2, 3, 3]])), levels


def test_matches_torchvision_level_mapper():
    poolers = pytest.importorskip("torchvision.ops.poolers")
    mapper = poolers.initLevelMapper(2, 5)
    areas = torch.cat([boundary_areas(torch.float32), torch.tensor([1.0, 5e3, 3e4, 1e5, 1e6])])
    rois = boxes_with_areas(areas)
    want = mapper([rois[:, 1:]]).long()
    assert torch.equal(ref.fpn_levels(rois, SCALES), want)


@pytest.mark.parametrize("device,backend", backend_params())
def test_kernels_pick_the_level_at_each_boundary(device, backend):
    dtypes = [torch.float32] + ([torch.float64] if backend in ("cpu", "reference") else [])
    for dtype in dtypes:
        areas = boundary_areas(dtype)
        rois = boxes_with_areas(areas).to(device)
        # level l is the constant l + 1, so the pooled value names the level the box was read from
        feats = [
            torch.full((1, 1, 800 // int(1 / s), 1344 // int(1 / s)), float(l + 1), dtype=dtype, device=device)
            for l, s in enumerate(SCALES)
        ]
        out = ops.multi_scale_roi_align(feats, rois, 1, SCALES, sampling_ratio=1, backend=backend)
        got = out.flatten().double().round().long().cpu() - 1
        want = formula_levels(areas)
        assert torch.equal(got, want), f"{backend} {dtype}: levels {got.tolist()}, formula {want.tolist()}"


@pytest.mark.parametrize("device,backend", backend_params())
def test_a_level_with_no_map_pools_zeros(device, backend):
    """Maps at 1/8 and 1/32 only (torchvision's featmap_names ['1', '3']): the level range is
    k = 3..5, three levels for two maps, and torchvision's LevelMapper gives level index i the
    i-th map; a box of index 2 has no map and pools zeros with no gradient (the C++ backend took
    the last map for it)."""
    scales = [1 / 8, 1 / 32]
    feats = [
        torch.full((1, 1, 800 // int(1 / s), 1216 // int(1 / s)), float(i + 1), device=device, requires_grad=True)
        for i, s in enumerate(scales)
    ]
    rois = torch.tensor([[0, 0, 0, 50, 50], [0, 0, 0, 224, 224], [0, 0, 0, 600, 600.0]], device=device)
    assert ref.fpn_levels(rois.cpu(), scales).tolist() == [0, 1, 2]
    out = ops.multi_scale_roi_align(feats, rois, 1, scales, sampling_ratio=1, backend=backend)
    assert out.flatten().tolist() == [1.0, 2.0, 0.0]  # map 1, map 2, none
    grads = torch.autograd.grad(out[2].sum(), feats, retain_graph=True, materialize_grads=True)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    assert [float(g.sum()) for g in torch.autograd.grad(out.sum(), feats)] == [1.0, 1.0]
