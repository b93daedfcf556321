"""Swap pygen's masked layers into zuko models in place (pygen.patch.patch_zuko).

    zuko.nn.MaskedLinear -> pygen.nn.MaskedLinear (zuko form: the adjacency is the ``mask`` buffer;
                            nested masks, which zuko's MADE-style adjacencies give, reach the
                            degree kernel, any other the plain masked-matmul kernel)
    zuko.nn.MaskedMLP    -> FusedMaskedMLP (zuko's class; the same layers, in the same order;
                            each fusable activation module that follows a masked layer runs in
                            that layer's kernel). Only MLPs with such a pair are swapped.

Each swap computes what it replaces and holds the original Parameter and buffer objects (state_dict
keys and tensors unchanged). Kept, with one warning per call: zuko's MaskedAutoregressiveTransform
(a lazy transform; its univariate MonotonicAffineTransform scales by exp(a / (1 + |a / log 1e-3|)),
pygen's MAF layer by sigmoid(a + 2) + 1e-3, and zuko inverts it with its own fixed-point passes);
its hyper network is swapped. zuko's Residual blocks (x + layers(x)) keep their class, their
masked layers are swapped. pygen's MADE is not a MaskedMLP: zuko merges outputs with the same
dependencies, builds hidden masks from row-set precedence and places activations after every
hidden layer, and none of its networks has nflows' block structure.

zuko.bayesian.BayesianModel's local reparameterisation trick picks layers by exact class
(nn.Linear, zuko's Linear and MaskedLinear): apply it to an unpatched model. ImportError when zuko
is not installed.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch
from torch import nn
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.nn import MaskedLinear as ZukoMaskedLinear, MaskedMLP

from ..models.made import activation_name
from ..nn.made import MaskedLinear
from ._swaps import children, warn_kept

__all__ = ["FusedMaskedMLP", "patch_zuko_masked"]

_KEPT = {
    "MaskedAutoregressiveTransform": "zuko's univariate transform (for MAF, MonotonicAffineTransform's scale "
    "exp(a / (1 + |a / log 1e-3|))) and fixed-point inverse, not pygen's MAF layer's sigmoid(a + 2) + 1e-3; "
    "its hyper network was swapped"
}


def _fusable(layers: list[nn.Module], i: int) -> str | None:
    """The kernel name of the activation module after pygen masked layer ``i``, or None."""
    if i + 1 >= len(layers) or not isinstance(layers[i], MaskedLinear) or isinstance(layers[i + 1], MaskedLinear):
        return None
    return activation_name(layers[i + 1])


class FusedMaskedMLP(MaskedMLP):
    """zuko's MaskedMLP whose forward runs each (pygen MaskedLinear, activation module) pair as one
    kernel; every other layer runs as zuko runs it. Made by :func:`patch_zuko_masked` from an
    existing MaskedMLP (same child modules and names), never constructed directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers, i = list(self), 0
        while i < len(layers):
            name = _fusable(layers, i)
            x = layers[i](x, activation=name) if name else layers[i](x)
            i += 2 if name else 1
        return x


def _fused(mlp: MaskedMLP) -> FusedMaskedMLP:
    new = FusedMaskedMLP.__new__(FusedMaskedMLP)
    nn.Sequential.__init__(new, OrderedDict(mlp.named_children()))
    for k, v in vars(mlp).items():  # MaskedMLP's own attributes (in_features, out_features)
        if not k.startswith("_") and k != "training":
            setattr(new, k, v)
    new.training = mlp.training
    return new


def patch_zuko_masked(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Swap pygen's MaskedLinear (and FusedMaskedMLP) into the zuko modules of ``model`` in place
    (module docstring); returns counts by replaced class, empty when nothing was swapped (also on a
    second call)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_zuko: model must be a torch.nn.Module, got {type(model).__name__}")
    counts: Counter[str] = Counter()
    for parent, name, child in children(model):
        if type(child) is ZukoMaskedLinear:
            setattr(parent, name, MaskedLinear.adopt(child, "zuko", backend=backend))
            counts["MaskedLinear"] += 1
    for parent, name, child in children(model):
        if type(child) is MaskedMLP and any(_fusable(list(child), i) for i in range(len(child))):
            setattr(parent, name, _fused(child))
            counts["MaskedMLP"] += 1
    n_maf = sum(isinstance(m, MaskedAutoregressiveTransform) for m in model.modules())
    warn_kept("patch_zuko", Counter({"MaskedAutoregressiveTransform": n_maf}), _KEPT)
    return dict(counts)
