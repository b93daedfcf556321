"""pygen.patch.patch_transformers_loss on tiny random transformers models (optional dependency:
skipped without transformers): Llama, Qwen3 and DeepseekV3 (the issue's three), Gemma2 (final logit
soft-capping) and Qwen3-MoE (router aux loss added to the loss). The patched model's loss and the
gradients of every parameter against the float64 oracle of transformers' ForCausalLMLoss (shifted
labels, ignore_index rows, "mean" or "sum" / num_items_in_batch, logits_to_keep with shift_labels)
on the stock model's logits, with the stock model in the test dtype as the same-dtype baseline (the
Flash-Attention rule), float64 and float32, losses backends cpu and reference. Logits are None
unless asked for; without labels the model is the stock one; the patch is idempotent, keeps the
forward signature, pickles, refuses other models, and refuses a model that rescales its logits."""

from __future__ import annotations

import copy
import inspect
import pickle
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import GROUPED_ROUTING, assert_close_to_ref

transformers = pytest.importorskip("transformers")

import pygen.patch  # noqa: E402 (after importorskip)
from pygen.integrations import transformers_loss as tl  # noqa: E402 (after importorskip)

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 61
_DIMS = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, max_position_embeddings=64)
_HEADS = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _configs() -> dict:
    """Tiny configs; initializer_range 0.15 so that the losses and gradients are not all log V."""
    dims = dict(_DIMS, initializer_range=0.15)
    latent = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
    return {
        "llama": lambda: transformers.LlamaConfig(**dims, num_attention_heads=4, num_key_value_heads=2),
        "qwen3": lambda: transformers.Qwen3Config(**dims, **_HEADS),
        "deepseek_v3": lambda: transformers.DeepseekV3Config(
            **dims,
            num_attention_heads=2,
            moe_intermediate_size=12,
            **GROUPED_ROUTING,
            first_k_dense_replace=1,
            **latent,
        ),
        "gemma2": lambda: transformers.Gemma2Config(**dims, **_HEADS, final_logit_softcapping=3.0),
        "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
            **dims,
            **_HEADS,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=12,
            output_router_logits=True,
            router_aux_loss_coef=0.05,
        ),
    }


KINDS = list(_configs())


def build(kind: str, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    # eager experts: transformers' default grouped_mm has no float64
    m = transformers.AutoModelForCausalLM.from_config(_configs()[kind](), experts_implementation="eager")
    return m.to(dtype)


def batch(b=2, s=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, s), generator=g)
    labels = ids.clone()
    labels[0, 2] = labels[1, 5] = labels[1, 6] = -100
    return ids, labels


def oracle_loss(model64, ids, labels, num_items=None, shift_labels=None, logits_to_keep=0):
    """ForCausalLMLoss in float64 on the stock model's logits (the stock one upcasts to float32),
    plus the router aux loss where the model has one."""
    out = model64(input_ids=ids, logits_to_keep=logits_to_keep)
    if shift_labels is None:
        shift_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    targets = shift_labels.reshape(-1)
    logits = out.logits.reshape(-1, VOCAB)
    if num_items is None:
        loss = F.cross_entropy(logits, targets)
    else:
        loss = F.cross_entropy(logits, targets, reduction="sum") / num_items
    if getattr(out, "aux_loss", None) is not None:
        loss = loss + model64.router_aux_loss_coef * out.aux_loss
    return loss


def _grads(model, loss) -> dict:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, gs) if g is not None}


def _case(case: str, labels: torch.Tensor) -> dict:
    if case == "mean":
        return {}
    if case == "num_items":  # gradient accumulation: the count of the whole accumulated batch
        return {"num_items_in_batch": (labels[:, 1:] != -100).sum() + 5}
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    return {"logits_to_keep": 4, "shift_labels": shifted[:, -4:].contiguous()}


CASES = [
    pytest.param(torch.float64, "cpu", id="f64-cpu"),
    pytest.param(torch.float32, "cpu", id="f32-cpu"),
    pytest.param(torch.float64, "reference", id="f64-reference"),
]


@pytest.mark.parametrize("dtype,backend", CASES)
@pytest.mark.parametrize("case", ["mean", "num_items", "keep"])
@pytest.mark.parametrize("kind", KINDS)
def test_patched_loss_and_gradients_equal_stock(kind, case, dtype, backend):
    stock = build(kind, dtype)
    patched = copy.deepcopy(stock)
    assert pygen.patch.patch_transformers_loss(patched, backend=backend) == {type(stock).__name__: 1}
    model64 = copy.deepcopy(stock).double()
    ids, labels = batch()
    kw = _case(case, labels)

    out = patched(input_ids=ids, labels=labels, **kw)
    ref = stock(input_ids=ids, labels=labels, **kw)
    keep = kw.get("logits_to_keep", 0)
    want = oracle_loss(model64, ids, labels, kw.get("num_items_in_batch"), kw.get("shift_labels"), keep)

    assert out.logits is None and ref.logits is not None
    assert type(out) is type(ref) and out.loss.dtype == ref.loss.dtype == torch.float32
    assert_close_to_ref(out.loss, want, ref.loss, what="loss")
    if kind == "qwen3_moe":
        assert torch.equal(out.aux_loss, ref.aux_loss)
    got, base, exact = _grads(patched, out.loss), _grads(stock, ref.loss), _grads(model64, want)
    head = next(n for n, p in patched.named_parameters() if p is patched.lm_head.weight)  # tied: embed_tokens
    assert got.keys() == base.keys() == exact.keys() and head in got
    for name, g in exact.items():
        assert_close_to_ref(got[name], g, base[name], atol=1e-9 if dtype == torch.float64 else 1e-6, what=name)


