"""Flow layers (pygen.nn) and models (pygen.models.flows): invertibility, log-dets against
autograd Jacobians of whole models, triton = reference through training steps, and training smoke
tests on data generated here (two moons for RealNVP 2-D, synthetic 8x8 images for Glow)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import backend_params

from pygen import nn as pnn
from pygen.models import flows as M
from pygen.ref import flows as ref

KERNEL_PARAMS = [p for p in backend_params(kernel_only=True) if p.values[1] == "triton"]


# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_actnorm_module_data_dependent_init(gen):
    x = torch.randn(32, 3, 4, 4, generator=gen) * torch.tensor([2.0, 0.5, 1.0]).view(1, 3, 1, 1) + 1
    for logscale in (True, False):
        m = pnn.ActNorm(3, logscale=logscale, backend="reference")
        assert set(m.state_dict()) == {"loc", "log_scale" if logscale else "scale", "initialized"}
        y, ld = m(x)
        assert int(m.initialized) == 1
        torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
        loc0 = m.loc.detach().clone()
        m(x * 3)  # initialised once only
        assert torch.equal(m.loc.detach(), loc0)
        xr, ldr = m.inverse(y)
        torch.testing.assert_close(xr, x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ldr, -ld)
    m = pnn.ActNorm(3).eval()  # eval before any batch: no init, identity
    assert torch.equal(m(x)[0], x) and int(m.initialized) == 0


def test_invconv_module_forms(gen):
    x = torch.randn(2, 6, 3, 3, generator=gen)
    lu = pnn.InvConv1x1(6, lu=True, backend="reference")
    assert {"w_p", "s_sign", "w_l", "w_s", "w_u"} <= set(lu.state_dict())
    plain = pnn.InvConv1x1(6, lu=False, backend="reference")
    assert set(plain.state_dict()) == {"weight"} and plain.weight.shape == (6, 6, 1, 1)
    for m in (lu, plain):
        y, ld = m(x)
        xr, ldr = m.inverse(y)
        torch.testing.assert_close(xr, x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ldr, -ld)
        # an orthogonal initial weight: |det W| = 1
        torch.testing.assert_close(ld, torch.zeros(2), atol=1e-5, rtol=0)
    w = ref.lu_weight(lu.w_p, lu.w_l, lu.w_u, lu.s_sign * torch.exp(lu.w_s))
    torch.testing.assert_close(lu(x)[0], torch.nn.functional.conv2d(x, w[:, :, None, None]), atol=1e-5, rtol=1e-5)


def test_couplings_and_squeeze_invert(gen):
    x = torch.randn(3, 4, 4, 4, generator=gen)
    for flip in (False, True):
        net = pnn.flows.coupling_net(2, 4, 8)
        torch.nn.init.normal_(net[-1].conv.weight, std=0.1)  # not the identity
        m = pnn.AffineCoupling(net, clamp=1.0, flip=flip, backend="reference")
        y, ld = m(x)
        kept = x[:, 2:] if flip else x[:, :2]
        assert torch.equal((y[:, 2:] if flip else y[:, :2]), kept)
        xr, ldr = m.inverse(y)
        torch.testing.assert_close(xr, x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ldr, -ld)
        a = pnn.AdditiveCoupling(pnn.flows.coupling_net(2, 2, 8), flip=flip, backend="reference")
        y, ld = a(x)
        assert not ld.any()
        torch.testing.assert_close(a.inverse(y)[0], x)
    sq = pnn.Squeeze()
    y, _ = sq(x)
    assert y.shape == (3, 16, 2, 2) and torch.equal(sq.inverse(y)[0], x)
    assert torch.equal(y[:, 1 * 4 + 2, 1, 0], x[:, 1, 3, 0])  # channel c*4 + i*2 + j, pixel (2h+i, 2w+j)


def test_odd_channel_split_is_glows(gen):
    """x_a is the first C//2 channels (Glow's split; x.chunk gave it C//2 + 1 and FlowStep's
    conditioner, built for C//2, failed); both couplings and a whole FlowStep invert on C = 3."""
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    for affine in (True, False):
        step = M.FlowStep(3, 8, affine=affine, backend="reference").double()
        _perturb(step, gen)
        y, ld = step(x)
        xr, ldr = step.inverse(y)
        torch.testing.assert_close(xr, x, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ldr, -ld)
    net = pnn.flows.coupling_net(1, 4, 8).double()
    torch.nn.init.normal_(net[-1].conv.weight, std=0.1)
    y, _ = pnn.AffineCoupling(net, backend="reference")(x)
    assert torch.equal(y[:, :1], x[:, :1]) and not torch.equal(y[:, 1:], x[:, 1:])


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_layer_logdets_take_in_place_updates(backend, gen, monkeypatch):
    """``logdet += ...`` on a layer's log-det (flow code accumulates so, nflows' layers allow it):
    the forward log-dets were stride-0 expanded views that refused it."""
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(2, 4, 3, 3, generator=gen)
    for m in (pnn.ActNorm(4), pnn.InvConv1x1(4, lu=True), pnn.InvConv1x1(4, lu=False)):
        m.backend = backend
        for run in (m, m.inverse):
            _, ld = run(x)
            want = ld.clone() + 1
            ld += 1
            assert torch.equal(ld, want), (type(m).__name__, backend)


