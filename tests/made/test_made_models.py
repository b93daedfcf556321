"""MADE family above the op: the MaskedLinear drop-in against masks built the way nflows, pyro and
zuko build them (their construction rules written out independently here), MADE / MAF / IAF,
incremental sampling against the D-pass reference, a sampling-distribution test, a training
smoke test and bad input. Almost everything runs in float64 on the reference backend (fast);
the Triton path of the modules is exercised by two small float32 tests."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import backend_params
from torch import nn

from pygen import ops
from pygen.models import made as M
from pygen.nn import MaskedLinear
from pygen.ops import _made_sample as sampler
from pygen.ref import made as ref

KERNEL_PARAMS = [p for p in backend_params() if p.values[1] == "triton"]


# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


class DenseMasked(nn.Linear):
    """What nflows / pyro / zuko compute: F.linear(x, W * mask, b) with a ``mask`` buffer."""

    def __init__(self, mask, bias=True, extra=None):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask)
        for k, v in (extra or {}).items():
            self.register_buffer(k, v)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


# ---- the three libraries' mask construction rules ------------------------------------------------
def nflows_degrees(d, hidden, n_hidden_layers, multiplier):
    """nflows (ordered masks): inputs 1..D, hidden k % max(1, D-1) + min(1, D-1), outputs tiled."""
    degs = [torch.arange(1, d + 1)]
    for _ in range(n_hidden_layers):
        degs.append(torch.arange(hidden) % max(1, d - 1) + min(1, d - 1))
    degs.append(torch.arange(1, d + 1).repeat_interleave(multiplier))
    masks = [(degs[l + 1][:, None] >= degs[l][None, :]).float() for l in range(n_hidden_layers)]
    masks.append((degs[-1][:, None] > degs[-2][None, :]).float())
    return degs, masks


def pyro_masks(d, hidden_dims, permutation, multiplier):
    """pyro's AutoRegressiveNN (no context): var_index[perm] = 0..D-1, hidden indices
    round(linspace(1, D-1, H)), outputs var_index + 1 repeated (block-tiled) ``multiplier`` times."""
    var_index = torch.empty(d, dtype=F64)
    var_index[permutation] = torch.arange(d, dtype=F64)
    inputs = 1 + var_index
    hidden = [torch.round(torch.linspace(1, d - 1, steps=h, dtype=F64)) for h in hidden_dims]
    outputs = (var_index + 1).repeat(multiplier)
    masks = [(hidden[0][:, None] >= inputs[None, :]).to(F64)]
    for i in range(1, len(hidden_dims)):
        masks.append((hidden[i][:, None] >= hidden[i - 1][None, :]).to(F64))
    masks.append((outputs[:, None] > hidden[-1][None, :]).to(F64))
    return masks


def zuko_masks(d, hidden_dims, multiplier):
    """zuko's MaskedMLP on an autoregressive adjacency: hidden units copy the (unique, non-empty)
    rows of the adjacency cyclically; later layers connect by row-set inclusion (precedence)."""
    order = torch.arange(d)
    adjacency = (order[:, None] > order[None, :]).repeat_interleave(multiplier, dim=0)  # [D*m, D]
    rows, inverse = torch.unique(adjacency, dim=0, return_inverse=True)
    precedence = (rows.int() @ rows.int().t()) == rows.sum(dim=-1, keepdim=True)  # row j ⊆ row i
    masks, indices = [], None
    for i, h in enumerate(hidden_dims + [None]):
        mask = rows if i == 0 else precedence[:, indices]
        if h is not None:
            reachable = mask.sum(dim=-1).nonzero().squeeze(-1)
            indices = reachable[torch.arange(h) % len(reachable)]
            mask = mask[indices]
        else:
            mask = mask[inverse]
        masks.append(mask)
    return masks


def _mlp_equal(masks, gen, backend="reference"):
    """Chain DenseMasked layers vs pygen MaskedLinear (pyro / zuko forms) with the same weights."""
    x = torch.randn(5, masks[0].shape[1], generator=gen, dtype=F64)
    hd, hp = x, x
    for i, m in enumerate(masks):
        dense = DenseMasked(m.to(F64) if m.dtype != torch.bool else m).to(F64)
        ours = (MaskedLinear(m) if m.dtype == torch.bool else MaskedLinear(m.shape[1], m.shape[0], m)).to(F64)
        ours.backend = backend
        assert list(ours.state_dict()) == list(dense.state_dict()) == ["weight", "bias", "mask"]
        ours.load_state_dict(dense.state_dict())
        assert ours.kernel_args()[0] == "degrees"  # every MADE mask reduces to degrees
        last = i == len(masks) - 1
        hd, hp = dense(hd), ours(hp)
        if not last:
            hd, hp = torch.relu(hd), torch.relu(hp)
    torch.testing.assert_close(hp, hd)


def test_dropin_nflows_masked_linear(gen):
    degs, masks = nflows_degrees(5, 9, 2, 2)
    for l, mask in enumerate(masks):
        is_out = l == len(masks) - 1
        ours = MaskedLinear(degs[l], mask.shape[0], 5, False, is_out)
        assert list(ours.state_dict()) == ["weight", "bias", "mask", "degrees"]
        assert torch.equal(ours.mask, mask) and ours.mask.dtype == torch.float32
        ours = ours.to(F64)
        assert torch.equal(ours.degrees, degs[l + 1])
        dense = DenseMasked(mask.to(F64), extra={"degrees": degs[l + 1]}).to(F64)
        ours.load_state_dict(dense.state_dict())
        x = torch.randn(4, mask.shape[1], generator=gen, dtype=F64)
        torch.testing.assert_close(ours(x), dense(x))
    # random masks draw from the global generator after nn.Linear's init, like nflows
    torch.manual_seed(3)
    a = MaskedLinear(torch.arange(1, 7), 11, 6, True, False)
    torch.manual_seed(3)
    nn.Linear(6, 11)
    want = torch.randint(low=1, high=6, size=[11], dtype=torch.long)
    assert torch.equal(a.degrees, want)


def test_dropin_nflows_mask_that_disagrees_with_its_degrees(gen):
    """A loaded mask wins over the degrees (F.linear(x, W * mask, b) exactly), and a mask that is
    not autoregressive falls back to the plain kernel."""
    ours = MaskedLinear(torch.arange(1, 5), 6, 4, False, False).to(F64)
    sd = ours.state_dict()
    sd["mask"] = (torch.rand(6, 4, generator=gen) < 0.5).float()
    ours.load_state_dict(sd)
    dense = DenseMasked(sd["mask"].to(F64)).to(F64)
    dense.load_state_dict({k: v for k, v in sd.items() if k != "degrees"})
    x = torch.randn(3, 4, generator=gen, dtype=F64)
    torch.testing.assert_close(ours(x), dense(x))
    # a mask that is not 0 / 1 (a scaled one) is computed as the original computes it, W * mask
    # (the module used its nonzero pattern: 0.23 off with mask * 0.5)
    for scaled in (sd["mask"] * 0.5, sd["mask"] * 2.0 - 0.5):
        ours.load_state_dict({**sd, "mask": scaled})
        assert ours.kernel_args()[0] == "dense"
        torch.testing.assert_close(ours(x), torch.nn.functional.linear(x, ours.weight * scaled.to(F64), ours.bias))


@pytest.mark.parametrize("perm", ["identity", "random"])
def test_dropin_pyro_masks(perm, gen):
    d = 6
    p = torch.arange(d) if perm == "identity" else torch.randperm(d, generator=gen)
    _mlp_equal(pyro_masks(d, [11, 13], p, 2), gen)


def test_dropin_zuko_masks(gen):
    _mlp_equal(zuko_masks(5, [12, 9], 2), gen)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_dropin_through_the_kernel(device, backend, gen):
    """The nflows-form module on the Triton backend equals the dense masked layer (float32)."""
    degs, masks = nflows_degrees(12, 40, 1, 1)
    ours = MaskedLinear(degs[0], 40, 12, False, False, backend=backend).to(device)
    dense = DenseMasked(masks[0]).to(device)
    dense.load_state_dict({k: v for k, v in ours.state_dict().items() if k != "degrees"})
    x = torch.randn(7, 12, generator=gen).to(device)
    torch.testing.assert_close(ours(x, activation="relu"), torch.relu(dense(x)), rtol=1e-5, atol=1e-5)


# ---- MADE ----------------------------------------------------------------------------------------
CONFIGS = [
    dict(use_residual_blocks=False, num_blocks=2),
    dict(use_residual_blocks=True, num_blocks=2),
    dict(use_residual_blocks=False, num_blocks=1, use_batch_norm=True),
    dict(use_residual_blocks=True, num_blocks=1, use_batch_norm=True),
    dict(use_residual_blocks=False, num_blocks=2, random_mask=True),
]


def _made(cfg, order, seed=0, context=None, mult=2, activation=F.relu, cls=M.MADE):
    torch.manual_seed(seed)
    kw = dict(cfg)
    if cls is M.MADE:
        kw["output_multiplier"] = mult
    m = cls(5, 14, context, activation=activation, hidden_order=order, **kw).to(F64)
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():  # non-trivial batch-norm statistics, so permuting them matters
        if isinstance(mod, nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g, dtype=F64))
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g, dtype=F64) + 0.5)
            mod.weight.data.copy_(torch.randn(mod.num_features, generator=g, dtype=F64))
    return m.eval()


def _bn_stats_follow(a: M.MADE, b: M.MADE, perms):
    """Give b the statistics of a, permuted like b's hidden units (b was sorted at construction,
    after which _made wrote statistics in the unsorted draw order)."""
    bns_a = [x for x in a.modules() if isinstance(x, nn.BatchNorm1d)]
    bns_b = [x for x in b.modules() if isinstance(x, nn.BatchNorm1d)]
    if a.use_residual_blocks:
        ps = [perms[0]] * len(bns_a)
    else:
        ps = [perms[k] for k in range(len(bns_a))]
    for x, y, p in zip(bns_a, bns_b, ps):
        for t_a, t_b in (
            (x.running_mean, y.running_mean),
            (x.running_var, y.running_var),
            (x.weight, y.weight),
            (x.bias, y.bias),
        ):
            t_b.data.copy_(t_a.data[p])


def test_compiled_masked_linear_sees_a_new_mask(gen):
    """A compiled MaskedLinear reads the plan cached by an eager call without checking it (no host
    reads while tracing): after load_state_dict with another mask it used the old plan (0.46 off,
    silently). A buffer change now drops the plan: the compiled call recompiles onto the exact
    W * mask path."""
    torch._dynamo.reset()
    d = 5
    mask_a, mask_b = torch.tril(torch.ones(d, d), -1), torch.tril(torch.ones(d, d), 0)
    m = MaskedLinear(d, d, mask_a)
    x = torch.randn(3, d, generator=gen)
    m(x)  # eager: derives and caches the plan of mask_a
    f = torch.compile(m, fullgraph=True, backend="eager")
    f(x)
    state = m.state_dict()
    state["mask"] = mask_b.clone()
    m.load_state_dict(state)
    torch.testing.assert_close(f(x), F.linear(x, m.weight * mask_b, m.bias))
    m(x)  # eager again: the new plan (degrees of mask_b)
    torch.testing.assert_close(f(x), F.linear(x, m.weight * mask_b, m.bias))
    m.permute_(rows=torch.arange(d).flip(0))
    torch.testing.assert_close(f(x), F.linear(x, m.weight * m.mask, m.bias))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("context", [None, 3])
def test_made_sorted_hidden_units_give_the_same_function(cfg, context, gen):
    """hidden_order='sorted' permutes nflows' units: same parameters up to the permutation, same
    outputs; sort_hidden_ on an nflows-order model reproduces it and returns the permutations."""
    a = _made(cfg, "nflows", context=context)
    b = _made(cfg, "nflows", context=context)
    perms = b.sort_hidden_()
    for p in perms:
        assert torch.equal(torch.sort(p).values, torch.arange(len(p)))
    for layer in (b.initial_layer, b.final_layer):
        assert layer.kernel_args()[0] == "degrees"
    assert bool((b.initial_layer.degrees.diff() >= 0).all())
    x = torch.randn(6, 5, generator=gen, dtype=F64)
    c = None if context is None else torch.randn(6, context, generator=gen, dtype=F64)
    torch.testing.assert_close(b(x, c), a(x, c))
    # built sorted from the start: same draws, same function (batch-norm statistics aside)
    s = _made(cfg, "sorted", context=context)
    _bn_stats_follow(a, s, perms)
    torch.testing.assert_close(s(x, c), a(x, c))


def test_made_state_dict_keys_follow_nflows():
    m = M.MADE(4, 8, 2, num_blocks=1, use_residual_blocks=True, use_batch_norm=True)
    keys = set(m.state_dict())
    for k in (
        "initial_layer.weight",
        "initial_layer.bias",
        "initial_layer.mask",
        "initial_layer.degrees",
        "context_layer.weight",
        "blocks.0.context_layer.weight",
        "blocks.0.batch_norm_layers.1.running_var",
        "blocks.0.linear_layers.0.mask",
        "blocks.0.linear_layers.1.degrees",
        "final_layer.degrees",
    ):
        assert k in keys, k
    f = M.MADE(4, 8, None, num_blocks=2, use_residual_blocks=False, use_batch_norm=True)
    assert {"blocks.1.linear.weight", "blocks.1.batch_norm.running_mean"} <= set(f.state_dict())


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_made_is_autoregressive(cfg, gen):
    m = _made(cfg, "sorted", context=2)
    x = torch.randn(3, 5, generator=gen, dtype=F64)
    c = torch.randn(3, 2, generator=gen, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda t: m(t, c), x)  # [3, 10, 3, 5]
    dep = jac.abs().sum(dim=(0, 2)) > 0
    allowed = ref.autoregressive_mask(ref.input_degrees(5), ref.output_degrees(5, 2), strict=True)
    assert not (dep & ~allowed).any()
    assert dep[-1].any()  # and not trivially zero


# ---- sampling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("kind", ["bernoulli", "gaussian", "affine"])
def test_incremental_sampling_equals_d_passes(cfg, kind, gen, monkeypatch):
    """MADE.sample_with_noise (each hidden unit once) == pygen.ref.made.made_sample (D full passes)
    for the same noise; and the incremental sampler evaluates every hidden row exactly once."""
    m = _made(cfg, "sorted", context=3, activation=torch.tanh)
    b = 4
    noise = (
        torch.rand(b, 5, generator=gen, dtype=F64)
        if kind == "bernoulli"
        else torch.randn(b, 5, generator=gen, dtype=F64)
    )
    c = torch.randn(b, 3, generator=gen, dtype=F64)
    want = ref.made_sample(lambda t: m(t, c), noise, ref.input_degrees(5), 2, kind)
    rows = {}
    real = sampler._slice_linear

    def counting(mode, x, w, *a, **k):
        base = w._base if w._base is not None else w
        done, full = rows.get(id(base), (0, base.shape[0]))
        rows[id(base)] = (done + w.shape[0], full)
        return real(mode, x, w, *a, **k)

    monkeypatch.setattr(sampler, "_slice_linear", counting)
    got = m.sample_with_noise(noise, kind, c)
    if kind == "bernoulli":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want)
    assert m.sampling_network(c) is not None  # every configuration samples incrementally
    # every weight the sampler multiplies is the row slice of one (permuted) layer: each row of
    # every layer, hidden units and outputs alike, goes through masked_linear exactly once
    layers = len(m.sampling_network(c)[0])
    assert len(rows) == layers
    assert all(r == full for r, full in rows.values()), rows


def test_made_sample_checks_degrees(gen):
    w = [torch.randn(4, 3, dtype=F64), torch.randn(3, 4, dtype=F64)]
    b = [None, None]
    good = [torch.tensor([1, 2, 3]), torch.tensor([1, 1, 2, 2]), torch.tensor([1, 2, 3])]
    noise = torch.rand(2, 3, generator=gen, dtype=F64)
    ops.made_sample(w, b, good, noise)
    bad = [good[0], good[1], torch.tensor([1, 3, 3])]  # output 1 would see x_1 itself
    with pytest.raises(ValueError, match="not autoregressive"):
        ops.made_sample(w, b, bad, noise)
    with pytest.raises(ValueError, match="degrees must be a list of 3"):
        ops.made_sample(w, b, good[:2], noise)
    with pytest.raises(ValueError, match="kind"):
        ops.made_sample(w, b, good, noise, kind="poisson")
    with pytest.raises(TypeError, match="noise must be"):
        ops.made_sample(w, b, good, noise.float())
    with pytest.raises(ValueError, match="only applies to residual networks"):
        ops.made_sample(w, b, good, noise, pre_activation=[None])
    wr = [
        torch.randn(4, 3, dtype=F64),
        torch.randn(4, 4, dtype=F64),
        torch.randn(4, 4, dtype=F64),
        torch.randn(3, 4, dtype=F64),
    ]
    dr = [good[0], good[1], good[1], good[1], good[2]]
    ops.made_sample(
        wr, [None] * 4, dr, noise, residual=True, pre_activation=[(torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64))]
    )
    with pytest.raises(ValueError, match=r"pre_activation\[0\] scale must be \[4\]"):
        ops.made_sample(
            wr,
            [None] * 4,
            dr,
            noise,
            residual=True,
            pre_activation=[(torch.ones(3, dtype=F64), torch.zeros(4, dtype=F64))],
        )


def test_binary_made_sampling_distribution():
    """Sampled frequencies of a tiny binary MADE against its exact probabilities (all 2^D states
    enumerated with log_prob; they sum to 1): chi-square at p = 1e-6 with 2^D - 1 dof."""
    torch.manual_seed(0)
    d = 4
    m = M.BinaryMADE(d, 12, num_blocks=1, use_residual_blocks=False).to(F64).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)  # sharpen the conditionals so the distribution is far from uniform
    states = torch.tensor([[(s >> i) & 1 for i in range(d)] for s in range(2**d)], dtype=F64)
    with torch.no_grad():
        prob = m.log_prob(states).exp()
    assert abs(float(prob.sum()) - 1.0) < 1e-12
    n = 20000
    torch.manual_seed(1)
    x = m.sample(n)
    idx = (x * (2 ** torch.arange(d, dtype=F64))).sum(1).long()
    counts = torch.bincount(idx, minlength=2**d).to(F64)
    expected = prob * n
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < _chi2_quantile(1 - 1e-6, 2**d - 1), (stat, counts.tolist(), expected.tolist())


def _chi2_quantile(q: float, dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (relative error < 1% for dof >= 10
    at these tails; scipy is not a test dependency)."""
    z = float(torch.special.ndtri(torch.tensor(q, dtype=F64)))
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_gaussian_made_sample_moments():
    """GaussianMADE samples: the first dimension has no parents, so it is N(mu_1, exp(alpha_1)^2)
    exactly; its sample mean and variance must match."""
    torch.manual_seed(0)
    m = M.GaussianMADE(3, 10, num_blocks=1, use_residual_blocks=False).to(F64).eval()
    x = m.sample(20000)
    with torch.no_grad():
        p = m(torch.zeros(1, 3, dtype=F64))[0]
    mu, sd = float(p[0]), math.exp(float(p[1]))
    assert abs(float(x[:, 0].mean()) - mu) < 5 * sd / math.sqrt(20000)
    assert abs(float(x[:, 0].std()) / sd - 1) < 0.03


