"""Hooks into third-party libraries that dispatch through a registry (no module swap needed),
and module swaps for their models.

    transformers_moe   pygen's fused_moe as transformers' experts implementation "pygen", and
                       patch_deepseek_moe() to swap pygen.nn.MoE into a DeepseekV3 model
    transformers_mla   pygen's MLA as transformers' attention implementation "pygen", and
                       patch_deepseek_attention() to swap pygen.nn.MLA into a DeepseekV3 model

Each submodule imports its library lazily and raises ImportError when it is not installed.
"""
