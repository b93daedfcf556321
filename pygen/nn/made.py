"""Drop-in masked linear layer for the MADE implementations of nflows, pyro and zuko.

One class, three constructor forms (told apart by the first argument), each with the arguments,
attributes and state_dict keys of the class it replaces; only ``forward`` differs (it runs
pygen.ops.masked_linear instead of F.linear(x, W * mask, b)):

    MaskedLinear(in_degrees, out_features, autoregressive_features, random_mask, is_output,
                 bias=True)                           # nflows.transforms.made.MaskedLinear
        in_degrees is a 1-D tensor; buffers ``mask`` (float [O, I]) and ``degrees`` (int64 [O],
        the output degrees). Degrees follow nflows' rule, drawing random degrees from the global
        generator after nn.Linear's own initialisation, as nflows does.
    MaskedLinear(in_features, out_features, mask, bias=True)   # pyro.nn.auto_reg_nn.MaskedLinear
        buffer ``mask`` (as given, [O, I])
    MaskedLinear(adjacency, **linear_kwargs)                   # zuko.nn.MaskedLinear
        adjacency is a 2-D bool tensor [O, I]; buffer ``mask`` (the adjacency)

state_dict keys: nflows form ``weight, bias, mask, degrees``; pyro and zuko forms ``weight, bias,
mask``. pygen keeps the input degrees of the nflows form as a non-persistent buffer
(``in_degrees``), so the keys do not change.

Kernel choice: the nflows form passes its degrees straight to the kernel (tile skipping, no mask
read). The pyro and zuko forms reduce their mask to degrees once (pygen.ref.made.degrees_from_mask,
one host synchronisation, cached until the mask buffer changes) and use the plain masked-matmul
kernel when the mask is not autoregressive. The nflows form checks its ``mask`` buffer against its
degrees the same way, so a state_dict whose mask disagrees with its degrees still computes
``F.linear(x, W * mask, b)`` exactly.

pygen extras (keywords only): ``backend=None`` (see pygen.ops.masked_linear) and
``forward(x, activation=None)``, which fuses an activation into the kernel.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .. import ops
from ..ref import made as ref

__all__ = ["MaskedLinear"]


def _nflows_sig(in_degrees, out_features, autoregressive_features, random_mask, is_output, bias=True):
    pass


def _pyro_sig(in_features, out_features, mask, bias=True):
    pass


def _zuko_sig(adjacency, **kwargs):
    pass


def _bind(sig_fn, args, kwargs, form: str):
    try:
        return inspect.signature(sig_fn).bind(*args, **kwargs).arguments
    except TypeError as exc:
        raise TypeError(f"MaskedLinear ({form} form{inspect.signature(sig_fn)}): {exc}") from None


def nflows_mask_and_degrees(
    in_degrees: torch.Tensor, out_features: int, autoregressive_features: int, random_mask: bool, is_output: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """nflows' rule for a MaskedLinear layer: (float mask [O, I], int64 output degrees [O])."""
    d = autoregressive_features
    if is_output:
        if out_features % d:
            raise ValueError(
                f"MaskedLinear: an output layer needs out_features ({out_features}) to be a "
                f"multiple of autoregressive_features ({d})"
            )
        out_deg = ref.output_degrees(d, out_features // d)
        mask = ref.autoregressive_mask(in_degrees.cpu(), out_deg, strict=True)
    else:
        out_deg = ref.hidden_degrees(d, out_features, in_degrees.cpu(), random=random_mask)
        mask = ref.autoregressive_mask(in_degrees.cpu(), out_deg, strict=False)
    return mask.float(), out_deg


class MaskedLinear(nn.Linear):
    """A linear layer with an autoregressive (or any 0/1) mask on its weight; see the module
    docstring for the three constructor forms."""

    def __init__(self, *args: Any, backend: str | None = None, **kwargs: Any) -> None:
        first = args[0] if args else kwargs.get("in_degrees", kwargs.get("adjacency", kwargs.get("in_features")))
        if "in_degrees" in kwargs or (
            isinstance(first, torch.Tensor) and first.dim() == 1 and "adjacency" not in kwargs
        ):
            a = _bind(_nflows_sig, args, kwargs, "nflows")
            in_deg = a["in_degrees"]
            if not isinstance(in_deg, torch.Tensor) or in_deg.dtype.is_floating_point or in_deg.dtype == torch.bool:
                raise TypeError("MaskedLinear: in_degrees must be an integer tensor")
            super().__init__(len(in_deg), a["out_features"], bias=a.get("bias", True))
            mask, degrees = nflows_mask_and_degrees(
                in_deg, a["out_features"], a["autoregressive_features"], a["random_mask"], a["is_output"]
            )
            self.register_buffer("mask", mask.to(self.weight.device))
            self.register_buffer("degrees", degrees.to(self.weight.device))
            self.register_buffer(
                "in_degrees", in_deg.detach().to(torch.int64).to(self.weight.device).clone(), persistent=False
            )
            self.form, self.is_output = "nflows", bool(a["is_output"])
        elif "adjacency" in kwargs or (isinstance(first, torch.Tensor) and first.dim() == 2):
            a = _bind(_zuko_sig, args, kwargs, "zuko")
            adjacency = a["adjacency"]
            super().__init__(*reversed(adjacency.shape), **a.get("kwargs", {}))
            self.register_buffer("mask", adjacency)
            self.form, self.is_output = "zuko", False
        else:
            a = _bind(_pyro_sig, args, kwargs, "pyro")
            mask = a["mask"]
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"MaskedLinear: mask must be a tensor, got {type(mask).__name__}")
            super().__init__(a["in_features"], a["out_features"], bias=a.get("bias", True))
            if tuple(mask.shape) != (a["out_features"], a["in_features"]):
                raise ValueError(
                    f"MaskedLinear: mask must have shape [out_features, in_features] = "
                    f"[{a['out_features']}, {a['in_features']}], got {tuple(mask.shape)}"
                )
            self.register_buffer("mask", mask.data)
            self.form, self.is_output = "pyro", False
        self._start_plan(backend)

    def _start_plan(self, backend: str | None) -> None:
        self.backend = backend
        self._plan_key = None
        self._plan = None

    @classmethod
    def adopt(
        cls,
        source: nn.Linear,
        form: str,
        *,
        in_degrees: torch.Tensor | None = None,
        is_output: bool = False,
        backend: str | None = None,
    ) -> MaskedLinear:
        """A MaskedLinear of ``form`` ("nflows", "pyro" or "zuko") holding ``source``'s weight and
        bias Parameters and its buffers, the same tensor objects (optimizers holding them keep
        working; state_dict keys are unchanged); nothing is allocated or initialised. Used by
        pygen.patch to swap the layer into an nflows / zuko model. nflows form: ``in_degrees`` are
        the layer's input degrees (nflows keeps only the output ones; None derives them from the
        mask), ``is_output`` whether the mask is strict. Whatever they are, the ``mask`` buffer decides
        what is computed (see the module docstring)."""
        if form not in ("nflows", "pyro", "zuko"):
            raise ValueError(f"MaskedLinear.adopt: form must be 'nflows', 'pyro' or 'zuko', got {form!r}")
        mask = source._buffers.get("mask") if isinstance(source, nn.Linear) else None
        if mask is None or tuple(mask.shape) != tuple(source.weight.shape):
            raise ValueError(
                f"MaskedLinear.adopt: source must be an nn.Linear with a 'mask' buffer of its weight's shape, "
                f"got {type(source).__name__}"
            )
        if form == "nflows" and not isinstance(source._buffers.get("degrees"), torch.Tensor):
            raise ValueError("MaskedLinear.adopt: an nflows-form source needs its 'degrees' buffer")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = source.in_features, source.out_features
        new.register_parameter("weight", source.weight)
        new.register_parameter("bias", source.bias)
        for name, buf in source._buffers.items():
            new.register_buffer(name, buf, persistent=name not in source._non_persistent_buffers_set)
        new.form, new.is_output = form, bool(is_output) and form == "nflows"
        if form == "nflows":
            if in_degrees is None:
                derived = ref.degrees_from_mask(mask != 0)
                in_degrees = derived[0] if derived is not None else torch.zeros(mask.shape[1], dtype=torch.int64)
            in_deg = in_degrees.detach().to(device=source.weight.device, dtype=torch.int64).clone()
            new.register_buffer("in_degrees", in_deg, persistent=False)
        new.train(source.training)
        new._start_plan(backend)
        return new

    # ---- what the kernel gets -------------------------------------------------------------------
    def _versions(self):
        bufs = [self.mask] + ([self.degrees, self.in_degrees] if self.form == "nflows" else [])
        return tuple((b.data_ptr(), b._version, b.device, b.dtype, tuple(b.shape)) for b in bufs)

    def kernel_args(self) -> tuple:
        """("degrees", in_degrees, out_degrees, strict) or ("mask", bool mask): what forward passes
        to pygen.ops.masked_linear; ("dense", mask) for a mask holding values other than 0 and 1
        (a loaded state_dict may), computed as the original does: F.linear(x, W * mask, b).
        Computed from the buffers (one host synchronisation) and cached until a buffer changes
        (load_state_dict, .to(), in-place edits)."""
        key = self._versions()
        if key != self._plan_key:
            self._plan = self._derive()
            self._plan_key = key
        return self._plan

    def _drop_plan(self) -> None:
        """The buffers changed (load_state_dict, .to(), permute_): forget the plan, so that a
        compiled forward, which reads the cached plan without checking it, takes the exact dense
        path (and recompiles: it guards on the plan) until an eager call derives the new one."""
        self._plan_key = None
        self._plan = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._drop_plan()

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._drop_plan()
        return out

    def _derive(self):
        if bool(((self.mask != 0) & (self.mask != 1)).any()):  # not a mask: W * mask as the original
            return ("dense", self.mask)
        mask = self.mask != 0
        if (
            self.form == "nflows"
            and self.in_degrees.shape[0] == mask.shape[1]
            and self.degrees.shape[0] == mask.shape[0]
        ):
            if torch.equal(ref.autoregressive_mask(self.in_degrees, self.degrees, self.is_output), mask):
                return ("degrees", self.in_degrees, self.degrees, self.is_output)
        derived = ref.degrees_from_mask(mask)
        if derived is not None:
            return ("degrees", derived[0], derived[1], False)
        return ("mask", mask.contiguous())

    def forward(self, input: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # no host reads while tracing: W * mask (exact for any mask) unless a plan exists (an
            # in-place edit of the mask under compile is not seen: call load_state_dict / permute_)
            plan = self._plan if self._plan is not None else ("dense", self.mask)
        else:
            plan = self.kernel_args()
        if plan[0] == "degrees":
            return ops.masked_linear(
                input, self.weight, self.bias, plan[1], plan[2], plan[3], activation, backend=self.backend
            )
        if plan[0] == "dense":
            return ref.masked_matmul(input, self.weight, self.bias, plan[1], activation)
        return ops.made.masked_linear_plain(input, self.weight, self.bias, plan[1], activation, backend=self.backend)

    # ---- hidden-unit permutations (pygen.models.made.MADE.sort_hidden_) ------------------------
    @torch.no_grad()
    def permute_(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> MaskedLinear:
        """Reorder output units (``rows``) and / or input units (``cols``) in place: weight, bias,
        mask and degrees move together, so the layer computes the same function of the
        correspondingly permuted input / output."""
        if rows is not None:
            rows = rows.to(self.weight.device)
            self.weight.copy_(self.weight[rows])
            if self.bias is not None:
                self.bias.copy_(self.bias[rows])
            self.mask.copy_(self.mask[rows])
            if self.form == "nflows":
                self.degrees.copy_(self.degrees[rows])
        if cols is not None:
            cols = cols.to(self.weight.device)
            self.weight.copy_(self.weight[:, cols])
            self.mask.copy_(self.mask[:, cols])
            if self.form == "nflows":
                self.in_degrees.copy_(self.in_degrees[cols])
        self._drop_plan()
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", form={self.form}" + (", is_output=True" if self.is_output else "")
