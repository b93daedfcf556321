"""One offline compile spec: a Triton kernel specialised as the runtime specialises it at a benchmark
shape, for ``pygen inspect`` and the sm_90 compile tests (tests/common/test_compiled_kernels.py).

The runtime marks a pointer argument 16-byte aligned and an integer argument that is a multiple of
16 with ``tt.divisibility`` 16; the spec says the same through ``attrs``: every pointer in the
signature and every argument named in ``div`` (``aligned=False``: the ``div`` arguments only, as the
flows, RoI and MADE-sampler specs were recorded). ``tensor_cores``: the kernel is meant to run its
dots as Hopper wgmma at this tile (the compile test checks the PTX for it). ``name=None`` reports the
kernel under its function name; ``num_warps=None`` / ``num_stages=None`` leave Triton's defaults.

Tuple arguments (the RoI kernels pass a tensor as one (pointer, sizes..., strides...) tuple) have
a tuple of types in ``sig``; a constexpr element is named ``"arg[i]"`` in ``consts`` and stored
under Triton's path ``(argument index, i)``, as ASTSource takes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _path(names: list[str], key: str) -> tuple[int, ...]:
    """A constexpr key -> Triton's path: "BLOCK" -> (index of BLOCK,), "rois[2]" -> (index of rois, 2)."""
    name, _, rest = key.partition("[")
    return (names.index(name), *(int(i) for i in rest.rstrip("]").split("][") if i))


def constexpr_name(fn, key: str | tuple[int, ...]) -> str:
    """A spec's constexpr key as a name: the argument's, or "arg[i]" for a tuple element's path."""
    return key if isinstance(key, str) else fn.arg_names[key[0]] + "".join(f"[{i}]" for i in key[1:])


def compile_spec(
    fn,
    name: str | None,
    sig: dict[str, str | tuple[str, ...]],
    consts: dict[str, Any],
    num_warps: int,
    num_stages: int | None,
    div: Iterable[str] = (),
    tensor_cores: bool = False,
    aligned: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    names = fn.arg_names
    div = set(div)
    sig = dict(sig)
    paths = {}
    for key in consts:
        path = paths[key] = _path(names, key)
        if len(path) == 2:  # an element of a tuple argument (a unit stride the runtime specialises)
            arg = names[path[0]]
            sig[arg] = tuple("constexpr" if i == path[1] else t for i, t in enumerate(sig[arg]))
    attrs = {}
    for a in names:
        ty = sig.get(a, "")
        if isinstance(ty, tuple):  # tuple arguments: their pointers, by (argument, element) path
            attrs.update(
                {
                    (names.index(a), i): [["tt.divisibility", 16]]
                    for i, t in enumerate(ty)
                    if aligned and t.startswith("*")
                }
            )
        elif (aligned and ty.startswith("*")) or a in div:
            attrs[(names.index(a),)] = [["tt.divisibility", 16]]
    return {
        "fn": fn,
        "name": name,
        "signature": sig,
        "constexprs": {paths[k] if len(paths[k]) > 1 else k: v for k, v in consts.items()},
        "attrs": attrs,
        "num_warps": num_warps,
        "num_stages": num_stages,
        "tensor_cores": tensor_cores,
        **extra,
    }