def test_layers_compute_in_the_input_dtype(gen):
    """float32 layers on bfloat16 / float64 input (parameters cast to x, as autocast casts a conv's
    weight), and a Glow under torch.autocast on the reference backend: the einsum of its 1x1 conv
    ran in bf16 there, and the coupling refused the float32 conditioner output beside it."""
    x = torch.randn(2, 4, 4, 4, generator=gen)
    for m in (pnn.ActNorm(4), pnn.InvConv1x1(4, lu=True), pnn.InvConv1x1(4, lu=False)):
        M.set_backend(m, "reference")
        for dt in (torch.bfloat16, torch.float64):
            y, ld = m(x.to(dt))
            assert y.dtype == dt and ld.dtype == (torch.float64 if dt == torch.float64 else torch.float32)
    model = M.Glow(M.GlowConfig(image=(3, 4, 4), levels=2, steps=1, hidden=8, batch=2), backend="reference")
    _perturb(model, gen)
    xs = torch.rand(2, 3, 4, 4, generator=gen) - 0.5
    want = model.log_prob(xs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.log_prob(xs)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.5)  # the conditioners' convs ran in bf16


def test_actnorm_half_zero_variance_channel(gen):
    """A constant channel initialises to log_scale = -log(1e-6) = 13.8: the reference computed
    exp of it in float16 (inf, and inf * 0 = NaN for the whole channel); it now computes in float32
    and rounds once, as the kernel."""
    x = torch.randn(8, 3, 2, 2, generator=gen).half()
    x[:, 1] = 0.5
    m = pnn.ActNorm(3, backend="reference").half()
    y, ld = m(x)
    assert torch.isfinite(y).all() and not y[:, 1].any() and torch.isfinite(ld).all()


def test_rosinality_state_dicts_load(gen):
    """The layer names follow rosinality/glow-pytorch: its InvConv2dLU state (with its mask and
    identity buffers) and its ActNorm's [1, C, 1, 1] loc / scale load into InvConv1x1 / ActNorm."""
    lu = pnn.InvConv1x1(4, lu=True, backend="reference")
    state = {k: v.clone() for k, v in lu.state_dict().items()}
    state["u_mask"] = torch.triu(torch.ones(4, 4), 1)
    state["l_mask"] = state["u_mask"].T
    state["l_eye"] = torch.eye(4)
    fresh = pnn.InvConv1x1(4, lu=True, backend="reference", generator=torch.Generator().manual_seed(5))
    fresh.load_state_dict(state)
    x = torch.randn(2, 4, 3, 3, generator=gen)
    torch.testing.assert_close(fresh(x)[0], lu(x)[0])
    an = pnn.ActNorm(4, logscale=False, backend="reference")
    loc, scale = torch.randn(1, 4, 1, 1, generator=gen), torch.rand(1, 4, 1, 1, generator=gen) + 0.5
    an.load_state_dict({"loc": loc, "scale": scale, "initialized": torch.tensor(1, dtype=torch.uint8)})
    torch.testing.assert_close(an(x)[0], scale * (x + loc))  # rosinality's formula


