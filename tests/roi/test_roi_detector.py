"""A whole torchvision detector with pygen's RoI modules swapped in (pygen.patch.patch_torchvision):
Faster R-CNN must script, FX-trace (torchvision's feature extraction) and torch.compile as the
stock model does, with the stock model's outputs.

torchvision is optional: these run where it is installed (torchvision 0.29.1 with torch 2.14.1 in
the baseline venv of shared/tools/baseline-venv.sh; PyPI's torchvision does not import beside the
CPU machines' torch 2.13.0 wheel, so CI skips them, as it skips the other torchvision comparisons).
"""

from __future__ import annotations

import copy

import pytest
import torch

import pygen
import pygen.patch

tvm = pytest.importorskip("torchvision.models.detection", reason="torchvision is optional (pygen.patch target)")


def _needs_cpu_kernels():
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("the scripted RoI modules call the cpu kernel op on CPU tensors")


@pytest.fixture(scope="module")
def detectors():
    torch.manual_seed(0)
    stock = tvm.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=96, max_size=128, box_score_thresh=0.0
    ).eval()
    patched = copy.deepcopy(stock)
    swapped = pygen.patch.patch_torchvision(patched)
    assert swapped == {"MultiScaleRoIAlign": 1}, swapped
    return stock, patched


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 120, generator=g), torch.rand(3, 110, 90, generator=g)]


def _assert_same_detections(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)


def test_patched_detector_matches_stock(detectors):
    stock, patched = detectors
    with torch.no_grad():
        _assert_same_detections(patched(_images()), stock(_images()))


def test_patched_detector_scripts(detectors):
    _needs_cpu_kernels()
    stock, patched = detectors
    scripted = torch.jit.script(patched)
    with torch.no_grad():
        losses, dets = scripted(_images())
        _assert_same_detections(dets, stock(_images()))


def test_patched_detector_feature_extraction(detectors):
    """torchvision's FX feature extraction on the patched detector: its RoI pooler traces with the
    pooling as leaf calls and gives the stock pooler's features; the whole GeneralizedRCNN does not
    trace in torchvision either (its forward iterates over the image list), and the patched one
    fails the same way, not on pygen's modules."""
    from torch.fx.proxy import TraceError
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    stock, patched = detectors
    _, nodes = get_graph_node_names(patched.roi_heads.box_roi_pool)
    assert nodes[-3:] == ["_filter_input", "_setup_scales", "_multi_scale_roi_align"], nodes
    fx = create_feature_extractor(patched.roi_heads.box_roi_pool, return_nodes={"_multi_scale_roi_align": "pooled"})
    with torch.no_grad():
        images, _ = patched.transform(_images())
        feats = patched.backbone(images.tensors)
        proposals, _ = patched.rpn(images, feats)
        got = fx(feats, proposals, images.image_sizes)["pooled"]
        want = stock.roi_heads.box_roi_pool(feats, proposals, images.image_sizes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for m in (stock, patched):
        with pytest.raises(TraceError, match="cannot be iterated"):
            get_graph_node_names(m)
        m.eval()  # get_graph_node_names left it in train mode


def test_patched_detector_compiles(detectors):
    stock, patched = detectors
    compiled = torch.compile(patched.roi_heads.box_roi_pool, fullgraph=False)
    with torch.no_grad():
        images, _ = patched.transform(_images())
        feats = patched.backbone(images.tensors)
        proposals, _ = patched.rpn(images, feats)
        got = compiled(feats, proposals, images.image_sizes)
        want = stock.roi_heads.box_roi_pool(feats, proposals, images.image_sizes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
