"""One offline compile spec: a Triton kernel specialised as the runtime specialises it at a benchmark
shape, for ``pygen inspect`` and the sm_90 compile tests (tests/common/test_compiled_kernels.py).

The runtime marks a pointer argument 16-byte aligned and an integer argument that is a multiple of
16 with ``tt.divisibility`` 16; the spec says the same through ``attrs``: every pointer in the
signature and every argument named in ``div`` (``aligned=False``: the ``div`` arguments only, as the
flows, RoI and MADE-sampler specs were recorded). ``tensor_cores``: the kernel is meant to run its
dots as Hopper wgmma at this tile (the compile test checks the PTX for it). ``name=None`` reports the
kernel under its function name; ``num_warps=None`` / ``num_stages=None`` leave Triton's defaults.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def compile_spec(
    fn,
    name: str | None,
    sig: dict[str, str],
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
    attrs = {
        (names.index(a),): [["tt.divisibility", 16]]
        for a in names
        if (aligned and sig.get(a, "").startswith("*")) or a in div
    }
    return {
        "fn": fn,
        "name": name,
        "signature": sig,
        "constexprs": consts,
        "attrs": attrs,
        "num_warps": num_warps,
        "num_stages": num_stages,
        "tensor_cores": tensor_cores,
        **extra,
    }
