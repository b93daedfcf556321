"""Swap pygen's masked autoregressive modules into nflows models in place (pygen.patch.patch_nflows).

    nflows.transforms.made.MaskedLinear, nflows.nn.nde.made.MaskedLinear
        -> pygen.nn.MaskedLinear (nflows form; input degrees chained through the MADE they sit in)
    nflows.transforms.made.MADE without context
        -> pygen.models.made.MADE(hidden_order="nflows") (activations fused into the kernels)

A swap computes what the module it replaces computes (same masks, same forward, and so the same
forward / inverse / log-det of the flow around it) and holds the original Parameter and buffer
objects: optimizers keep working and the state_dict (keys and tensors) is unchanged. Only exact
classes are swapped (a subclass may compute something else). Kept, with one warning per call
(their masked layers are still swapped):

    MaskedAffineAutoregressiveTransform   nflows 0.14 scales by softplus(a) + 1e-3; pygen's MAF layer
                                          by sigmoid(a + 2) + 1e-3; its MADE is swapped
    MADE with context_features            nflows 0.14 adds act(context_layer(c)) to the first hidden
                                          layer, pygen's MADE context_layer(c)
    nflows.nn.nde.made.MADE and subclasses  a different MADE (no activation after a feedforward
                                          MADE's first layer, context added without one)

A model that is itself a MADE keeps its class (there is no parent to swap it in); its layers are
swapped. ImportError when nflows is not installed.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch import nn

from ..models.made import MADE
from ..nn.made import MaskedLinear
from ._swaps import check_state_shapes, children, warn_kept

__all__ = ["patch_nflows_made"]

# why each kept class is not swapped (the warning's text)
_KEPT = {
    "MaskedAffineAutoregressiveTransform": "nflows scales by softplus(a) + 1e-3, pygen's MAF layer by sigmoid(a + 2) + "
    "1e-3; its MADE was swapped",
    "MADE with context": "nflows adds act(context_layer(c)) to the first hidden layer, pygen's MADE context_layer(c)",
    "nflows.nn.nde MADE": "a different MADE from nflows.transforms.made's, which pygen's follows",
    "MADE subclass": "a subclass may compute something else",
    "MADE at the model's root": "no parent module to swap it in; patch the module that holds it",
}


def _classes():
    """(MADE, MaskedLinear classes, MAF transform, nde MADE or None) of the installed nflows; nflows.nn.nde
    (which imports matplotlib) is looked at only when the program imported it."""
    from nflows.transforms import made
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform

    linears, nde_made = (made.MaskedLinear,), None
    nde = sys.modules.get("nflows.nn.nde.made")
    if nde is not None:
        linears, nde_made = linears + (nde.MaskedLinear,), nde.MADE
    return made.MADE, linears, MaskedAffineAutoregressiveTransform, nde_made


def _made_layers(made: nn.Module) -> list[tuple[str, nn.Module]]:
    """A MADE's masked layers in the order each one's output degrees are the next one's input
    degrees: initial layer, each block's layer(s), final layer (nflows' and pygen's attribute names)."""
    names = ["initial_layer"]
    for k, blk in enumerate(made.blocks):
        names += [f"blocks.{k}.linear"] if hasattr(blk, "linear") else [f"blocks.{k}.linear_layers.{j}" for j in (0, 1)]
    return [(n, made.get_submodule(n)) for n in names + ["final_layer"]]


def _adopted_layers(made: nn.Module, backend: str | None) -> dict[str, MaskedLinear]:
    """pygen MaskedLinears holding the tensors of ``made``'s masked layers, by path, with the input
    degrees nflows builds them from (1..D for the first, the previous layer's degrees after)."""
    layers = _made_layers(made)
    in_deg = torch.arange(1, layers[0][1].in_features + 1)
    out = {}
    for k, (name, layer) in enumerate(layers):
        out[name] = MaskedLinear.adopt(
            layer, "nflows", in_degrees=in_deg, is_output=k == len(layers) - 1, backend=backend
        )
        in_deg = layer.degrees
    return out


