"""Hooks into third-party libraries that dispatch through a registry (no module swap needed),
and module swaps for their models.

    transformers_moe   pygen's fused_moe as transformers' experts implementation "pygen", and
                       patch_deepseek_moe() to swap pygen.nn.MoE into a DeepseekV3 model
    transformers_mla   pygen's MLA as transformers' attention implementation "pygen", and
                       patch_deepseek_attention() to swap pygen.nn.MLA into a DeepseekV3 model
    nflows, zuko       patch_nflows_made() / patch_zuko_masked(): pygen's masked layers (and MADE,
                       fused MaskedMLP) into nflows / zuko models (pygen.patch.patch_nflows / patch_zuko)
    transformers_loss  patch_causal_lm_loss(): a *ForCausalLM's training loss through
                       linear_cross_entropy, no logits (pygen.patch.patch_transformers_loss)

Each submodule imports its library lazily (zuko.py at its import) and raises ImportError when it is
not installed.
"""
