"""The repository's top-level kernels/ folder must never shadow an installed package named
``kernels`` (PyPI's, which transformers 5.25 imports). A clone's root lands on ``sys.path``
whenever a user runs ``python -c ...`` or ``python -m pytest`` from it, so these checks run in a
subprocess whose working directory is the repository root (``python -c`` puts that directory first
on ``sys.path``, ahead of site-packages)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DEEPSEEK_FORWARD = """
import sys, torch
import transformers, pygen, pygen.kernels.roi
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
assert sys.path[0] in ("", %(root)r), sys.path[:3]
cfg = DeepseekV3Config(vocab_size=97, hidden_size=48, intermediate_size=64, moe_intermediate_size=16,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=24,
                       kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
                       n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                       first_k_dense_replace=1, attn_implementation="eager")
torch.manual_seed(0)
model = DeepseekV3ForCausalLM(cfg).eval()
with torch.no_grad():
    logits = model(torch.randint(0, 97, (2, 5))).logits
assert logits.shape == (2, 5, 97) and torch.isfinite(logits).all()
print("OK")
"""


def _run_in_root(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_kernels_folder_is_not_a_regular_package():
    # A kernels/__init__.py would make the folder a regular package that wins over site-packages
    # whenever the root comes first on sys.path.
    assert (ROOT / "kernels").is_dir()
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_pygen_kernels_importable_from_the_root():
    r = _run_in_root("import pygen.kernels.roi as m, pygen.kernels as p; print(m.__file__); print(p.__path__)")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.splitlines()[0]).resolve() == ROOT / "kernels" / "roi" / "__init__.py"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_transformers_deepseek_forward_from_the_repository_root():
    r = _run_in_root(DEEPSEEK_FORWARD % {"root": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_installed_kernels_package_wins_from_the_root():
    # With PyPI's kernels installed (transformers >= 5.25 depends on it) `import kernels` in the root
    # must give the installed one; without it, at most an empty namespace portion of the folder.
    r = _run_in_root("import kernels; print(getattr(kernels, '__file__', None)); print(list(kernels.__path__))")
    assert r.returncode == 0, r.stderr
    file_line = r.stdout.splitlines()[0]
    installed = [
        d for d in sys.path[1:] if d and (Path(d) / "kernels" / "__init__.py").is_file() and Path(d).resolve() != ROOT
    ]
    if installed:
        assert file_line != "None" and Path(file_line).resolve().parent != ROOT / "kernels", r.stdout
    else:
        assert file_line == "None", r.stdout  # a namespace portion: nothing in it is importable