def test_models_edge_inputs(gen):
    """An empty batch has log_prob [0] (reshape(0, -1) failed); sample() follows the model's dtype;
    a wrong image shape, and a bad Squeeze input, name x."""
    glow = M.Glow(M.GlowConfig(image=(3, 4, 4), levels=2, steps=1, hidden=8, batch=2))
    assert glow.log_prob(torch.zeros(0, 3, 4, 4)).shape == (0,)
    assert M.RealNVP2D(M.RealNVP2DConfig(couplings=2, hidden=8)).log_prob(torch.zeros(0, 2)).shape == (0,)
    assert glow.double().sample(2).dtype == torch.float64
    with pytest.raises(ValueError, match=r"Glow: x must be \[B, 3, 4, 4\]"):
        glow.log_prob(torch.zeros(2, 3, 6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="ActNorm: x must be"):
        pnn.ActNorm(3)(torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match="Squeeze: x must be"):
        pnn.Squeeze()(torch.zeros(2, 3, 5, 4))
    m = pnn.ActNorm(3)
    m(torch.zeros(0, 3, 2, 2))  # an empty first batch leaves the init to the next one
    assert int(m.initialized) == 0


def test_actnorm_trains_under_torch_compile(gen):
    """ActNorm in training mode under torch.compile(fullgraph=True): the init test read the
    ``initialized`` buffer (a data-dependent branch dynamo refuses, and a device sync per step);
    it now reads a Python flag kept in step with it (initialize, load_state_dict)."""
    torch._dynamo.reset()
    m = pnn.ActNorm(4, backend="reference")
    x = torch.randn(8, 4, 3, 3, generator=gen)
    m(x)  # data-dependent init, eagerly
    f = torch.compile(m, fullgraph=True, backend="eager")
    y, ld = f(x)
    want_y, want_ld = m(x)
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(ld, want_ld)
    fresh = pnn.ActNorm(4, backend="reference")
    fresh.load_state_dict(m.state_dict())  # the flag follows the loaded buffer: no second init
    fresh(x * 3)
    torch.testing.assert_close(fresh.loc, m.loc)


def _tiny(kind):
    if kind == "glow":
        return M.Glow(M.GlowConfig(image=(2, 4, 4), levels=2, steps=1, hidden=8, batch=2))
    if kind == "realnvp_image":
        return M.RealNVPImage(M.RealNVPImageConfig(image=(1, 4, 4), scales=2, hidden=8, batch=2))
    return M.RealNVP2D(M.RealNVP2DConfig(couplings=3, hidden=8, batch=2))


def _perturb(model, gen):
    """Leave the identity initialisation (zero-initialised outputs, fresh ActNorm)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("kind", ["glow", "realnvp_image", "realnvp_2d"])
def test_models_invert_and_logdet_equals_jacobian(kind, gen):
    model = _tiny(kind).double()
    M.set_backend(model, "reference")
    _perturb(model, gen)
    model.eval()
    shape = (2, 2) if kind == "realnvp_2d" else (2, *model.cfg.image)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)

    def flat(xi):
        out = model.encode(xi)[0]
        return torch.cat([z.reshape(-1) for z in out]) if isinstance(out, list) else out.reshape(-1)

    enc = model.encode(x)
    logdet = enc[1]
    for i in range(2):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: flat(v.reshape(xi.shape)), xi.reshape(-1))
        assert jac.shape[0] == jac.shape[1] == xi.numel()
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.decode(enc[0]), x, rtol=1e-9, atol=1e-9)
    s = model.sample(3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert s.shape == (3, *shape[1:]) and torch.isfinite(model.log_prob(s)).all()


GLOW_TINY = M.GlowConfig(image=(3, 4, 4), levels=2, steps=1, hidden=8, batch=4)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
@pytest.mark.parametrize("kind", ["glow", "realnvp_2d"])
def test_training_steps_triton_match_reference(kind, device, backend, gen):
    """Two SGD steps from the same initialisation: the triton model follows the reference (SGD,
    not Adam: Adam's first steps are +-lr * sign(grad) and flip on rounding-level differences)."""
    models = {}
    for b in ("reference", backend):
        m = (M.Glow(GLOW_TINY) if kind == "glow" else M.RealNVP2D(M.RealNVP2DConfig.quick())).to(device)
        if kind == "glow":  # the plain (slogdet) 1x1 conv too: replace the first LU conv
            torch.manual_seed(1)
            m.levels[0][0].invconv = pnn.InvConv1x1(12, lu=False)
        M.set_backend(m.to(device), b)
        _perturb(m, torch.Generator().manual_seed(2))
        models[b] = m
    data_gen = torch.Generator().manual_seed(3)
    batches = [
        (M.Glow.example_inputs(GLOW_TINY, seed=s)[0] if kind == "glow" else M.two_moons(64, data_gen)).to(device)
        for s in range(2)
    ]
    losses = {}
    for b, m in models.items():
        opt = torch.optim.SGD(m.parameters(), lr=1e-2)
        losses[b] = []
        for x in batches:
            loss = -m.log_prob(x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[b].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses[backend]), torch.tensor(losses["reference"]), rtol=1e-5, atol=1e-5)
    for (n, p), q in zip(models["reference"].named_parameters(), models[backend].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=n)


def _synthetic_images(n: int, gen: torch.Generator, bits: int = 5) -> torch.Tensor:
    """8x8 RGB images of one coloured Gaussian blob on a horizontal ramp, quantised to ``bits``
    and dequantised with uniform noise, in [-0.5, 0.5) (Glow's preprocessing)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    c = torch.rand(n, 2, generator=gen) * 1.2 - 0.6
    r = 0.2 + 0.3 * torch.rand(n, generator=gen)
    blob = torch.exp(-((xx - c[:, :1, None]) ** 2 + (yy - c[:, 1:, None]) ** 2) / r[:, None, None] ** 2)
    img = 0.8 * blob[:, None] * torch.rand(n, 3, 1, 1, generator=gen) + 0.1 * (xx + 1)[None, None]
    levels = 2**bits
    q = torch.floor(img.clamp(0, 1 - 1e-6) * levels) / levels
    return q + torch.rand(q.shape, generator=gen) / levels - 0.5


def _train(model, batch_fn, steps: int, lr: float, scale: float = 1.0) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = -model.log_prob(batch_fn()).mean() * scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_realnvp_two_moons_nll_falls():
    g = torch.Generator().manual_seed(0)
    model = M.RealNVP2D(M.RealNVP2DConfig(couplings=6, hidden=32), backend="reference")
    losses = _train(model, lambda: M.two_moons(256, g), 100, 5e-3)
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert all(math.isfinite(v) for v in losses)
    assert last < first - 0.5, (first, last)  # nats per point


def test_glow_8x8_images_nll_falls():
    g = torch.Generator().manual_seed(0)
    model = M.Glow(M.GlowConfig.quick(), backend="reference")
    dims = 3 * 8 * 8
    # bits per dimension of the 5-bit discrete data: -log p / (D log 2) + 5
    losses = _train(model, lambda: _synthetic_images(32, g), 100, 2e-3, 1 / (dims * math.log(2)))
    first, last = sum(losses[:5]) / 5 + 5, sum(losses[-10:]) / 10 + 5
    assert all(math.isfinite(v) for v in losses)
    assert last < first - 1.0, (first, last)
    s = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(s).all()


def test_set_backend_reaches_every_flow_layer():
    model = M.Glow(M.GlowConfig.quick())
    M.set_backend(model, "reference")
    layers = [m for m in model.modules() if hasattr(m, "backend")]
    assert layers and all(m.backend == "reference" for m in layers)
    assert len(layers) == 2 * 2 * 3  # levels x steps x (actnorm, invconv, coupling)
