"""Flow layers on pygen's flow ops. Every module maps ``forward(x) -> (y, logdet)`` and
``inverse(y) -> (x, logdet)`` with one log|det Jacobian| per sample (float32, float64 for float64
inputs), and takes ``backend=None`` (see pygen.ops.flows) as an extra keyword; ``module.backend``
can be changed later (pygen.models.flows.set_backend does it for a whole model).

    ActNorm(C)              Glow's activation normalisation, data-dependent init on the first
                            non-empty training batch (parameters ``loc``, ``log_scale`` [C], or
                            ``scale`` with ``logscale=False``, which loads rosinality/glow-pytorch's
                            ActNorm [1, C, 1, 1]; buffer ``initialized``)
    InvConv1x1(C, lu=True)  Glow's invertible 1x1 convolution. LU: buffers ``w_p``, ``s_sign``,
                            parameters ``w_l``, ``w_s`` (log|s|), ``w_u`` (the names of the widely
                            copied rosinality/glow-pytorch InvConv2dLU, whose state_dict loads
                            here: its mask buffers are dropped); plain: ``weight`` [C, C, 1, 1]
                            (its log-det from pygen's batched slogdet)
    AffineCoupling(net)     x = [x_a, x_b] along dim 1, x_a the first C//2 channels (Glow's split;
                            odd C gives x_b one more); (raw, t) = net(x_a).chunk(2, 1);
                            y = [x_a, x_b * exp(s) + t], s = clamp*tanh(raw/clamp)
    AdditiveCoupling(net)   y = [x_a, x_b + net(x_a)]
    Squeeze(factor=2)       space-to-depth [B, C, H, W] -> [B, 4C, H/2, W/2] (log-det 0)

``flip=True`` on a coupling swaps the roles of the halves (x_b first), as RealNVP alternates.

The layers compute in the input's dtype: float32 parameters are cast to a bfloat16 x (as autocast
casts a conv's weight) and a conditioner's output to x_b's dtype, so a model runs under
``torch.autocast`` or on half inputs; the log-dets stay float32.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ref import flows as ref

__all__ = ["ActNorm", "InvConv1x1", "AffineCoupling", "AdditiveCoupling", "Squeeze", "ZeroConv2d", "coupling_net"]


def _like(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A parameter in x's dtype (a no-op when it already is; gradients flow through the cast)."""
    return p if p.dtype == x.dtype else p.to(x.dtype)


def _zero_logdet(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


class ActNorm(nn.Module):
    def __init__(
        self, num_channels: int, logscale: bool = True, eps: float = 1e-6, *, backend: str | None = None
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.logscale = logscale
        self.eps = eps
        self.backend = backend
        self.loc = nn.Parameter(torch.zeros(num_channels))
        if logscale:
            self.log_scale = nn.Parameter(torch.zeros(num_channels))
        else:
            self.scale = nn.Parameter(torch.ones(num_channels))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        # the buffer's value as a Python bool (kept in step by initialize and load_state_dict):
        # reading the buffer in forward is a device sync per training step, and a data-dependent
        # branch torch.compile(fullgraph=True) cannot trace
        self._initialized = False

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init (Glow): zero mean, unit variance per channel on this batch."""
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"ActNorm: x must be [B, {self.num_channels}, ...] (num_channels={self.num_channels}), "
                f"got shape {tuple(x.shape)}"
            )
        loc, log_scale = ops.actnorm_init(x, self.eps, backend=self.backend)
        self.loc.copy_(loc)
        if self.logscale:
            self.log_scale.copy_(log_scale)
        else:
            self.scale.copy_(torch.exp(log_scale))
        self.initialized.fill_(1)
        self._initialized = True

    def _params(self, x: torch.Tensor) -> dict:
        if self.logscale:
            return {"log_scale": _like(self.log_scale, x)}
        return {"scale": _like(self.scale, x)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # an empty first batch has no statistics: initialise on the first non-empty one
        if self.training and not self._initialized and x.numel() > 0:
            self.initialize(x)
        return ops.actnorm(x, _like(self.loc, x), **self._params(x), backend=self.backend)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.actnorm(y, _like(self.loc, y), **self._params(y), reverse=True, backend=self.backend)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # rosinality/glow-pytorch's ActNorm keeps loc and scale as [1, C, 1, 1] (same formula as
        # logscale=False): take them as [C]
        for name in ("loc", "scale", "log_scale"):
            t = state_dict.get(prefix + name)
            if t is not None and t.dim() == 4 and t.shape[1] == t.numel() == self.num_channels:
                state_dict[prefix + name] = t.reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, logscale={self.logscale}"


class InvConv1x1(nn.Module):
    def __init__(
        self,
        num_channels: int,
        lu: bool = True,
        *,
        backend: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.lu = lu
        self.backend = backend
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=generator, dtype=torch.float64))
        if not lu:
            self.weight = nn.Parameter(q.float().reshape(num_channels, num_channels, 1, 1))
            return
        p, l, u = torch.linalg.lu(q)
        s = torch.diagonal(u)
        self.register_buffer("w_p", p.float())
        self.register_buffer("s_sign", torch.sign(s).float())
        self.w_l = nn.Parameter(torch.tril(l, -1).float())
        self.w_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self.w_u = nn.Parameter(torch.triu(u, 1).float())

    def _lu_args(self, x: torch.Tensor):
        return tuple(_like(p, x) for p in (self.w_p, self.w_l, self.w_u, self.s_sign * torch.exp(self.w_s)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lu:
            return ops.inv_conv1x1_lu(x, *self._lu_args(x), backend=self.backend)
        return ops.inv_conv1x1(x, _like(self.weight, x), backend=self.backend)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lu:
            return ops.inv_conv1x1_lu(y, *self._lu_args(y), reverse=True, backend=self.backend)
        return ops.inv_conv1x1(y, _like(self.weight, y), reverse=True, backend=self.backend)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # rosinality/glow-pytorch's InvConv2dLU also stores its constant masks and identity:
        # derived, not state, so a checkpoint of it loads here
        if self.lu:
            for name in ("u_mask", "l_mask", "l_eye"):
                state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, lu={self.lu}"


class ZeroConv2d(nn.Module):
    """Glow's zero-initialised output convolution: conv3x3(x) * exp(3 * logs), all zeros at init
    so that every coupling starts as the identity. Zero padding: openai/glow adds an edge-bias
    channel and rosinality/glow-pytorch pads with 1 (its parameter is ``scale``), so trained
    weights of either do not carry over unchanged."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * 3)


def coupling_net(in_channels: int, out_channels: int, hidden: int, image: bool = True) -> nn.Module:
    """Glow's conditioner: conv3x3 -> ReLU -> conv1x1 -> ReLU -> ZeroConv2d (images), or a
    3-layer MLP with a zero-initialised output layer (vectors)."""
    if image:
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )
    last = nn.Linear(hidden, out_channels)
    last.weight.data.zero_()
    last.bias.data.zero_()
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)


