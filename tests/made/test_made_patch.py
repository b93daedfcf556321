"""pygen.patch.patch_nflows / patch_zuko (issue 13) on models built the way nflows' and zuko's
tutorials build them: the patched model computes what the stock one computes (log_prob and its
parameter gradients, seeded samples, the transform's forward / inverse and log-dets), holds the same
Parameter and buffer objects (an optimizer made before the patch still trains it), patches once,
reports zero swaps when there is nothing to swap, and keeps, with a warning, what pygen would
compute differently. Plus nflows' own MADE / MAF test ideas on the patched modules.

Oracle: the stock model in float64. The reference backend runs in float64, the Triton backend (the
interpreter on CPU) in float32, both against the oracle with tests/helpers.assert_close_to_ref's
relative rule (atol + rtol(dtype) |ref|). Not the Flash-Attention rule: a flow's inverse of base
noise is ill-conditioned (at initialisation nflows' tutorial MAF maps N(0, 1) noise to |x| ~ 460,
where a float32 ulp is 3e-5) and the worst element's error of the stock float32 model and of the
kernels differ by luck (measured: 4.2e-4 and 8.8e-4, both 1-2e-6 relative). The op-level tests
(test_made_ops.py) hold the kernels to the Flash-Attention rule. nflows and zuko are in the ``test``
extra; the tests skip only when they are absent."""

from __future__ import annotations

import contextlib
import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_ref, backend_params
from torch import nn

import pygen.patch
from pygen.models.made import MADE
from pygen.nn import MaskedLinear

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
SEED = 7
PARAMS = [p for p in backend_params() if p.values[1] in ("reference", "triton")]
REFERENCE = [p for p in PARAMS if p.values == ("cpu", "reference")]
NFLOWS_MAF_WARNING = "MaskedAffineAutoregressiveTransform"


@pytest.fixture
def nf():
    return pytest.importorskip("nflows", reason="nflows is optional (pygen.patch.patch_nflows's target)")


@pytest.fixture
def zk():
    return pytest.importorskip("zuko", reason="zuko is optional (pygen.patch.patch_zuko's target)")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build and sample in ``dtype``: nflows' and zuko's base distributions draw in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def expect_warning(match: str | None):
    """pytest.warns(match) when a module is expected to be kept, else no warning at all."""
    if match:
        with pytest.warns(UserWarning, match=match):
            yield
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield


def _grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {f"grad {n}": p.grad.clone() for n, p in model.named_parameters()}


def assert_patched_like_stock(build, patcher, lib, x, c, device, backend, expect, warns=None) -> nn.Module:
    """Build the stock model (float64 for the reference backend, float32 for Triton), patch a copy
    (``expect``: the counts; ``warns``: what the kept-module warning names), and compare
    ``lib.run`` on it with the float64 oracle (the stock model in float64; seeded samples against
    the oracle's inverse of the noise the seed draws)."""
    dtype = F64 if backend == "reference" else torch.float32
    x, c = x.to(device), None if c is None else c.to(device)
    with default_dtype(dtype):
        stock = build().to(device)
        oracle = copy.deepcopy(stock).double()
        model = copy.deepcopy(stock)
        with expect_warning(warns):
            assert patcher(model, backend=backend) == expect
        xd, cd = x.to(dtype), None if c is None else c.to(dtype)
        noise = lib.noise(stock, xd, cd)
        got = lib.run(model, xd, cd, noise, True)
    with default_dtype(F64):
        want = lib.run(oracle, x.double(), None if c is None else c.double(), noise, False)
    assert got.keys() == want.keys()
    for k in want:
        assert_close_to_ref(got[k], want[k], what=k)
    return model


