"""What pygen's module swaps share: the (parent, name, child) walk they replace children in
(torchvision's RoI modules, nflows, zuko, transformers' DeepSeek attention and MoE), the check that a
module built to take over another's tensors has its state_dict shapes and the taking over
(``adopt_tensors``: the very Parameter and buffer objects), and the nflows and zuko
swaps' one warning that names the modules a patcher kept because pygen's counterpart computes
something else."""

from __future__ import annotations

import warnings
from collections import Counter

from torch import nn


def children(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Every (parent, attribute name, child) of ``model``, listed before any is replaced."""
    return [(parent, name, child) for parent in list(model.modules()) for name, child in parent.named_children()]


def check_state_shapes(new: nn.Module, old: nn.Module, new_name: str, old_name: str) -> None:
    """RuntimeError unless ``new`` (built to take over ``old``'s tensors) has ``old``'s state_dict
    keys and shapes."""
    want = {k: tuple(v.shape) for k, v in new.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in old.state_dict().items()}
    if want != have:
        raise RuntimeError(f"{new_name} state_dict {want} does not match {old_name}'s {have}")


def adopt_tensors(new: nn.Module, old: nn.Module) -> None:
    """Make ``new`` hold ``old``'s very Parameter and buffer objects (same names), so optimizers
    and tied references built before the swap keep working."""
    check_state_shapes(new, old, type(new).__name__, type(old).__name__)
    for name, p in old.named_parameters():
        mod_name, _, leaf = name.rpartition(".")
        setattr(new.get_submodule(mod_name), leaf, p)
    for name, b in old.named_buffers():
        mod_name, _, leaf = name.rpartition(".")
        target = new.get_submodule(mod_name)
        if leaf in target._buffers:
            target._buffers[leaf] = b


def warn_kept(patcher: str, kept: Counter[str], why: dict[str, str]) -> None:
    """One warning naming the modules ``patcher`` kept (counts by label) and why; none when it kept
    nothing. It points at the line that called pygen.patch.<patcher>."""
    lines = [f"{n} {what} ({why[what]})" for what, n in kept.items() if n]
    if lines:
        warnings.warn(
            f"pygen.patch.{patcher} kept these modules, whose computation pygen's counterpart does not "
            f"reproduce exactly (docs/made.md); their masked layers were swapped: " + "; ".join(lines),
            stacklevel=4,
        )