def test_logits_on_request_and_without_labels():
    stock = build("llama", torch.float32)
    patched = copy.deepcopy(stock)
    pygen.patch.patch_transformers_loss(patched, backend="cpu")
    ids, labels = batch()
    plain, ref_plain = patched(input_ids=ids), stock(input_ids=ids)
    assert plain.loss is None and torch.equal(plain.logits, ref_plain.logits)  # no labels: the stock forward
    ref = stock(input_ids=ids, labels=labels)
    asked = patched(input_ids=ids, labels=labels, return_logits=True)
    assert torch.equal(asked.logits, ref.logits)
    assert torch.allclose(asked.loss, ref.loss, rtol=1e-6, atol=0)
    pygen.patch.patch_transformers_loss(patched, return_logits=True, backend="cpu")  # the model's default
    assert torch.equal(patched(input_ids=ids, labels=labels).logits, ref.logits)
    assert patched(input_ids=ids, labels=labels, return_logits=False).logits is None
    tup = patched(ids, None, None, None, None, labels, return_dict=False)  # labels positional too
    assert isinstance(tup, tuple) and torch.allclose(tup[0], ref.loss, rtol=1e-6, atol=0)
    assert torch.equal(tup[1], ref.logits)
    with torch.no_grad():
        gen = patched.generate(ids, max_new_tokens=3, do_sample=False)
        assert torch.equal(gen, stock.generate(ids, max_new_tokens=3, do_sample=False))


def test_patch_is_idempotent_keeps_signature_and_pickles():
    model = build("qwen3", torch.float32)
    stock_sig = inspect.signature(model.forward)
    assert pygen.patch.patch_transformers_loss(model) == {"Qwen3ForCausalLM": 1}
    first = model.forward
    assert pygen.patch.patch_transformers_loss(model) == {}
    assert model.forward is first
    assert inspect.signature(model.forward) == stock_sig  # what Trainer and generate inspect
    assert set(model.state_dict()) == set(build("qwen3", torch.float32).state_dict())
    ids, labels = batch()
    loss = model(input_ids=ids, labels=labels).loss
    again = pickle.loads(pickle.dumps(model))
    assert isinstance(again.forward, tl.LinearLossForward) and again.forward.model is again
    assert torch.equal(again(input_ids=ids, labels=labels).loss, loss)


def test_patch_refuses_other_models(monkeypatch):
    cfg = _configs()["llama"]()
    with pytest.raises(TypeError, match="ForCausalLM"):
        pygen.patch.patch_transformers_loss(transformers.LlamaModel(cfg))
    with pytest.raises(TypeError, match="ForCausalLM"):
        pygen.patch.patch_transformers_loss(torch.nn.Linear(3, 4))
    model = transformers.LlamaForCausalLM(cfg)

    class ScaledHead(torch.nn.Linear):
        pass

    model.lm_head = ScaledHead(32, VOCAB, bias=False)
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        pygen.patch.patch_transformers_loss(model)
    model = transformers.LlamaForCausalLM(cfg)
    model.loss_function = lambda *a, **k: None
    with pytest.raises(TypeError, match="ForCausalLMLoss"):
        pygen.patch.patch_transformers_loss(model)
    with pytest.raises(TypeError, match="return_logits"):
        pygen.patch.patch_transformers_loss(transformers.LlamaForCausalLM(cfg), return_logits=1)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError):
        pygen.patch.patch_transformers_loss(model)


def test_model_that_rescales_its_logits_is_refused():
    """A hook doubling the head's output stands for model code that transforms its logits in a
    way the patch does not reproduce: a clear error, not a different loss."""
    model = build("llama", torch.float32)
    model.lm_head.register_forward_hook(lambda mod, args, out: out * 2)
    pygen.patch.patch_transformers_loss(model)
    ids, labels = batch()
    with pytest.raises(RuntimeError, match="transforms its logits"):
        model(input_ids=ids, labels=labels)
    assert "forward" not in model.lm_head.__dict__ and "_loss_function" not in model.__dict__  # restored


def test_changed_loss_function_runs_the_stock_forward():
    stock = build("llama", torch.float32)
    model = copy.deepcopy(stock)
    pygen.patch.patch_transformers_loss(model)
    model.loss_function = transformers.loss.loss_utils.ForMaskedLMLoss  # set after patching
    ids, labels = batch()
    with pytest.warns(UserWarning, match="stock forward"):
        out = model(input_ids=ids, labels=labels)
    stock.loss_function = transformers.loss.loss_utils.ForMaskedLMLoss
    assert out.logits is not None and torch.equal(out.loss, stock(input_ids=ids, labels=labels).loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        model(input_ids=ids, labels=labels)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_model_loss_is_reduced_in_float32(kind):
    """A bf16 model: transformers upcasts its bf16 logits to float32 before the loss; the patched
    loss is reduced in float32 too (linear_cross_entropy(dtype=float32)), not rounded to bf16 (up to
    half a bf16 ulp, 0.016 at a loss of 4), so it is as close to the float64 oracle as the stock
    float32 loss is, by the same-dtype rule."""
    stock = build(kind, torch.bfloat16)
    patched = copy.deepcopy(stock)
    pygen.patch.patch_transformers_loss(patched, backend="cpu")
    model64 = copy.deepcopy(stock).double()
    ids, labels = batch()
    with torch.no_grad():
        out, ref = patched(input_ids=ids, labels=labels), stock(input_ids=ids, labels=labels)
        want = oracle_loss(model64, ids, labels)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() != out.loss.to(torch.bfloat16).item()  # not rounded to bf16 (fixed seeds)
    assert_close_to_ref(out.loss, want, ref.loss, atol=1e-3, what="loss")