def test_training_smoke_binary_patterns():
    """NLL of a binary MADE on noisy copies of 4 fixed 10-bit patterns falls well below its start
    and below the entropy of independent bits."""
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(4, 10, generator=g) < 0.5).float()
    data = protos[torch.randint(0, 4, (512,), generator=g)]
    flips = torch.rand(data.shape, generator=g) < 0.05
    data = torch.where(flips, 1 - data, data)
    torch.manual_seed(0)
    m = M.BinaryMADE(10, 32, num_blocks=1, use_residual_blocks=False)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    start = float(-m.log_prob(data).mean())
    for _ in range(150):
        opt.zero_grad()
        loss = -m.log_prob(data).mean()
        loss.backward()
        opt.step()
    end = float(-m.log_prob(data).mean())
    p = data.mean(0).clamp(1e-6, 1 - 1e-6)
    independent = float(-(p * p.log() + (1 - p) * (1 - p).log()).sum())
    assert end < 0.7 * start and end < independent - 1.0, (start, end, independent)


# ---- MAF / IAF -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [M.MaskedAffineAutoregressiveTransform, M.InverseAutoregressiveTransform])
def test_affine_transforms_invert_and_logdets(cls, gen):
    torch.manual_seed(0)
    t = cls(4, 12, 2, num_blocks=2).to(F64)
    x = torch.randn(5, 4, generator=gen, dtype=F64)
    c = torch.randn(5, 2, generator=gen, dtype=F64)
    y, ld = t(x, c)
    xr, ldi = t.inverse(y, c)
    torch.testing.assert_close(xr, x)
    torch.testing.assert_close(ld, -ldi)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: t(v[None], c[i : i + 1])[0][0], x[i])
        torch.testing.assert_close(ld[i], torch.linalg.slogdet(jac)[1])


