"""torch.library registration shared by every op family: an op is stated once, as an ``OpSpec``,
and ``register`` turns it into the torch.library ops of one kernel backend.

    SPEC = OpSpec(
        "roi_align",
        "(Tensor input, Tensor rois, int pooled_height, ...) -> Tensor",
        impl=_roi_align_fwd,            # (L, *args): allocate with the shared helper, launch L.<launcher>
        fake=_roi_align_out,            # (*args): the same allocation, no launch
        backward=Backward(
            "(Tensor grad, Tensor rois, int batch, ...) -> Tensor",
            impl=_roi_align_bwd, fake=_roi_align_grad_out,
            save=lambda i, out: ((i.rois,), (*i.input.shape, i.spatial_scale, ...)),
            grads=lambda c, grad: {"input": c.bwd(grad, *c.saved, *c.args)},
        ),
    )
    register(SPEC, "triton", launchers)   # -> pygen::roi_align_triton (+ _backward_triton)

What ``register`` builds:

* ``pygen::<name>_<backend>``: a ``torch.library.custom_op`` with the spec's schema, the real
  implementation ``impl(launchers(), *args)`` (``launchers`` returns the backend's launcher
  module, imported lazily: a backend may be missing) run with the device of its first tensor
  argument current (kernels/_device.py, the one device guard), and the fake ``fake(*args)``.
  Triton ops are custom ops too (docs/ARCHITECTURE.md says why triton_op is not used).
* with a ``Backward``: ``pygen::<name>_backward_<backend>`` from its schema / impl / fake, and the
  autograd wiring: ``save(inputs, output) -> (tensors, args)`` runs at the forward (``inputs``
  is a named tuple with the forward schema's argument names), and ``grads(c, *grad_outputs)``
  returns the gradients by input name (inputs it leaves out get None); ``c`` holds ``bwd`` (the
  backward op), ``saved`` (the saved tensors), ``args``, ``needs`` (``needs_input_grad`` by
  input name) and ``backend``. ``non_differentiable`` lists output indices autograd must not differentiate.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..kernels._device import launches_on_device

_OPS: dict[str, Any] = {}


@dataclass(frozen=True)
class Backward:
    """The backward of an ``OpSpec`` (module docstring). ``schema`` / ``impl`` / ``fake`` None: no
    backward op (the gradient is plain tensor math in ``grads``, which then gets ``bwd_op`` None)."""

    schema: str | None
    impl: Callable[..., Any] | None
    fake: Callable[..., Any] | None
    save: Callable[[Any, Any], tuple[tuple, tuple]]
    grads: Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class OpSpec:
    """One op of a family (module docstring). ``mutates``: schema names of arguments the op
    writes in place (their schema type is ``Tensor(a!)``)."""

    name: str
    schema: str
    impl: Callable[..., Any]
    fake: Callable[..., Any]
    backward: Backward | None = None
    non_differentiable: tuple[int, ...] = ()
    mutates: tuple[str, ...] = ()


def define(name: str, schema: str, impl: Callable, fake: Callable, mutates: tuple[str, ...] = ()):
    """Register ``pygen::<name>`` with an explicit schema; returns the op's Python callable."""
    op = torch.library.custom_op(f"pygen::{name}", impl, mutates_args=mutates, schema=schema)
    op.register_fake(fake)
    _OPS[name] = op
    return op


def argument_names(schema: str) -> list[str]:
    """Argument names of an op schema such as ``"(Tensor x, int n) -> Tensor"``."""
    return [a.name for a in torch._C.parse_schema(f"pygen::_{schema}").arguments]


def _bound(fn: Callable, launchers: Callable[[], Any]) -> Callable:
    @launches_on_device
    def impl(*args):
        return fn(launchers(), *args)

    return impl


class GradContext(namedtuple("GradContext", "bwd saved args needs backend")):
    """What ``Backward.grads`` gets: the backward op, the saved tensors, the saved arguments,
    ``needs_input_grad`` by input name and the backend (to call the family's other ops)."""


def register(spec: OpSpec, backend: str, launchers: Callable[[], Any]):
    """Define ``pygen::<spec.name>_<backend>`` (and its backward, with autograd) from ``spec``;
    ``launchers()`` returns the backend's launcher module. Returns the forward op."""
    op = define(f"{spec.name}_{backend}", spec.schema, _bound(spec.impl, launchers), spec.fake, spec.mutates)
    bw = spec.backward
    if bw is None:
        return op
    bwd = None
    if bw.schema is not None:
        bwd = define(f"{spec.name}_backward_{backend}", bw.schema, _bound(bw.impl, launchers), bw.fake)
    names = argument_names(spec.schema)
    inputs_type = namedtuple(f"{spec.name}_inputs", names)

    def setup_context(ctx, inputs, output):
        if spec.non_differentiable:
            ctx.mark_non_differentiable(*(output[i] for i in spec.non_differentiable))
        tensors, args = bw.save(inputs_type(*inputs), output)
        ctx.save_for_backward(*tensors)
        ctx.pygen_args = args

    def backward(ctx, *grad_outputs):
        c = GradContext(bwd, ctx.saved_tensors, ctx.pygen_args, inputs_type(*ctx.needs_input_grad), backend)
        named = bw.grads(c, *grad_outputs)
        unknown = set(named) - set(names)
        if unknown:
            raise RuntimeError(f"pygen::{spec.name}: gradients for unknown inputs {sorted(unknown)}")
        return tuple(named.get(n) for n in names)

    op.register_autograd(backward, setup_context=setup_context)
    return op


def get(name: str):
    """The registered op ``pygen::<name>`` (KeyError when it was never defined)."""
    return _OPS[name]


def registered() -> list[str]:
    return sorted(_OPS)


def kernel_backends() -> dict[str, set[str]]:
    """op name -> the kernel backends it is registered for (``pygen info`` lists the ops a set
    PYGEN_BACKEND has no kernel for)."""
    out: dict[str, set[str]] = {}
    for name in _OPS:
        if "_backward_" in name:
            continue
        op, _, backend = name.rpartition("_")
        if backend in ("cuda", "triton", "cpu"):
            out.setdefault(op, set()).add(backend)
    return out
