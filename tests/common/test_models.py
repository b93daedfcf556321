"""pygen.models: the detection heads give the same outputs and gradients with the reference ops
and with every pygen kernel backend available on this machine (quick configs)."""

from __future__ import annotations

import pytest
import torch

from pygen import _backend
from pygen.models import build, set_backend

MODELS = ["faster_rcnn_roi_head", "rfcn_head"]
KERNEL_BACKENDS = [b for b in _backend.available_backends("cpu") if b != "reference"]
if torch.cuda.is_available():
    KERNEL_BACKENDS += [f"cuda:{b}" for b in _backend.available_backends("cuda") if b != "reference"]


def _device_backend(spec: str):
    if spec.startswith("cuda:"):
        return torch.device("cuda"), spec.split(":", 1)[1]
    return torch.device("cpu"), spec


def _run(model, inputs, backend, grad: bool):
    set_backend(model, backend)
    leaves = list(inputs[0].values()) if isinstance(inputs[0], dict) else [inputs[0]]
    for t in leaves:
        t.grad = None
        t.requires_grad_(grad)
    outs = model(*inputs)
    if grad:
        sum((o * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum() for o in outs).backward()
        return [o.detach() for o in outs], [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in leaves]
    return [o.detach() for o in outs], []


@pytest.mark.parametrize("name", MODELS)
def test_output_shapes_and_names(name):
    model, cfg = build(name, quick=True)
    outs = model(*model.example_inputs(cfg))
    k = cfg.batch * (cfg.proposals_per_image if name == "faster_rcnn_roi_head" else cfg.rois_per_image)
    assert outs[0].shape == (k, cfg.num_classes)
    assert outs[1].shape == (k, cfg.num_classes * 4 if name == "faster_rcnn_roi_head" else 4)
    keys = set(model.state_dict())
    if name == "faster_rcnn_roi_head":  # torchvision RoIHeads names
        assert {
            "box_head.fc6.weight",
            "box_head.fc7.weight",
            "box_predictor.cls_score.weight",
            "box_predictor.bbox_pred.weight",
        } <= keys
    else:
        assert {"conv_new_1.weight", "rfcn_cls.weight", "rfcn_bbox.weight"} <= keys


@pytest.mark.parametrize("backend", KERNEL_BACKENDS or [None])
@pytest.mark.parametrize("name", MODELS + ["rfcn_head:align"])
def test_same_output_reference_vs_pygen(name, backend):
    if backend is None:
        pytest.skip("no pygen kernel backend available on this machine (pygen info says why)")
    device, b = _device_backend(backend)
    overrides = {"pool": "align"} if name.endswith(":align") else {}
    torch.manual_seed(0)
    model, cfg = build(name.split(":")[0], quick=True, **overrides)
    model = model.to(device)
    inputs = model.example_inputs(cfg, device)
    ref_out, ref_grads = _run(model, inputs, "reference", grad=True)
    out, grads = _run(model, inputs, b, grad=True)
    for a, r in zip(out, ref_out):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_set_backend_reaches_every_pooler():
    model, _ = build("rfcn_head", quick=True, backend="reference")
    assert model.psroi_cls.backend == model.psroi_bbox.backend == "reference"
    set_backend(model, None)
    assert model.psroi_cls.backend is None and model.psroi_bbox.backend is None


def test_bad_config():
    with pytest.raises(ValueError, match="pool"):
        build("rfcn_head", quick=True, pool="max")
    with pytest.raises(ValueError, match="unknown model"):
        build("resnet", quick=True)


def test_profile_rfcn_quick(capsys):
    from pygen.tools.profile import profile_model

    assert profile_model("rfcn_head", device="cpu", quick=True, top=3) == 0
    assert "end-to-end speedup" in capsys.readouterr().out