def assert_keeps_tensors_and_patches_once(build, patcher, lib, x, c, expect, warns) -> None:
    """Same Parameter / state_dict objects; an optimizer made before the patch steps the patched
    model as the stock one; a second patch swaps nothing; load_state_dict, deepcopy and pickle work."""
    stock = build()
    model = copy.deepcopy(stock)
    before = model.state_dict(keep_vars=True)
    params = dict(model.named_parameters())
    opt, opt_stock = torch.optim.Adam(model.parameters(), lr=0.05), torch.optim.Adam(stock.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match=warns):
        assert patcher(model) == expect
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before) and all(after[k] is before[k] for k in before)
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    for m, o in ((model, opt), (stock, opt_stock)):
        o.zero_grad()
        (-lib.log_prob(m, x, c).mean()).backward()
        o.step()
    for n, p in stock.named_parameters():
        torch.testing.assert_close(params[n], p, atol=1e-6, rtol=1e-5, msg=n)
    modules = list(model.modules())
    with pytest.warns(UserWarning, match=warns):
        assert patcher(model) == {}
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))
    model.load_state_dict(stock.state_dict())
    want = lib.log_prob(stock, x, c)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(lib.log_prob(clone, x, c), want)


def assert_nothing_to_patch(patcher) -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), MaskedLinear(torch.ones(2, 8, dtype=torch.bool)))
    modules = list(model.modules())
    with expect_warning(None):
        assert patcher(model) == {}
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))
    with pytest.raises(TypeError, match=r"patch_\w+: model must be a torch.nn.Module, got str"):
        patcher("flow")


# ---- nflows ---------------------------------------------------------------------------------------
class NflowsLib:
    """How the comparisons drive an nflows Flow."""

    @staticmethod
    def log_prob(flow, x, c):
        return flow.log_prob(x, context=c)

    @staticmethod
    def noise(flow, x, c):
        """The noise ``flow.sample`` draws after torch.manual_seed(SEED) (with or without context)."""
        torch.manual_seed(SEED)
        return flow._distribution.sample(x.shape[0])

    @staticmethod
    def run(flow, x, c, noise, seeded: bool) -> dict[str, torch.Tensor]:
        lp = flow.log_prob(x, context=c)
        out = {"log_prob": lp.detach(), **_grads(flow, lp.sum())}
        with torch.no_grad():
            out["forward"], out["forward logabsdet"] = flow._transform(x, context=c)
            out["inverse"], out["inverse logabsdet"] = flow._transform.inverse(noise.to(x.dtype), context=c)
            out["sample"] = out["inverse"]
            if seeded:  # what sample() returns: the inverse of the noise it draws
                torch.manual_seed(SEED)
                out["sample"] = flow.sample(x.shape[0]) if c is None else flow.sample(1, context=c)[:, 0]
        return out


