"""Flow layers on pygen's flow ops. Every module maps ``forward(x) -> (y, logdet)`` and
``inverse(y) -> (x, logdet)`` with one log|det Jacobian| per sample (float32, float64 for float64
inputs), and takes ``backend=None`` (see pygen.ops.flows) as an extra keyword; ``module.backend``
can be changed later (pygen.models.flows.set_backend does it for a whole model).

    ActNorm(C)              Glow's activation normalisation, data-dependent init on the first
                            training batch (parameters ``loc``, ``log_scale`` [C], or ``scale``
                            with ``logscale=False``; buffer ``initialized``)
    InvConv1x1(C, lu=True)  Glow's invertible 1x1 convolution. LU: buffers ``w_p``, ``s_sign``,
                            parameters ``w_l``, ``w_s`` (log|s|), ``w_u`` (the names of the widely
                            copied rosinality/glow-pytorch InvConv2dLU); plain: ``weight``
                            [C, C, 1, 1] (its log-det from pygen's batched slogdet)
    AffineCoupling(net)     x = [x_a, x_b] along dim 1; (raw, t) = net(x_a).chunk(2, 1);
                            y = [x_a, x_b * exp(s) + t], s = clamp*tanh(raw/clamp)
    AdditiveCoupling(net)   y = [x_a, x_b + net(x_a)]
    Squeeze(factor=2)       space-to-depth [B, C, H, W] -> [B, 4C, H/2, W/2] (log-det 0)

``flip=True`` on a coupling swaps the roles of the halves (x_b first), as RealNVP alternates.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ref import flows as ref

__all__ = ["ActNorm", "InvConv1x1", "AffineCoupling", "AdditiveCoupling", "Squeeze", "ZeroConv2d", "coupling_net"]


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

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init (Glow): zero mean, unit variance per channel on this batch."""
        loc, log_scale = ops.actnorm_init(x, self.eps, backend=self.backend)
        self.loc.copy_(loc)
        if self.logscale:
            self.log_scale.copy_(log_scale)
        else:
            self.scale.copy_(torch.exp(log_scale))
        self.initialized.fill_(1)

    def _params(self) -> dict:
        return {"log_scale": self.log_scale} if self.logscale else {"scale": self.scale}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        return ops.actnorm(x, self.loc, **self._params(), backend=self.backend)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.actnorm(y, self.loc, **self._params(), reverse=True, backend=self.backend)

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

    def _lu_args(self):
        return self.w_p, self.w_l, self.w_u, self.s_sign * torch.exp(self.w_s)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lu:
            return ops.inv_conv1x1_lu(x, *self._lu_args(), backend=self.backend)
        return ops.inv_conv1x1(x, self.weight, backend=self.backend)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lu:
            return ops.inv_conv1x1_lu(y, *self._lu_args(), reverse=True, backend=self.backend)
        return ops.inv_conv1x1(y, self.weight, reverse=True, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, lu={self.lu}"


class ZeroConv2d(nn.Module):
    """Glow's zero-initialised output convolution: conv3x3(x) * exp(3 * logs), all zeros at init
    so that every coupling starts as the identity."""

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
        a, b = x.chunk(2, 1)
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
        raw, t = self.net(a).chunk(2, 1)
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
        out, ld = ops.additive_coupling(b, self.net(a), reverse=reverse, backend=self.backend)
        return self._join(a, out), ld

    def extra_repr(self) -> str:
        return f"flip={self.flip}"


class Squeeze(nn.Module):
    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ref.squeeze2d(x, self.factor), _zero_logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ref.unsqueeze2d(y, self.factor), _zero_logdet(y)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
