"""Public functional API, one module per family: validation, backend choice, torch.library
registration and autograd."""

from .flows import (
    actnorm,
    additive_coupling,
    affine_coupling,
    inv_conv1x1,
    inv_conv1x1_lu,
    planar,
    radial,
    slogdet,
    sylvester,
)
from .fp8 import dequantize_fp8, fp8_gemm, fp8_gemm_grouped, fp8_gemm_wgrad, quantize_fp8_1x128, quantize_fp8_128x128
from .made import made_affine_forward, made_sample, masked_linear, masked_linear_bits, pack_bits, sort_hidden_units
from .mla import merge_attn_states, mla_cache_append, mla_decode, mla_prefill
from .moe import fused_moe, moe_align, moe_permute, moe_route, moe_unpermute
from .moe_fp8 import fused_moe_fp8, quantize_moe_weights_fp8
from .roi import multi_scale_roi_align, ps_roi_align, ps_roi_pool, roi_align, roi_pool
