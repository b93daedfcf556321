"""Build checks for the csrc modules that need no GPU.

* csrc/roi/roi.cu compiles for sm_90a with ``-Xptxas -v`` and ptxas reports no register spills
  (skipped only when nvcc is absent).
* pygen._C imports and exposes the RoI launcher contract (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = (
    "roi_align_fwd",
    "roi_align_bwd",
    "roi_pool_fwd",
    "roi_pool_bwd",
    "ps_roi_align_fwd",
    "ps_roi_align_bwd",
    "ps_roi_pool_fwd",
    "ps_roi_pool_bwd",
    "multi_scale_roi_align_fwd",
    "multi_scale_roi_align_bwd",
)


def _nvcc() -> str | None:
    from pygen._cuda_toolkit import find_nvcc

    return find_nvcc()


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_roi_cu_compiles_for_sm90a_without_spills(tmp_path):
    cmd = [
        _nvcc(),
        "-std=c++17",
        "-O3",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-Xptxas",
        "-v",
        f"-I{ROOT / 'csrc'}",
        "-c",
        str(ROOT / "csrc" / "roi" / "roi.cu"),
        "-o",
        str(tmp_path / "roi.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'", log)
    assert entries and len(spills) == len(entries), log
    spilling = [name for name, (st, ld) in zip(entries, spills) if int(st) or int(ld)]
    assert not spilling, "register spills in:\n" + "\n".join(spilling) + "\n" + log


def test_host_module_exposes_contract():
    import pygen._C as C

    missing = [f for f in CONTRACT if not callable(getattr(C, f, None))]
    assert not missing, f"pygen._C lacks {missing}"


def test_one_nvcc_finder(tmp_path, monkeypatch):
    """setup.py, ``pygen inspect`` and these tests find nvcc through pygen/_cuda_toolkit.py: a
    CUDA_HOME holding bin/nvcc wins for all of them."""
    from pygen import inspect_kernels

    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\n")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    setup_src = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert "return _toolkit_finder().find_cuda()" in setup_src and 'which("nvcc")' not in setup_src
    assert _nvcc() == inspect_kernels.find_nvcc() == str(nvcc)