@pytest.mark.parametrize("cls", [M.MAF, M.IAF])
def test_flow_log_prob_and_sample(cls, gen):
    """log_prob is a normalised density (2-D: a Riemann sum over a grid is 1) and samples map back."""
    torch.manual_seed(0)
    f = cls(2, 8, 2, 1, use_residual_blocks=False).to(F64)
    s = torch.linspace(-8, 8, 161, dtype=F64)
    grid = torch.cartesian_prod(s, s)
    with torch.no_grad():
        mass = float(f.log_prob(grid).exp().sum()) * float(s[1] - s[0]) ** 2
    assert abs(mass - 1) < 2e-2, mass
    x = f.sample(7)
    assert x.shape == (7, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_made_on_the_kernel_backend(device, backend, gen):
    """A small BinaryMADE on the Triton backend: log_prob and its parameter gradients equal the
    reference backend's (float32); sampling through the kernels equals the reference sampler."""
    torch.manual_seed(0)
    m = M.BinaryMADE(6, 32, num_blocks=1, use_residual_blocks=False).to(device)
    x = (torch.rand(9, 6, generator=gen) < 0.5).float().to(device)
    out = {}
    for b in ("reference", backend):
        m.set_backend(b)
        m.zero_grad()
        lp = m.log_prob(x)
        lp.sum().backward()
        out[b] = (lp.detach(), [p.grad.clone() for p in m.parameters()])
    torch.testing.assert_close(out[backend][0], out["reference"][0], rtol=1e-5, atol=1e-5)
    for a, r in zip(out[backend][1], out["reference"][1]):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
    noise = torch.rand(3, 6, generator=gen).to(device)
    got = m.sample(noise=noise)
    m.set_backend("reference")
    torch.testing.assert_close(got, m.sample(noise=noise))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="random masks"):
        M.MADE(4, 8, use_residual_blocks=True, random_mask=True)
    with pytest.raises(ValueError, match="hidden_order"):
        M.MADE(4, 8, hidden_order="random")
    with pytest.raises(ValueError, match="multiple of autoregressive_features"):
        MaskedLinear(torch.arange(1, 5), 7, 4, False, True)
    with pytest.raises(ValueError, match=r"mask must have shape \[out_features, in_features\]"):
        MaskedLinear(3, 4, torch.ones(3, 4))
    with pytest.raises(TypeError, match="pyro form"):
        MaskedLinear(3, 4)
    with pytest.raises(ValueError, match="one batch size"):
        M.BinaryMADE(3, 6).sample(4, noise=torch.rand(5, 3))


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_profile_model_made(device, backend):
    """The ``made`` entry of pygen.models (what ``pygen profile made`` runs): same log-likelihoods
    with the kernels and with the reference ops."""
    from pygen.models import build, set_backend

    model, cfg = build("made", quick=True)
    model = model.to(device)
    (x,) = model.example_inputs(cfg, device)
    with torch.no_grad():
        set_backend(model, "reference")
        want = model(x)
        set_backend(model, backend)
        got = model(x)
    assert got.shape == (cfg.batch,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