def _pygen_made(made: nn.Module, backend: str | None) -> MADE:
    """pygen's MADE with ``made``'s modules: built with the same structure (under a forked RNG, so the
    caller's random stream does not move), then every leaf replaced by the original module, the
    masked layers by pygen MaskedLinears holding the original tensors."""
    features = made.initial_layer.in_features
    with torch.random.fork_rng(devices=[]):
        new = MADE(
            features,
            made.initial_layer.out_features,
            num_blocks=len(made.blocks),
            output_multiplier=made.final_layer.out_features // features,
            use_residual_blocks=made.use_residual_blocks,
            activation=made.activation,
            use_batch_norm=any(isinstance(m, nn.BatchNorm1d) for m in made.modules()),
            hidden_order="nflows",
            backend=backend,
        )
    check_state_shapes(new, made, "pygen MADE", "the nflows MADE")
    adopted = _adopted_layers(made, backend)
    for path, mod in list(new.named_modules()):
        old = made.get_submodule(path)
        parent_path, _, leaf = path.rpartition(".")
        if path in adopted:
            setattr(new.get_submodule(parent_path), leaf, adopted[path])
        elif path and not list(mod.children()):  # batch norm, dropout, activation modules: the same objects
            setattr(new.get_submodule(parent_path), leaf, old)
        if "degrees" in vars(old):  # the blocks' plain attribute (nflows and pygen alike)
            mod.degrees = old.degrees
        mod.training = old.training
    ours, theirs = dict(new.named_parameters()), dict(made.named_parameters())
    if ours.keys() != theirs.keys() or any(ours[k] is not theirs[k] for k in ours):
        raise RuntimeError("pygen MADE does not hold the nflows MADE's Parameters")
    return new


def _swap_layers(made: nn.Module, linear_classes: tuple[type, ...], backend: str | None) -> int:
    """Swap the nflows masked layers of a MADE that is kept, with nflows' degrees; returns how many."""
    try:
        layers = _made_layers(made)
    except AttributeError:  # not nflows' structure: its layers are swapped as stray ones
        return 0
    if not any(type(layer) in linear_classes for _, layer in layers):
        return 0
    n = 0
    for path, layer in _adopted_layers(made, backend).items():
        if type(made.get_submodule(path)) in linear_classes:
            parent_path, _, leaf = path.rpartition(".")
            setattr(made.get_submodule(parent_path), leaf, layer)
            n += 1
    return n


def _kept_made(made: nn.Module, model: nn.Module, made_cls: type) -> str:
    if type(made) is not made_cls:
        return "nflows.nn.nde MADE" if made.__module__.startswith("nflows.nn.nde") else "MADE subclass"
    return "MADE at the model's root" if made is model else "MADE with context"


def patch_nflows_made(model: nn.Module, *, backend: str | None = None) -> dict[str, int]:
    """Swap pygen's MaskedLinear and MADE into the nflows modules of ``model`` in place (module
    docstring); returns counts by replaced class ({"MADE": m, "MaskedLinear": n}, n counting the
    layers inside swapped MADEs), empty when nothing was swapped (also on a second call)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_nflows: model must be a torch.nn.Module, got {type(model).__name__}")
    made_cls, linear_classes, maf_cls, nde_made = _classes()
    made_classes = (made_cls,) + ((nde_made,) if nde_made is not None else ())
    counts: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    for parent, name, child in children(model):
        if type(child) is made_cls and not hasattr(child, "context_layer"):
            n_layers = sum(type(layer) in linear_classes for _, layer in _made_layers(child))
            setattr(parent, name, _pygen_made(child, backend))
            counts["MADE"] += 1
            counts["MaskedLinear"] += n_layers
    for made in [m for m in model.modules() if isinstance(m, made_classes)]:
        kept[_kept_made(made, model, made_cls)] += 1
        counts["MaskedLinear"] += _swap_layers(made, linear_classes, backend)
    for parent, name, child in children(model):  # masked layers outside a MADE
        if type(child) in linear_classes:
            setattr(parent, name, MaskedLinear.adopt(child, "nflows", backend=backend))
            counts["MaskedLinear"] += 1
    kept["MaskedAffineAutoregressiveTransform"] = sum(isinstance(m, maf_cls) for m in model.modules())
    warn_kept("patch_nflows", kept, _KEPT)
    return {k: n for k, n in counts.items() if n}
