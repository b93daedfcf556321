"""pygen.nn.LinearCrossEntropyLoss against nn.CrossEntropyLoss on the head's logits (loss and
gradients, every reduction), its empty state_dict, and its options reaching the op."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_to_ref, backend_params
from torch import nn

import pygen

PARAMS = [p for p in backend_params(family="losses") if p.values[1] in ("triton", "cpu", "reference")]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_cross_entropy_loss(device, backend, reduction, gen):
    head = nn.Linear(24, 90, bias=True).to(device)
    hidden = torch.randn(3, 7, 24, generator=gen).to(device).requires_grad_()
    labels = torch.randint(0, 90, (3, 7), generator=gen).to(device)
    labels[0, :2] = -100
    ours = pygen.nn.LinearCrossEntropyLoss(reduction=reduction, label_smoothing=0.1, backend=backend)
    theirs = nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.1)
    got = ours(hidden, head.weight, labels, head.bias)
    want = theirs(head(hidden).flatten(0, 1), labels.flatten()).reshape(got.shape)
    assert_close_to_ref(got, want.double(), atol=1e-5)
    g = torch.randn(got.shape, generator=gen).to(device)
    g1 = torch.autograd.grad(got, (hidden, head.weight, head.bias), g)
    g2 = torch.autograd.grad(want, (hidden, head.weight, head.bias), g)
    for a, b in zip(g1, g2):
        assert_close_to_ref(a, b.double(), atol=1e-5)
    assert ours.state_dict() == {} and "label_smoothing=0.1" in repr(ours)


def test_options_reach_the_op(gen):
    h, w = torch.randn(5, 8, generator=gen), torch.randn(11, 8, generator=gen)
    t = torch.randint(0, 11, (5,), generator=gen)
    loss, lse = pygen.nn.LinearCrossEntropyLoss(z_loss=1e-2, softcap=3.0, return_lse=True, backend="reference")(h, w, t)
    want = pygen.ops.linear_cross_entropy(h, w, t, z_loss=1e-2, softcap=3.0, return_lse=True, backend="reference")
    assert torch.equal(loss, want[0]) and torch.equal(lse, want[1])
    with pytest.raises(ValueError, match="reduction"):
        pygen.nn.LinearCrossEntropyLoss(reduction="avg")(h, w, t)
