"""RoI modules: drop-in behaviour of pygen.nn against the functional ops and the reference, and
pygen.patch on a torchvision model (when torchvision is installed)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_to_ref, make_rois

import pygen
from pygen import nn as pnn, ops
from pygen.ref import roi as ref


def test_modules_call_the_ops(gen):
    x = torch.randn(2, 18, 9, 10, generator=gen)
    rois = make_rois(7, 2, 9, 10, 0.5, gen)
    cases = [
        (pnn.RoIAlign(3, 0.5, 2, True), lambda: ops.roi_align(x, rois, 3, 0.5, 2, True)),
        (pnn.RoIPool((3, 2), 0.5), lambda: ops.roi_pool(x, rois, (3, 2), 0.5)),
        (pnn.PSRoIAlign(3, 0.5, -1), lambda: ops.ps_roi_align(x, rois, 3, 0.5, -1)),
        (pnn.PSRoIPool(3, 0.5), lambda: ops.ps_roi_pool(x, rois, 3, 0.5)),
    ]
    for module, functional in cases:
        assert module.state_dict() == {}
        torch.testing.assert_close(module(x, rois), functional())
        assert "output_size" in repr(module)


def test_multiscale_module_matches_reference(gen):
    feats = {
        "0": torch.randn(2, 4, 16, 20, generator=gen),
        "1": torch.randn(2, 4, 8, 10, generator=gen),
        "pool": torch.randn(2, 4, 4, 5, generator=gen),
    }
    image_shapes = [(64, 80), (60, 76)]
    boxes = [make_rois(5, 1, 64, 80, 1.0, gen, special=False)[:, 1:] for _ in range(2)]
    m = pnn.MultiScaleRoIAlign(["0", "1"], 3, 2)
    out = m(feats, boxes, image_shapes)
    assert m.scales == [0.25, 0.125]
    rois = torch.cat([torch.cat([torch.full((5, 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    r = ref.multi_scale_roi_align([feats["0"].double(), feats["1"].double()], rois.double(), (3, 3), [0.25, 0.125], 2)
    assert_close_to_ref(out, r, atol=1e-5)
    with pytest.raises(ValueError, match="feature map"):
        pnn.MultiScaleRoIAlign(["0", "missing"], 3, 2)(feats, boxes, image_shapes)
    # the maps are taken in x's order, as torchvision's _filter_input takes them: names out of
    # order or twice change nothing (they reordered and repeated the levels)
    for names in (["1", "0"], ["0", "1", "0"]):
        other = pnn.MultiScaleRoIAlign(names, 3, 2)
        assert torch.equal(other(feats, boxes, image_shapes), out) and other.scales == [0.25, 0.125], names


def test_level_scale_rounds_its_log2_in_float32_as_torchvision():
    from pygen.nn._roi_script import infer_scale

    # log2(2378 / 3363) is -0.50000006 in float64 (rounds to -1: scale 0.5) and -0.5 in float32
    # (rounds half to even: 0, scale 1); torchvision's torch.tensor(approx_scale).log2() is float32
    assert infer_scale(2378, 3363) == 1.0
    assert [infer_scale(h, 800) for h in (200, 100, 50, 25, 13)] == [0.25, 0.125, 0.0625, 0.03125, 0.015625]


def test_patch_torchvision_swaps_roi_modules():
    tvo = pytest.importorskip("torchvision.ops", reason="torchvision is optional (pygen.patch target)")
    import pygen.patch

    model = torch.nn.Sequential(
        tvo.RoIAlign(7, 0.25, 2),
        torch.nn.ModuleDict({"pool": tvo.MultiScaleRoIAlign(["0", "1"], 7, 2), "ps": tvo.PSRoIPool(3, 0.5)}),
    )
    x = torch.randn(2, 9, 16, 16)
    rois = torch.tensor([[0, 1.0, 1, 20, 30], [1, 5, 5, 40, 40]])
    before = model[1]["ps"](x, rois)
    swapped = pygen.patch.patch_torchvision(model)
    assert swapped == {"RoIAlign": 1, "MultiScaleRoIAlign": 1, "PSRoIPool": 1}
    assert isinstance(model[0], pnn.RoIAlign) and isinstance(model[1]["pool"], pnn.MultiScaleRoIAlign)
    inside = torch.tensor([[0, 1.0, 1, 20, 30], [1, 5, 5, 20, 20]])  # away from the last row/column
    torch.testing.assert_close(model[1]["ps"](x, inside), tvo.ps_roi_pool(x, inside, 3, 0.5))
    assert before.shape == model[1]["ps"](x, rois).shape


@pytest.mark.parametrize(
    "make",
    [
        lambda: pnn.RoIAlign(5, 1.0, -1),
        lambda: pnn.RoIAlign((3, 2), 0.5, 2, aligned=True),
        lambda: pnn.RoIPool(3, 1.0),
        lambda: pnn.PSRoIAlign(2, 1.0, 2),
        lambda: pnn.PSRoIPool(2, 1.0),
    ],
    ids=["roi_align", "roi_align-aligned", "roi_pool", "ps_roi_align", "ps_roi_pool"],
)
def test_modules_trace_with_fx_as_one_node(make, gen):
    """torch.fx.symbolic_trace records the pooling as one call node (torchvision's RoI functions
    are FX leaves too) and the traced module gives the eager result."""
    m = make()
    g = torch.fx.symbolic_trace(m)
    calls = [n for n in g.graph.nodes if n.op == "call_function"]
    assert len(calls) == 1, [n.target for n in calls]
    # the node is the functional op (named as torchvision's module trace names its node)
    op = dict(RoIAlign="roi_align", RoIPool="roi_pool", PSRoIAlign="ps_roi_align", PSRoIPool="ps_roi_pool")
    assert calls[0].target is getattr(ops, op[type(m).__name__]), calls[0].target
    x = torch.randn(2, 8, 10, 12, generator=gen)
    rois = make_rois(4, 2, 10, 12, 1.0, gen)
    torch.testing.assert_close(g(x, rois), m(x, rois), rtol=0, atol=0)


def test_multi_scale_module_traces_with_fx(gen):
    m = pnn.MultiScaleRoIAlign(["p2", "p3"], 3, 2)
    g = torch.fx.symbolic_trace(m)
    names = [getattr(n.target, "__name__", n.target) for n in g.graph.nodes if n.op == "call_function"]
    assert names == ["_filter_input", "_setup_scales", "_multi_scale_roi_align"], names
    feats = {"p2": torch.randn(1, 4, 16, 16, generator=gen), "p3": torch.randn(1, 4, 8, 8, generator=gen)}
    boxes = [torch.tensor([[1.0, 1.0, 30.0, 30.0], [0.0, 4.0, 60.0, 50.0]])]
    torch.testing.assert_close(g(feats, boxes, [(64, 64)]), m(feats, boxes, [(64, 64)]), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: pnn.RoIAlign(3, 1.0, 2),
        lambda: pnn.RoIAlign((2, 3), 0.5, -1, aligned=True),
        lambda: pnn.RoIPool(2, 1.0),
        lambda: pnn.PSRoIAlign(2, 1.0, 2),
        lambda: pnn.PSRoIPool(2, 1.0),
    ],
    ids=["roi_align", "roi_align-aligned", "roi_pool", "ps_roi_align", "ps_roi_pool"],
)
def test_modules_script_with_torchscript(make, gen):
    """torch.jit.script of a module scripts its TorchScript form (pygen/nn/_roi_script.py): the
    same outputs and input gradients as eager, for Tensor[K, 5] and list-of-boxes inputs."""
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("the scripted modules call the cpu kernel op on CPU tensors")
    m = make()
    s = torch.jit.script(m)
    x = torch.randn(2, 8, 10, 12, generator=gen, requires_grad=True)
    rois = make_rois(5, 2, 10, 12, 1.0, gen)
    out_s, out_e = s(x, rois), m(x, rois)
    torch.testing.assert_close(out_s, out_e, rtol=0, atol=0)
    g = torch.randn(out_e.shape, generator=gen)
    (gs,) = torch.autograd.grad(out_s, x, g)
    (ge,) = torch.autograd.grad(out_e, x, g)
    torch.testing.assert_close(gs, ge, rtol=0, atol=0)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    torch.testing.assert_close(s(x, boxes), m(x, boxes), rtol=0, atol=0)


def test_multi_scale_module_scripts_with_torchscript(gen):
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("the scripted modules call the cpu kernel op on CPU tensors")
    m = pnn.MultiScaleRoIAlign(["p2", "p3"], 3, 2)
    s = torch.jit.script(m)
    feats = {"p2": torch.randn(1, 4, 16, 16, generator=gen), "p3": torch.randn(1, 4, 8, 8, generator=gen)}
    boxes = [torch.tensor([[1.0, 1.0, 30.0, 30.0], [0.0, 4.0, 60.0, 50.0]])]
    torch.testing.assert_close(s(feats, boxes, [(64, 64)]), m(feats, boxes, [(64, 64)]), rtol=0, atol=0)
    swapped = torch.jit.script(pnn.MultiScaleRoIAlign(["p3", "p2"], 3, 2))  # x's order, not the names'
    torch.testing.assert_close(swapped(feats, boxes, [(64, 64)]), m(feats, boxes, [(64, 64)]), rtol=0, atol=0)


def test_scripting_a_reference_backend_module_is_refused():
    with pytest.raises(ValueError, match="backend='reference' has none"):
        torch.jit.script(pnn.RoIAlign(3, 1.0, 2, backend="reference"))


FUNCTIONAL_SCRIPT_CASES = [
    ("roi_align", (3, 0.5, 2, True)),
    ("roi_align", ((2, 3), 1.0, -1, False)),
    ("roi_pool", (2, 0.5)),
    ("ps_roi_align", (2, 0.5, 2)),
    ("ps_roi_pool", (2, 0.5)),
]


@pytest.mark.parametrize(
    "name,args", FUNCTIONAL_SCRIPT_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FUNCTIONAL_SCRIPT_CASES)]
)
def test_functional_ops_script_with_torchscript(name, args, gen):
    """torch.jit.script(pygen.ops.<op>) compiles its TorchScript form (pygen/ops/_roi_script.py)
    with torchvision's signature: the same outputs and gradients as eager, Tensor[K, 5] and list
    boxes; and a scripted user function that calls the op compiles and agrees too."""
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("the scripted ops call the cpu kernel op on CPU tensors")
    f = getattr(ops, name)
    s = torch.jit.script(f)
    assert isinstance(s, torch.jit.ScriptFunction)
    x = torch.randn(2, 8, 10, 12, generator=gen, requires_grad=True)
    rois = make_rois(5, 2, 10, 12, 0.5, gen)
    out_s, out_e = s(x, rois, *args), f(x, rois, *args)
    torch.testing.assert_close(out_s, out_e, rtol=0, atol=0)
    g = torch.randn(out_e.shape, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(out_s, x, g)[0], torch.autograd.grad(out_e, x, g)[0], rtol=0, atol=0)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    torch.testing.assert_close(s(x, boxes, *args), f(x, boxes, *args), rtol=0, atol=0)


def test_scripted_caller_of_functional_ops(gen):
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("the scripted ops call the cpu kernel op on CPU tensors")

    def head(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        a = ops.roi_align(x, rois, [3, 3], 0.5, 2, True)
        p = ops.ps_roi_pool(x, rois, 2, 0.5)
        return a.sum((1, 2, 3)) + p.sum((1, 2, 3)) + ops.roi_pool(x, rois, 2, 0.5).mean((1, 2, 3))

    s = torch.jit.script(head)
    x = torch.randn(2, 8, 10, 12, generator=gen)
    rois = make_rois(6, 2, 10, 12, 0.5, gen)
    torch.testing.assert_close(s(x, rois), head(x, rois), rtol=0, atol=0)


def test_multi_scale_functional_scripts(gen):
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("the scripted ops call the cpu kernel op on CPU tensors")
    feats = [torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)]
    boxes = [torch.tensor([[1.0, 1.0, 30.0, 30.0], [0.0, 4.0, 60.0, 50.0]]), torch.tensor([[2.0, 3.0, 9.0, 9.0]])]
    s = torch.jit.script(ops.multi_scale_roi_align)
    want = ops.multi_scale_roi_align(feats, boxes, 3, [0.25, 0.125], 2, 224, 4, True)
    torch.testing.assert_close(s(feats, boxes, [3, 3], [0.25, 0.125], 2, 224.0, 4.0, True), want, rtol=0, atol=0)


def test_eager_functional_ops_keep_backend_keyword(gen):
    """Binding the TorchScript forms leaves the eager functions as they were: backend= still chooses."""
    x = torch.randn(1, 4, 6, 6, generator=gen)
    rois = make_rois(3, 1, 6, 6, 1.0, gen)
    torch.testing.assert_close(
        ops.roi_align(x, rois, 2, backend="reference"), ref.roi_align(x, rois, (2, 2), 1.0, -1, False)
    )


def test_functional_ops_are_fx_leaves(gen):
    """torch.fx.symbolic_trace of code that calls the functional RoI ops records each op as one
    call_function node (as torchvision's RoI functions are), and the GraphModule agrees with eager."""

    class Head(torch.nn.Module):
        def forward(self, x, rois, boxes: list):
            a = ops.roi_align(x, rois, 3, 0.5, 2, aligned=True)
            b = ops.ps_roi_pool(x, boxes, 2, 0.5)
            c = ops.roi_pool(x, rois, (2, 3), 0.5)
            d = ops.ps_roi_align(x, rois, 2, spatial_scale=0.5)
            return a.sum((1, 2, 3)) + b.sum((1, 2, 3)) + c.mean((1, 2, 3)) + d.mean((1, 2, 3))

    gm = torch.fx.symbolic_trace(Head(), concrete_args={"boxes": torch.fx.PH})
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    for op in (ops.roi_align, ops.ps_roi_pool, ops.roi_pool, ops.ps_roi_align):
        assert targets.count(op) == 1, targets
    x = torch.randn(2, 8, 10, 12, generator=gen)
    rois = make_rois(6, 2, 10, 12, 0.5, gen)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    torch.testing.assert_close(gm(x, rois, boxes), Head()(x, rois, boxes), rtol=0, atol=0)


def test_scripting_a_parent_leaves_the_eager_modules_in_place(gen):
    """torch.jit.script writes what ``__prepare_scriptable__`` returns back into the parent's
    ``_modules``: the RoI modules must return themselves, or scripting a detector would swap a
    validation-free scripted form into the eager model too."""
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("the scripted modules call the cpu kernel op on CPU tensors")

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.align, self.pool = pnn.RoIAlign((2, 3), 0.5, 2), pnn.PSRoIPool(2, 0.5)
            self.ms = pnn.MultiScaleRoIAlign(["p2"], 2, 2)

        def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
            return self.align(x, rois).sum((1, 2, 3)) + self.pool(x, rois).sum((1, 2, 3))

    head = Head()
    kinds = [type(m) for m in head.children()]
    s = torch.jit.script(head)
    assert [type(m) for m in head.children()] == kinds
    x = torch.randn(2, 8, 10, 12, generator=gen)
    rois = make_rois(5, 2, 10, 12, 0.5, gen)
    torch.testing.assert_close(s(x, rois), head(x, rois), rtol=0, atol=0)
    with pytest.raises(ValueError, match="rois|boxes"):
        head(x, rois[:, :4])  # the eager module still validates
