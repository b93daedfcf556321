"""DeepSeek-V3 multi-token prediction (pygen.models.deepseek: MTPModule, DeepSeekV3LM.mtp_loss)
against a per-depth loop of eager F.cross_entropy on materialised logits, written from the report's
formulas with the model's own submodules: loss, per-depth losses and the gradients of every
parameter, with ignore_index rows, in float64 (losses backends reference and cpu) and float32
(cpu, and triton under its interpreter). The loss goes through one linear_cross_entropy call; D = 0
is the plain next-token loss and adds no parameters; bad arguments raise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_ref, requires_triton

import pygen.ops.losses as ops_losses
from pygen.models import deepseek as D

pytestmark = pytest.mark.usefixtures("one_thread")

TRITON_F32 = pytest.param(torch.float32, "triton", marks=requires_triton)


def make_lm(depths: int, dtype=torch.float64, seed=0) -> D.DeepSeekV3LM:
    """The quick config with ``depths`` MTP depths, random weights large enough that the losses
    differ per depth; attention and MoE on their reference backends (their kernels are tested in
    their families: the model passes backend="reference" to both)."""
    torch.manual_seed(seed)
    cfg = D.DeepSeekV3Config(**{**D.DeepSeekV3Config.quick().__dict__, "num_nextn_predict_layers": depths})
    m = D.DeepSeekV3LM(cfg, backend="reference")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 if p.dim() > 1 else torch.rand(p.shape, generator=g) + 0.5)
    return m.to(dtype)


def batch(m: D.DeepSeekV3LM, b=2, s=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, m.cfg.vocab_size, (b, s), generator=g)
    labels = ids.clone()
    labels[0, 3] = labels[1, 7] = labels[1, 8] = -100  # ignored targets at several depths
    return ids, labels


def eager_loop(m: D.DeepSeekV3LM, ids, labels, lam):
    """The report's MTP, depth by depth, with [rows, V] logits and F.cross_entropy each time."""
    s, v = ids.shape[1], m.cfg.vocab_size
    x = m.embed_tokens(ids)
    pe = m.rotary_emb(x, torch.arange(s)[None].expand(ids.shape[0], -1))
    for layer in m.layers:
        x = layer(x, pe)
    h = m.norm(x)
    losses = [F.cross_entropy(m.lm_head(h)[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1))]
    for k, d in enumerate(m.mtp, 1):
        n = s - k  # token i + k must exist
        pe_n = (pe[0][:, :n], pe[1][:, :n])
        z = d.eh_proj(torch.cat([d.enorm(m.embed_tokens(ids[:, k:])), d.hnorm(h[:, :n])], dim=-1))
        z = z + d.self_attn(d.input_layernorm(z), pe_n, None)[0]
        h = d.norm(z + d.mlp(d.post_attention_layernorm(z)))
        logits = m.lm_head(h)[:, :-1]  # row n - 1 would predict token s: none
        losses.append(F.cross_entropy(logits.reshape(-1, v), labels[:, k + 1 :].reshape(-1)))
    per = torch.stack(losses)
    return per[0] + lam / len(m.mtp) * per[1:].sum(), per


def _grads(m, loss):
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    return dict(zip(names, torch.autograd.grad(loss, [m.get_parameter(n) for n in names], allow_unused=True)))


@pytest.mark.parametrize(
    "dtype,backend", [(torch.float64, "reference"), (torch.float64, "cpu"), (torch.float32, "cpu"), TRITON_F32]
)
@pytest.mark.parametrize("depths,lam", [(1, 0.3), (2, 0.1)])
def test_mtp_loss_matches_per_depth_eager_loop(dtype, backend, depths, lam):
    m = make_lm(depths, dtype)
    ids, labels = batch(m)
    loss, per = m.mtp_loss(ids, labels, mtp_weight=lam, backend=backend)
    grads = _grads(m, loss)
    m64 = make_lm(depths, torch.float64)
    want, want_per = eager_loop(m64, ids, labels, lam)
    want_grads = _grads(m64, want)
    # the Flash-Attention rule against the same eager loop run in the model's dtype
    eager, eager_per = eager_loop(m, ids, labels, lam)
    eager_grads = _grads(m, eager)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and per.shape == (depths + 1,)
    assert len(set(want_per.tolist())) == depths + 1  # the depths' losses differ: each term counts
    assert_close_to_ref(loss, want, eager, what="loss")
    assert_close_to_ref(per, want_per, eager_per, what="per-depth losses")
    for name, g in want_grads.items():
        assert g is not None, name  # every parameter, MTP ones included, is trained
        assert_close_to_ref(grads[name], g, eager_grads[name], what=name)


def test_mtp_loss_is_one_linear_cross_entropy_call(monkeypatch):
    """All D + 1 heads in one call over the stacked rows (the head weight streamed once)."""
    calls = []
    real = ops_losses.linear_cross_entropy

    def counting(hidden, weight, targets, *a, **k):
        calls.append((tuple(hidden.shape), weight))
        return real(hidden, weight, targets, *a, **k)

    monkeypatch.setattr(ops_losses, "linear_cross_entropy", counting)
    m = make_lm(2)
    ids, labels = batch(m, b=2, s=9)
    m.mtp_loss(ids, labels, backend="cpu")
    assert len(calls) == 1
    assert calls[0][0] == (2 * (9 + 8 + 7), m.cfg.hidden_size) and calls[0][1] is m.lm_head.weight


def test_no_depths_is_the_next_token_loss():
    """D = 0: no MTP parameters (the state_dict of the model before MTP existed), and mtp_loss is
    the shifted cross-entropy of forward's logits."""
    m0, m2 = make_lm(0), make_lm(2)
    keys0 = set(m0.state_dict())
    assert not any(k.startswith("mtp.") for k in keys0)
    assert keys0 < set(m2.state_dict())
    ids, labels = batch(m0)
    loss, per = m0.mtp_loss(ids, labels, backend="cpu")
    want = F.cross_entropy(m0(ids)[:, :-1].reshape(-1, m0.cfg.vocab_size), labels[:, 1:].reshape(-1))
    assert per.shape == (1,)
    assert_close_to_ref(loss, want, what="D=0 loss")


def test_mtp_module_layout():
    """The checkpoint's MTP layer names: enorm, hnorm, eh_proj [H, 2H], norm, and a decoder block
    with layer index num_hidden_layers + k - 1."""
    m = make_lm(2)
    h, n = m.cfg.hidden_size, m.cfg.num_hidden_layers
    for k, d in enumerate(m.mtp):
        assert isinstance(d, D.DeepSeekV3Block)
        assert d.eh_proj.weight.shape == (h, 2 * h) and d.eh_proj.bias is None
        assert d.self_attn.layer_idx == n + k
        assert {"enorm.weight", "hnorm.weight", "norm.weight", "input_layernorm.weight"} <= set(d.state_dict())


def test_mtp_loss_bad_arguments():
    m = make_lm(2)
    ids, labels = batch(m, s=9)
    with pytest.raises(ValueError, match="labels"):
        m.mtp_loss(ids, labels[:, :-1])
    with pytest.raises(ValueError, match="input_ids"):
        m.mtp_loss(ids[0])
    with pytest.raises(ValueError, match="at least D \\+ 2 = 4"):
        m.mtp_loss(ids[:, :3])
    m.mtp_loss(ids[:, :4], backend="cpu")  # the shortest: one target at the deepest depth
