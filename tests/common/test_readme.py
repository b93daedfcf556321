"""The README as a newcomer reads it: every ```python block of README.md is a complete program that
runs as written, each in a fresh interpreter at the repository root (the environment of the test
run, so TRITON_INTERPRET=1 without a GPU, as conftest sets it).

A block that imports an optional package (torchvision, transformers, matplotlib) is skipped, with
the reason, when that package cannot be imported here. A block whose first line is the marker
``# needs a CUDA GPU`` is compiled, and run only where CUDA is available."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GPU_MARKER = "# needs a CUDA GPU"
OPTIONAL = ("torchvision", "transformers", "matplotlib")
TIMEOUT_S = 600


def python_blocks() -> list[tuple[int, str]]:
    """(README line of the block's first code line, code) for every ```python block."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    ]


BLOCKS = python_blocks()


def _imported_packages(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _missing_optional(code: str) -> str | None:
    for pkg in sorted(_imported_packages(code) & set(OPTIONAL)):
        try:
            importlib.import_module(pkg)
        except Exception as exc:  # a broken install (e.g. a CUDA torchvision on a CPU torch) counts as absent
            return f"needs {pkg}, which is not importable here ({type(exc).__name__}: {exc})"
    return None


def test_readme_has_the_usage_blocks():
    assert len(BLOCKS) >= 6, f"expected the Usage section's python blocks, found {len(BLOCKS)}"


def test_readme_keeps_its_two_commands():
    text = README.read_text()
    assert "pip install torch==2.13.0 && pip install -e . && pygen bench\n" in text
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q tests bench\n' in text


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, code):
    compile(code, f"README.md:{line}", "exec")  # every block, GPU or not, is valid Python
    if code.startswith(GPU_MARKER) and not torch.cuda.is_available():
        pytest.skip("marked '# needs a CUDA GPU' and no GPU here: compiled only")
    why = _missing_optional(code)
    if why:
        pytest.skip(why)
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("TRITON_INTERPRET", "1")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, (
        f"the README block starting at line {line} failed (line N of the traceback is README line "
        f"{line} + N - 1):\n{proc.stderr[-4000:]}"
    )
