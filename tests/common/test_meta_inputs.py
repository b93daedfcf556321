"""Meta tensors, every family: each public op of pygen.ops, called with arguments that are valid on
CPU but live on the meta device, raises a ValueError naming the argument (pygen/ops/_common_checks.py)
instead of torch's "Cannot copy out of meta tensor" from deep inside a value check. The CPU call of
each case is run too, so the meta error is about the device and nothing else."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import public_ops
from torch.utils._pytree import tree_map

from pygen import ops
from pygen.ref import fp8 as fp8_ref, mla as mla_ref


def _roi():
    x = torch.randn(2, 8, 6, 7)
    rois = torch.tensor([[0, 0.0, 0, 4, 4], [1, 1, 1, 5, 3]])
    return {
        "roi_align": (ops.roi_align, (x, rois, 2), {}),
        "roi_align(list)": (ops.roi_align, (x, [rois[:1, 1:], rois[1:, 1:]], 2), {}),
        "roi_pool": (ops.roi_pool, (x, rois, 2), {}),
        "ps_roi_align": (ops.ps_roi_align, (x, rois, 2), {}),
        "ps_roi_pool": (ops.ps_roi_pool, (x, rois, 2), {}),
        "multi_scale_roi_align": (ops.multi_scale_roi_align, ([x, x[..., :3, :4]], rois, 2, [1.0, 0.5]), {}),
    }


def _flows():
    x = torch.randn(2, 4, 3, 3)
    w = torch.linalg.qr(torch.randn(4, 4))[0]
    z = torch.randn(5, 3)
    return {
        "slogdet": (ops.slogdet, (torch.randn(3, 4, 4),), {}),
        "affine_coupling": (ops.affine_coupling, (x, torch.randn_like(x), torch.randn_like(x)), {}),
        "additive_coupling": (ops.additive_coupling, (x, torch.randn_like(x)), {}),
        "actnorm": (ops.actnorm, (x, torch.randn(4), torch.randn(4)), {}),
        "actnorm_init": (ops.actnorm_init, (x,), {}),
        "inv_conv1x1": (ops.inv_conv1x1, (x, w), {}),
        "inv_conv1x1_lu": (
            ops.inv_conv1x1_lu,
            (x, torch.eye(4), torch.randn(4, 4), torch.randn(4, 4), torch.rand(4) + 0.5),
            {},
        ),
        "planar": (ops.planar, (z, torch.randn(3), torch.randn(3), torch.randn(1)), {}),
        "radial": (ops.radial, (z, torch.randn(3), torch.tensor(1.0), torch.tensor(0.5)), {}),
        "sylvester": (ops.sylvester, (z, torch.randn(3, 2), torch.randn(2, 3), torch.randn(2)), {}),
    }


def _made():
    d, h = 4, 6
    x = torch.randn(3, d)
    w1, w2 = torch.randn(h, d), torch.randn(2 * d, h)
    din, dh = torch.arange(1, d + 1), torch.randint(1, d, (h,))
    dout = torch.arange(1, d + 1).repeat_interleave(2)
    return {
        "masked_linear": (ops.masked_linear, (x, w1, torch.zeros(h), din, dh), {"activation": "relu"}),
        "masked_linear(mask)": (ops.masked_linear, (x, w1, None), {"mask": dh[:, None] >= din[None, :]}),
        "masked_linear_plain": (ops.masked_linear_plain, (x, w1, None, dh[:, None] >= din[None, :]), {}),
        "masked_linear_bits": (ops.masked_linear_bits, (ops.pack_bits((x > 0).float()), d, w1, None, din, dh), {}),
        "pack_bits": (ops.pack_bits, ((x > 0).float(),), {}),
        "made_affine_forward": (ops.made_affine_forward, (torch.randn(3, h), w2, None, dh, dout, x), {}),
        "made_sample": (ops.made_sample, ([w1, torch.randn(d, h)], [None, None], [din, dh, din], torch.rand(3, d)), {}),
    }


def _mla():
    g = torch.Generator().manual_seed(7)
    q, kv, bt, sl = mla_ref.random_decode_problem((9, 3), 1, 16, 4, g)
    cq, ck = mla_ref.cu_seqlens((3, 4)), mla_ref.cu_seqlens((4, 5))
    return {
        "mla_decode": (ops.mla_decode, (q, kv, bt, sl), {}),
        "mla_cache_append": (
            ops.mla_cache_append,
            (
                kv.clone(),
                bt,
                torch.tensor([[0, 1], [2, -1]], dtype=torch.int32),
                torch.randn(2, 2, 512),
                torch.randn(2, 2, 64),
            ),
            {},
        ),
        "mla_prefill": (
            ops.mla_prefill,
            (torch.randn(7, 2, 192), torch.randn(9, 2, 192), torch.randn(9, 2, 128), cq, ck),
            {},
        ),
        "merge_attn_states": (
            ops.merge_attn_states,
            (torch.randn(3, 2, 8), torch.randn(2, 3), torch.randn(3, 2, 8), torch.randn(2, 3)),
            {},
        ),
    }


def _fp8():
    x, w = torch.randn(16, 128), torch.randn(128, 128) * 0.05
    q, s = fp8_ref.quantize_1x128(x)
    wq, ws = fp8_ref.quantize_128x128(w)
    mi, _ = fp8_ref.grouped_layout([100])
    qg, sg = fp8_ref.quantize_1x128(torch.randn(128, 128))
    return {
        "quantize_fp8_1x128": (ops.quantize_fp8_1x128, (x,), {}),
        "quantize_fp8_128x128": (ops.quantize_fp8_128x128, (w,), {}),
        "dequantize_fp8": (ops.dequantize_fp8, (wq, ws), {"block": 128}),
        "fp8_gemm": (ops.fp8_gemm, (q, s, wq, ws), {}),
        "fp8_gemm_wgrad": (ops.fp8_gemm_wgrad, (q, s, q, s), {}),
        "fp8_gemm_grouped": (ops.fp8_gemm_grouped, (qg, sg, wq[None], ws[None], mi), {}),
    }


def _moe():
    t, h, i, e, k = 5, 16, 6, 8, 2
    x = torch.randn(t, h)
    w1, w2 = torch.randn(e, 2 * i, h) * 0.1, torch.randn(e, h, i) * 0.1
    ids = torch.randint(0, e, (t, k), dtype=torch.int32)
    tw = torch.rand(t, k)
    w1_128, w2_128 = torch.randn(2, 256, 128) * 0.1, torch.randn(2, 128, 128) * 0.1
    fp8_w = ops.quantize_moe_weights_fp8(w1_128, w2_128, backend="reference")
    return {
        "moe_route": (ops.moe_route, (torch.randn(t, 16), 2), {"n_group": 4, "topk_group": 2}),
        "moe_align": (ops.moe_align, (ids, e, 4), {}),
        "moe_permute": (ops.moe_permute, (x, ids, e), {}),
        "moe_unpermute": (ops.moe_unpermute, (torch.randn(t * k, h), torch.arange(t * k, dtype=torch.int32), tw), {}),
        "fused_moe": (ops.fused_moe, (x, w1, w2, tw, ids), {}),
        "quantize_moe_weights_fp8": (ops.quantize_moe_weights_fp8, (w1_128, w2_128), {}),
        "fused_moe_fp8": (ops.fused_moe_fp8, (torch.randn(t, 128), *fp8_w, tw, ids % 2), {}),
    }


def _losses():
    h, w, b = torch.randn(5, 8), torch.randn(11, 8), torch.randn(11)
    t = torch.tensor([0, 3, -100, 10, 7])
    return {
        "linear_cross_entropy": (ops.linear_cross_entropy, (h, w, t, b), {}),
        "linear_log_probs": (ops.linear_log_probs, (h, w, t.clamp(min=0)), {}),
        "info_nce": (ops.info_nce, (h, h.flip(0)), {"temperature": 0.1, "positives": t.clamp(0, 4), "queue": w}),
        **_grpo(h, w, t.clamp(min=0)),
    }


def _grpo(h, w, tokens):
    lp, adv, mask = -torch.rand(1, 5), torch.randn(1), torch.tensor([[True, True, False, True, True]])
    grpo = (lp, lp - 0.1, lp + 0.1, adv, mask)
    return {
        "grpo_loss": (ops.grpo_loss, grpo, {}),
        "linear_grpo_loss": (ops.linear_grpo_loss, (h[None], w, tokens[None], *grpo[1:]), {}),
        "group_advantages": (ops.group_advantages, (torch.randn(6), 3), {}),
    }


CASES = {**_roi(), **_flows(), **_made(), **_mla(), **_fp8(), **_moe(), **_losses()}
# pure-PyTorch helpers that never read values: they simply work on meta tensors
WORK_ON_META = {"sort_hidden_units"}


def test_every_public_op_is_covered():
    public = public_ops()
    covered = {c.split("(")[0] for c in CASES} | WORK_ON_META
    assert public <= covered, f"no meta case for {sorted(public - covered)}"


def _meta(v):
    return v.to("meta") if isinstance(v, torch.Tensor) else v


@pytest.mark.parametrize("case", sorted(CASES))
def test_meta_arguments_raise_a_clear_error(case):
    fn, args, kwargs = CASES[case]
    ref = {"backend": "reference"} if "backend" in inspect.signature(fn).parameters else {}
    fn(*args, **ref, **kwargs)  # the arguments are valid on CPU
    meta_args, meta_kwargs = tree_map(_meta, (args, kwargs))
    with pytest.raises(ValueError, match=r"is on the meta device, which holds no data"):
        fn(*meta_args, **meta_kwargs)