class ModuleLib:
    """How the comparisons drive a plain network (x -> y; no noise, no sampling)."""

    @staticmethod
    def log_prob(net, x, c):
        return net(x).sum(-1)

    @staticmethod
    def noise(net, x, c):
        return None

    @staticmethod
    def run(net, x, c, noise, seeded: bool) -> dict[str, torch.Tensor]:
        y = net(x) if c is None else net(x, c)
        return {"y": y.detach(), **_grads(net, (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum())}


def nflows_maf(features=2, hidden_features=4, num_layers=5, context_features=None, transform=None, **kw):
    """nflows' MAF tutorial: num_layers x (ReversePermutation, MaskedAffineAutoregressiveTransform)
    over StandardNormal(shape=[features]); ``transform`` builds another autoregressive transform."""
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.permutations import ReversePermutation

    make = transform or MaskedAffineAutoregressiveTransform
    torch.manual_seed(0)
    layers = []
    for _ in range(num_layers):
        layers.append(ReversePermutation(features=features))
        layers.append(make(features=features, hidden_features=hidden_features, context_features=context_features, **kw))
    return Flow(CompositeTransform(layers), StandardNormal(shape=[features]))


def _x(batch, features, seed=1):
    return torch.randn(batch, features, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("device, backend", PARAMS)
def test_nflows_tutorial_maf_patched_equals_stock(nf, device, backend):
    # the tutorial's 5 layers; 2 on the Triton interpreter (each of its launches costs milliseconds)
    n = 5 if backend == "reference" or device == "cuda" else 2
    expect = {"MADE": n, "MaskedLinear": 6 * n}
    model = assert_patched_like_stock(
        lambda: nflows_maf(num_layers=n),
        pygen.patch.patch_nflows,
        NflowsLib,
        _x(16, 2),
        None,
        device,
        backend,
        expect,
        f"{n} {NFLOWS_MAF_WARNING}",
    )
    nets = [m for m in model.modules() if isinstance(m, MADE)]
    assert len(nets) == n and all(m.backend == backend for m in nets[0].modules() if isinstance(m, MaskedLinear))
    # nflows' degrees chained through the MADE: every layer runs the degree kernel on its own degrees
    layers = [m for m in model.modules() if isinstance(m, MaskedLinear)]
    plans = [(m.kernel_args(), m) for m in layers]
    assert all(
        a[0] == "degrees" and a[1] is m.in_degrees and a[2] is m.degrees and a[3] == m.is_output for a, m in plans
    )


def _nflows_variants():
    def rq(**kw):
        from nflows.transforms.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressiveTransform as RQ

        return RQ(num_bins=4, tails="linear", tail_bound=3.0, **kw)

    ff = dict(use_residual_blocks=False)
    maf = NFLOWS_MAF_WARNING
    return {  # name: (constructor keywords, train mode, expected counts, warning)
        "feedforward-batchnorm": (dict(ff, use_batch_norm=True), True, {"MADE": 2, "MaskedLinear": 8}, maf),
        "feedforward-random-elu-dropout": (
            dict(ff, random_mask=True, activation=F.elu, dropout_probability=0.3),
            False,
            {"MADE": 2, "MaskedLinear": 8},
            maf,
        ),
        "residual-batchnorm-tanh": (
            dict(use_batch_norm=True, activation=torch.tanh),
            True,
            {"MADE": 2, "MaskedLinear": 12},
            maf,
        ),
        "silu-module": (dict(ff, activation=nn.SiLU()), True, {"MADE": 2, "MaskedLinear": 8}, maf),
        "context-residual": (dict(context_features=3), True, {"MaskedLinear": 12}, "2 MADE with context"),
        "context-feedforward": (dict(ff, context_features=3), True, {"MaskedLinear": 8}, "2 MADE with context"),
        "rq-spline": (dict(transform=rq), True, {"MADE": 2, "MaskedLinear": 12}, None),
    }


@pytest.mark.parametrize(
    "variant, backend",
    [(v, "reference") for v in _nflows_variants()]
    + [("feedforward-batchnorm", "triton"), ("context-residual", "triton")],
)
def test_nflows_made_variants_patched_equal_stock(nf, variant, backend):
    kw, train, expect, warns = _nflows_variants()[variant]

    def build():
        flow = nflows_maf(features=4, hidden_features=10, num_layers=2, **kw)
        return flow.train(train)

    c = _x(12, 3, seed=2) if kw.get("context_features") else None
    assert_patched_like_stock(build, pygen.patch.patch_nflows, NflowsLib, _x(12, 4), c, "cpu", backend, expect, warns)


def _nde_mog():
    import nflows.nn.nde.made as nde

    torch.manual_seed(0)
    return nn.Sequential(nde.MixtureOfGaussiansMADE(4, 10, num_blocks=1, num_mixture_components=2))


def _root_made():
    from nflows.transforms.made import MADE as NflowsMADE

    torch.manual_seed(0)
    return NflowsMADE(4, 10, num_blocks=2, output_multiplier=3, use_residual_blocks=False)


@pytest.mark.parametrize(
    "build, expect, warns",
    [(_root_made, {"MaskedLinear": 4}, "1 MADE at the model's root"), (_nde_mog, {"MaskedLinear": 4}, "nde MADE")],
    ids=["root-made", "nde-mixture-made"],
)
def test_nflows_kept_mades_have_their_layers_swapped(nf, build, expect, warns):
    assert_patched_like_stock(
        build, pygen.patch.patch_nflows, ModuleLib, _x(12, 4), None, "cpu", "reference", expect, warns
    )


def test_nflows_patch_keeps_tensors_and_patches_once(nf):
    assert_keeps_tensors_and_patches_once(
        nflows_maf, pygen.patch.patch_nflows, NflowsLib, _x(16, 2).float(), None, {"MADE": 5, "MaskedLinear": 30}, "5 "
    )


def test_nflows_nothing_to_patch_and_bad_input(nf):
    assert_nothing_to_patch(pygen.patch.patch_nflows)


def test_patch_applies_nflows(nf):
    flow = nflows_maf()
    with pytest.warns(UserWarning, match=NFLOWS_MAF_WARNING):
        assert pygen.patch.patch(flow) == {"MADE": 5, "MaskedLinear": 30}


@pytest.mark.parametrize("kw", [dict(), dict(use_residual_blocks=False, random_mask=True, activation=F.elu)])
def test_nflows_own_made_and_maf_properties_after_patch(nf, kw):
    """nflows' tests/transforms/made_test.py and autoregressive_test.py ideas on the patched modules:
    output d's parameters depend only on inputs before d; MAF inverse(forward(x)) = x with opposite
    log-dets; shapes."""
    with default_dtype(F64):
        flow = nflows_maf(features=5, hidden_features=16, num_layers=1, **kw)
        with pytest.warns(UserWarning, match=NFLOWS_MAF_WARNING):
            pygen.patch.patch_nflows(flow)
        maf = flow._transform._transforms[1]
        x = _x(1, 5)[0]
        jac = torch.autograd.functional.jacobian(lambda v: maf.autoregressive_net(v[None])[0], x)  # [10, 5]
        d = torch.arange(5).repeat_interleave(2)
        assert jac.shape == (10, 5)
        assert torch.all(jac[d[:, None] <= torch.arange(5)[None, :]] == 0)
        x = _x(7, 5)
        z, ld = maf(x)
        x_back, ld_back = maf.inverse(z)
        assert z.shape == x.shape and ld.shape == (7,)
        torch.testing.assert_close(x_back, x)
        torch.testing.assert_close(ld_back, -ld)


# ---- zuko -----------------------------------------------------------------------------------------
class ZukoLib:
    """How the comparisons drive a zuko flow (flow(c) is the conditional distribution)."""

    @staticmethod
    def log_prob(flow, x, c):
        return (flow(c) if c is not None else flow()).log_prob(x)

    @staticmethod
    def noise(flow, x, c):
        """The base noise ``flow(c).sample((B,))`` draws after torch.manual_seed(SEED)."""
        torch.manual_seed(SEED)
        return (flow(c) if c is not None else flow()).base.sample((x.shape[0],))

    @staticmethod
    def run(flow, x, c, noise, seeded: bool) -> dict[str, torch.Tensor]:
        dist = flow(c) if c is not None else flow()
        lp = dist.log_prob(x)
        out = {"log_prob": lp.detach(), **_grads(flow, lp.sum())}
        with torch.no_grad():
            out["forward"], out["forward ladj"] = dist.transform.call_and_ladj(x)
            out["inverse"], out["inverse ladj"] = dist.transform.inv.call_and_ladj(noise.to(x.dtype))
            out["sample"] = out["inverse"]
            if seeded:
                torch.manual_seed(SEED)
                out["sample"] = dist.sample((x.shape[0],))
        return out


def zuko_maf(transforms=3):
    """zuko's MAF docstring example: MAF(3, 4, transforms=3) (hidden features (64, 64))."""
    import zuko

    torch.manual_seed(0)
    return zuko.flows.MAF(3, 4, transforms=transforms)


@pytest.mark.parametrize("device, backend", PARAMS)
def test_zuko_tutorial_maf_patched_equals_stock(zk, device, backend):
    n = 3 if backend == "reference" or device == "cuda" else 2  # as for nflows' tutorial
    expect = {"MaskedLinear": 3 * n, "MaskedMLP": n}
    model = assert_patched_like_stock(
        lambda: zuko_maf(n),
        pygen.patch.patch_zuko,
        ZukoLib,
        _x(8, 3),
        _x(8, 4, 2),
        device,
        backend,
        expect,
        f"{n} MaskedA",
    )
    assert all(m.kernel_args()[0] == "degrees" for m in model.modules() if isinstance(m, MaskedLinear))


def _zuko_variants():
    def flow(kind, *args, **kw):
        def build():
            import zuko

            torch.manual_seed(0)
            return getattr(zuko.flows, kind)(*args, **kw)

        return build

    def mlp():
        from zuko.nn import MaskedMLP

        torch.manual_seed(0)
        # zuko's MaskedMLP docstring: a random adjacency (rows not nested: the plain masked kernel)
        return nn.Sequential(
            MaskedMLP(torch.randn(4, 3, generator=torch.Generator().manual_seed(3)) < 0, [16, 32], nn.ELU)
        )

    h = dict(hidden_features=(16, 16))
    kept = "MaskedAutoregressiveTransform"
    return {  # name: (build, context features, features, expected counts, warning)
        "residual": (flow("MAF", 3, 2, transforms=2, residual=True, **h), 2, 3, {"MaskedLinear": 12}, kept),
        "randperm-elu": (
            flow("MAF", 4, 0, transforms=2, randperm=True, activation=nn.ELU, hidden_features=(16,)),
            None,
            4,
            {"MaskedLinear": 4, "MaskedMLP": 2},
            kept,
        ),
        "two-passes": (flow("MAF", 4, 2, transforms=2, passes=2, **h), 2, 4, {"MaskedLinear": 6, "MaskedMLP": 2}, kept),
        "silu-not-fused": (flow("MAF", 3, 2, transforms=2, activation=nn.SiLU, **h), 2, 3, {"MaskedLinear": 6}, kept),
        "nsf": (flow("NSF", 3, 2, transforms=2, **h), 2, 3, {"MaskedLinear": 6, "MaskedMLP": 2}, kept),
        "masked-mlp-random-adjacency": (mlp, None, 3, {"MaskedLinear": 3, "MaskedMLP": 1}, None),
    }


@pytest.mark.parametrize(
    "variant, backend", [(v, "reference") for v in _zuko_variants()] + [("masked-mlp-random-adjacency", "triton")]
)
def test_zuko_variants_patched_equal_stock(zk, variant, backend):
    build, ctx, features, expect, warns = _zuko_variants()[variant]
    lib = ModuleLib if warns is None else ZukoLib
    c = None if ctx is None else _x(8, ctx, seed=2)
    assert_patched_like_stock(build, pygen.patch.patch_zuko, lib, _x(8, features), c, "cpu", backend, expect, warns)


def test_zuko_patch_keeps_tensors_and_patches_once(zk):
    x, c = _x(8, 3).float(), _x(8, 4, 2).float()
    expect = {"MaskedLinear": 9, "MaskedMLP": 3}
    assert_keeps_tensors_and_patches_once(zuko_maf, pygen.patch.patch_zuko, ZukoLib, x, c, expect, "3 MaskedAutoreg")
    # zuko's docstring call, unbatched: x [3], c [4]
    stock = zuko_maf()
    model = copy.deepcopy(stock)
    with pytest.warns(UserWarning, match="MaskedAutoreg"):
        pygen.patch.patch_zuko(model)
    torch.testing.assert_close(model(c[0]).log_prob(x[0]), stock(c[0]).log_prob(x[0]))


def test_zuko_nothing_to_patch_and_bad_input(zk):
    assert_nothing_to_patch(pygen.patch.patch_zuko)


# ---- MaskedLinear.adopt (what both patchers build on) ---------------------------------------------
def test_masked_linear_adopt_holds_the_tensors_and_rejects_bad_input():
    torch.manual_seed(0)
    mask = torch.rand(6, 5) < 0.5
    src = MaskedLinear(mask, bias=False)  # zuko form: a bool adjacency [O, I], here without bias
    new = MaskedLinear.adopt(src, "zuko", backend="reference")
    assert new.weight is src.weight and new.bias is None and new.mask is src.mask
    assert list(new.state_dict()) == list(src.state_dict()) == ["weight", "mask"]
    x = torch.randn(3, 5, dtype=F64)
    with default_dtype(F64):
        src64 = copy.deepcopy(src).double()
    torch.testing.assert_close(MaskedLinear.adopt(src64, "zuko")(x), F.linear(x, src64.weight * mask))
    with pytest.raises(ValueError, match="form must be 'nflows', 'pyro' or 'zuko', got 'keras'"):
        MaskedLinear.adopt(src, "keras")
    with pytest.raises(ValueError, match="source must be an nn.Linear with a 'mask' buffer"):
        MaskedLinear.adopt(nn.Linear(5, 6), "zuko")
    with pytest.raises(ValueError, match="nflows-form source needs its 'degrees' buffer"):
        MaskedLinear.adopt(src, "nflows")