class _Coupling(nn.Module):
    def __init__(self, net: nn.Module, flip: bool, backend: str | None):
        super().__init__()
        self.net = net
        self.flip = flip
        self.backend = backend

    def _split(self, x):
        # Glow's split: the first C//2 channels, then the rest (x.chunk would give the first half
        # the extra channel of an odd C, which the conditioners are not built for)
        c = x.shape[1] // 2
        a, b = x[:, :c], x[:, c:]
        return (b, a) if self.flip else (a, b)

    def _join(self, a, b):
        return torch.cat([b, a] if self.flip else [a, b], 1)

    def _transform(self, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, False)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(y, True)


class AffineCoupling(_Coupling):
    def __init__(
        self,
        net: nn.Module,
        clamp: float | None = 2.0,
        flip: bool = False,
        *,
        scale: str = "exp",
        backend: str | None = None,
    ) -> None:
        super().__init__(net, flip, backend)
        if scale not in ("exp", "sigmoid"):
            raise ValueError(f"AffineCoupling: scale must be 'exp' or 'sigmoid', got {scale!r}")
        self.clamp = clamp
        self.scale = scale

    def _transform(self, x, reverse):
        a, b = self._split(x)
        raw, t = (_like(r, b) for r in self.net(a).chunk(2, 1))
        out, ld = ops.affine_coupling(
            b, raw, t, reverse=reverse, clamp=self.clamp, scale=self.scale, backend=self.backend
        )
        return self._join(a, out), ld

    def extra_repr(self) -> str:
        return f"clamp={self.clamp}, flip={self.flip}, scale={self.scale!r}"


class AdditiveCoupling(_Coupling):
    def __init__(self, net: nn.Module, flip: bool = False, *, backend: str | None = None) -> None:
        super().__init__(net, flip, backend)

    def _transform(self, x, reverse):
        a, b = self._split(x)
        out, ld = ops.additive_coupling(b, _like(self.net(a), b), reverse=reverse, backend=self.backend)
        return self._join(a, out), ld

    def extra_repr(self) -> str:
        return f"flip={self.flip}"


class Squeeze(nn.Module):
    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.factor
        if x.dim() != 4 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"Squeeze: x must be [B, C, H, W] with H and W divisible by {f}, got {tuple(x.shape)}")
        return ref.squeeze2d(x, f), _zero_logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ref.unsqueeze2d(y, self.factor), _zero_logdet(y)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
