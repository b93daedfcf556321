"""Normalizing-flow models on pygen's flow layers, gpt-fast style (a config dataclass and plain
modules): RealNVP on 2-D points and on images (Dinh et al. 2017) and Glow (Kingma & Dhariwal
2018). Each has ``log_prob(x)`` (nats per sample) and ``sample(n)``; ``backend="reference"``
(constructor argument, or ``set_backend(model, b)`` later) runs every flow op on pygen.ref.

Glow (multi-scale), for L levels of K steps on [B, C, H, W]::

    for level l < L:  x = squeeze(x)                       [B, 4C, H/2, W/2]
                      K x (ActNorm -> InvConv1x1 -> AffineCoupling)
                      if l < L-1: x, z_l = x.chunk(2, 1);  log p(z_l | x) under N(mu(x), sigma(x)^2)
                                  (mu, log sigma) = ZeroConv2d(x)   (the learned split prior)
    log p(x) = sum_l log p(z_l | .) + log N(x_final; 0, I) + sum of every step's logdet

RealNVP image: per scale 3 checkerboard affine couplings, squeeze, 3 channel-wise couplings and a
split (the last scale: 4 checkerboard couplings). A checkerboard coupling is computed as a
channel coupling of the 2x2-squeezed image whose channels are grouped by sub-pixel parity
((0,0),(1,1) vs (0,1),(1,0)): the conditioner sees exactly the unmasked pixels (at half
resolution), and the transformed pixels are exactly the masked ones, so the Jacobian stays
triangular with the coupling's log-det. ActNorm replaces RealNVP's batch normalisation.

RealNVP 2-D: alternating affine couplings on (x1, x2) with MLP conditioners and ActNorm.
``*.quick()`` configs keep the structure at toy sizes for tests and ``pygen profile --quick``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.types import Device

from .. import nn as pnn
from ..nn.flows import ZeroConv2d, coupling_net
from ..ref import flows as ref

_LOG_2PI = math.log(2 * math.pi)
_Normal = Callable[[tuple[int, ...]], torch.Tensor]  # shape -> N(0, I) draws (_Flow._normal)


def _gaussian_logp(z: torch.Tensor, mean=None, log_sd=None) -> torch.Tensor:
    """log N(z; mean, exp(log_sd)^2) summed over all but the batch dim (float32/64)."""
    if mean is None:
        lp = -0.5 * (_LOG_2PI + z * z)
    else:
        lp = -0.5 * _LOG_2PI - log_sd - 0.5 * (z - mean) ** 2 * torch.exp(-2 * log_sd)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    return lp.flatten(1).to(acc).sum(1)  # flatten, not reshape(B, -1): an empty batch has shape [0]


@contextlib.contextmanager
def _seeded(seed: int):
    """Deterministic weights for a given config seed without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Point every pygen flow layer of ``model`` at ``backend`` (None: automatic choice)."""
    for m in model.modules():
        if isinstance(m, (pnn.ActNorm, pnn.InvConv1x1, pnn.AffineCoupling, pnn.AdditiveCoupling)):
            m.backend = backend
    return model


class _Flow(nn.Module):
    """What the flow models share: ``forward`` is ``log_prob``, and ``sample`` decodes latents
    drawn from N(0, I) in the shapes ``_latents`` asks for (Glow's sample adds its split priors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def _normal(self, generator: torch.Generator | None, device: Device | None, dtype: torch.dtype | None) -> _Normal:
        """shape -> N(0, I) noise drawn on the CPU with ``generator`` (the same draws on every
        device), moved to ``device`` and in ``dtype`` (defaults: the model's)."""
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        return lambda shape: torch.randn(shape, generator=generator, dtype=dtype).to(device)

    def _check_input(self, x: torch.Tensor, shape: tuple[int, ...]) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: x must be [B, {', '.join(map(str, shape))}], got {got}")

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: Device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        return self.decode(self._latents(n, self._normal(generator, device, dtype)))


class FlowStep(nn.Module):
    """Glow's step of flow: ActNorm -> invertible 1x1 conv -> affine (or additive) coupling."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        affine: bool = True,
        lu: bool = True,
        clamp: float | None = 2.0,
        backend: str | None = None,
        scale: str = "exp",
    ):
        super().__init__()
        self.actnorm = pnn.ActNorm(channels, backend=backend)
        self.invconv = pnn.InvConv1x1(channels, lu=lu, backend=backend)
        half = channels // 2
        if affine:
            self.coupling = pnn.AffineCoupling(
                coupling_net(half, 2 * (channels - half), hidden), clamp, scale=scale, backend=backend
            )
        else:
            self.coupling = pnn.AdditiveCoupling(coupling_net(half, channels - half, hidden), backend=backend)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, ld0 = self.actnorm(x)
        x, ld1 = self.invconv(x)
        x, ld2 = self.coupling(x)
        return x, ld0 + ld1 + ld2

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, ld2 = self.coupling.inverse(y)
        y, ld1 = self.invconv.inverse(y)
        y, ld0 = self.actnorm.inverse(y)
        return y, ld0 + ld1 + ld2


# ---- Glow ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlowConfig:
    image: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    levels: int = 3
    steps: int = 32  # steps of flow per level
    hidden: int = 512  # conditioner width
    affine: bool = True
    lu: bool = True
    clamp: float | None = 2.0  # soft clamp of the "exp" scale
    scale: str = "sigmoid"  # coupling scale: Glow's sigmoid(raw + 2), or "exp"
    batch: int = 64  # example_inputs / pygen profile
    seed: int = 0

    @classmethod
    def quick(cls) -> GlowConfig:
        return cls(image=(3, 8, 8), levels=2, steps=2, hidden=16, batch=8)


class Glow(_Flow):
    def __init__(self, cfg: GlowConfig = GlowConfig(), backend: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.image
        if h % (1 << cfg.levels) or w % (1 << cfg.levels):
            raise ValueError(f"GlowConfig: H and W must be divisible by 2^levels = {1 << cfg.levels}, got {h}x{w}")
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.shapes = []
        with _seeded(cfg.seed):
            for lvl in range(cfg.levels):
                c, h, w = c * 4, h // 2, w // 2
                self.levels.append(
                    nn.ModuleList(
                        FlowStep(c, cfg.hidden, cfg.affine, cfg.lu, cfg.clamp, backend, cfg.scale)
                        for _ in range(cfg.steps)
                    )
                )
                if lvl < cfg.levels - 1:
                    self.priors.append(ZeroConv2d(c // 2, c))  # -> (mean, log_sd) of the split half
                    self.shapes.append((c // 2, h, w))
                    c = c // 2
        self.top_shape = (c, h, w)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """x -> (latents [z_0, ..., z_top], sum of the steps' logdets, log p of the latents),
        each per sample; the latents' density is N(mu_l, sigma_l) given the kept half for z_l
        and N(0, I) for z_top."""
        self._check_input(x, self.cfg.image)
        logdet = prior = 0
        zs = []
        for lvl, steps in enumerate(self.levels):
            x = ref.squeeze2d(x)
            for step in steps:
                x, ld = step(x)
                logdet = logdet + ld
            if lvl < len(self.levels) - 1:
                x, z = x.chunk(2, 1)
                mean, log_sd = self.priors[lvl](x).chunk(2, 1)
                prior = prior + _gaussian_logp(z, mean, log_sd)
                zs.append(z)
        zs.append(x)
        return zs, logdet, prior + _gaussian_logp(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log density of x [B, C, H, W] in nats per sample (no dequantisation term)."""
        _, logdet, prior = self.encode(x)
        return logdet + prior

    def decode(self, zs: list[torch.Tensor]) -> torch.Tensor:
        x = zs[-1]
        for lvl in range(len(self.levels) - 1, -1, -1):
            if lvl < len(self.levels) - 1:
                x = torch.cat([x, zs[lvl]], 1)
            for step in reversed(self.levels[lvl]):
                x, _ = step.inverse(x)
            x = ref.unsqueeze2d(x)
        return x

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: Device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        randn = self._normal(generator, device, dtype)
        x = randn((n, *self.top_shape)) * temperature
        for lvl in range(len(self.levels) - 1, -1, -1):
            if lvl < len(self.levels) - 1:
                mean, log_sd = self.priors[lvl](x).chunk(2, 1)
                z = mean + torch.exp(log_sd) * temperature * randn((n, *self.shapes[lvl]))
                x = torch.cat([x, z], 1)
            for step in reversed(self.levels[lvl]):
                x, _ = step.inverse(x)
            x = ref.unsqueeze2d(x)
        return x

    @staticmethod
    def example_inputs(
        cfg: GlowConfig, device: Device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor]:
        """Dequantised 8-bit-like images in [-0.5, 0.5): the Glow preprocessing of uniform data."""
        g = torch.Generator().manual_seed(seed)
        x = torch.floor(torch.rand((cfg.batch, *cfg.image), generator=g) * 256) / 256 - 0.5
        x = x + torch.rand(x.shape, generator=g) / 256
        return (x.to(device=device, dtype=dtype),)


# ---- RealNVP ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealNVP2DConfig:
    couplings: int = 8
    hidden: int = 64
    clamp: float | None = 2.0
    batch: int = 512
    seed: int = 0

    @classmethod
    def quick(cls) -> RealNVP2DConfig:
        return cls(couplings=4, hidden=16, batch=64)


class RealNVP2D(_Flow):
    """RealNVP on 2-D points: ActNorm -> affine coupling, alternating which coordinate moves."""

    def __init__(self, cfg: RealNVP2DConfig = RealNVP2DConfig(), backend: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList()
        with _seeded(cfg.seed):
            for i in range(cfg.couplings):
                self.layers.append(pnn.ActNorm(2, backend=backend))
                self.layers.append(
                    pnn.AffineCoupling(
                        coupling_net(1, 2, cfg.hidden, image=False), cfg.clamp, flip=bool(i % 2), backend=backend
                    )
                )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 2] -> (z, sum of logdets)."""
        self._check_input(x, (2,))
        total = 0
        for layer in self.layers:
            x, ld = layer(x)
            total = total + ld
        return x, total

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z, _ = layer.inverse(z)
        return z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, ld = self.encode(x)
        return ld + _gaussian_logp(z)

    def _latents(self, n: int, randn: _Normal) -> torch.Tensor:
        return randn((n, 2))

    @staticmethod
    def example_inputs(
        cfg: RealNVP2DConfig, device: Device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor]:
        return (two_moons(cfg.batch, torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype),)


def two_moons(n: int, generator: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """The two-moons toy density: two interleaved half circles plus Gaussian noise, [n, 2]."""
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=generator)
    return (pts - torch.tensor([0.5, 0.25])) * 2


@dataclass(frozen=True)
class RealNVPImageConfig:
    image: tuple[int, int, int] = (3, 32, 32)
    scales: int = 2
    hidden: int = 64
    clamp: float | None = 2.0
    batch: int = 64
    seed: int = 0

    @classmethod
    def quick(cls) -> RealNVPImageConfig:
        return cls(image=(1, 8, 8), scales=2, hidden=16, batch=8)


def _parity_perm(c: int) -> torch.Tensor:
    """Channel order of a squeezed [4C] tensor grouping sub-pixels (0,0),(1,1) then (0,1),(1,0)."""
    even = [k * 4 + o for k in range(c) for o in (0, 3)]
    odd = [k * 4 + o for k in range(c) for o in (1, 2)]
    return torch.tensor(even + odd)


class _Checkerboard(nn.Module):
    """Checkerboard-masked affine coupling on [B, C, H, W] (see the module docstring)."""

    def __init__(self, c: int, hidden: int, clamp, flip: bool, backend):
        super().__init__()
        self.register_buffer("perm", _parity_perm(c), persistent=False)
        self.register_buffer("inv_perm", torch.argsort(_parity_perm(c)), persistent=False)
        self.coupling = pnn.AffineCoupling(coupling_net(2 * c, 4 * c, hidden), clamp, flip, backend=backend)

    def _run(self, x, reverse):
        xs = ref.squeeze2d(x)[:, self.perm]
        y, ld = self.coupling.inverse(xs) if reverse else self.coupling(xs)
        return ref.unsqueeze2d(y[:, self.inv_perm]), ld

    def forward(self, x):
        return self._run(x, False)

    def inverse(self, y):
        return self._run(y, True)


class RealNVPImage(_Flow):
    def __init__(self, cfg: RealNVPImageConfig = RealNVPImageConfig(), backend: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.image
        self.scales = nn.ModuleList()
        self.shapes = []
        with _seeded(cfg.seed):
            self._build(cfg, c, h, w, backend)

    def _build(self, cfg, c, h, w, backend):
        for s in range(cfg.scales):
            last = s == cfg.scales - 1
            n_check = 4 if last else 3
            blocks = nn.ModuleList(
                _Checkerboard(c, cfg.hidden, cfg.clamp, bool(i % 2), backend) for i in range(n_check)
            )
            chan = nn.ModuleList()
            if not last:
                chan.extend(
                    pnn.AffineCoupling(coupling_net(2 * c, 4 * c, cfg.hidden), cfg.clamp, bool(i % 2), backend=backend)
                    for i in range(3)
                )
            self.scales.append(nn.ModuleDict({"checker": blocks, "channel": chan}))
            if not last:
                c, h, w = 2 * c, h // 2, w // 2  # squeeze (4c) then keep half
                self.shapes.append((c, h, w))
        self.top_shape = (c, h, w)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """x -> (latents [z_0, ..., z_top], sum of logdets, log N(latents; 0, I)) per sample."""
        self._check_input(x, self.cfg.image)
        logdet = prior = 0
        zs = []
        for sc in self.scales:
            for blk in sc["checker"]:
                x, ld = blk(x)
                logdet = logdet + ld
            if len(sc["channel"]):
                x = ref.squeeze2d(x)
                for blk in sc["channel"]:
                    x, ld = blk(x)
                    logdet = logdet + ld
                x, z = x.chunk(2, 1)
                prior = prior + _gaussian_logp(z)
                zs.append(z)
        zs.append(x)
        return zs, logdet, prior + _gaussian_logp(x)

    def decode(self, zs: list[torch.Tensor]) -> torch.Tensor:
        x = zs[-1]
        for s in range(len(self.scales) - 1, -1, -1):
            sc = self.scales[s]
            if len(sc["channel"]):
                x = torch.cat([x, zs[s]], 1)
                for blk in reversed(sc["channel"]):
                    x, _ = blk.inverse(x)
                x = ref.unsqueeze2d(x)
            for blk in reversed(sc["checker"]):
                x, _ = blk.inverse(x)
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        _, logdet, prior = self.encode(x)
        return logdet + prior

    def _latents(self, n: int, randn: _Normal) -> list[torch.Tensor]:
        return [randn((n, *shape)) for shape in (*self.shapes, self.top_shape)]

    @staticmethod
    def example_inputs(
        cfg: RealNVPImageConfig, device: Device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor]:
        return Glow.example_inputs(cfg, device, dtype, seed)


MODELS = {
    "glow": (Glow, GlowConfig),
    "realnvp_2d": (RealNVP2D, RealNVP2DConfig),
    "realnvp_image": (RealNVPImage, RealNVPImageConfig),
}
