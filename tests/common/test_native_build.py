"""Build checks for the csrc modules that need no GPU.

* csrc/roi/roi.cu compiles for sm_90a with ``-Xptxas -v`` and ptxas reports no register spills
  (skipped only when nvcc is absent).
* pygen._C imports and exposes the RoI launcher contract (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import helpers
from helpers import compile_cu_sm90a, requires_nvcc

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


@requires_nvcc
def test_roi_cu_compiles_for_sm90a_without_spills(tmp_path):
    rows = compile_cu_sm90a("roi/roi.cu", tmp_path)
    spilling = [name for name, st, ld in rows if st or ld]
    assert not spilling, f"register spills in: {spilling}"


def test_host_module_exposes_contract():
    import pygen._C as C

    missing = [f for f in CONTRACT if not callable(getattr(C, f, None))]
    assert not missing, f"pygen._C lacks {missing}"


def test_one_nvcc_finder(tmp_path, monkeypatch):
    """setup.py, ``pygen inspect`` and these tests find nvcc through pygen/_cuda_toolkit.py: a
    CUDA_HOME holding bin/nvcc wins for all of them."""
    from pygen.tools import inspect as inspect_kernels

    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\n")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    setup_src = (helpers.ROOT / "setup.py").read_text()
    assert "return _toolkit_finder().find_cuda()" in setup_src and 'which("nvcc")' not in setup_src
    assert helpers.nvcc() == inspect_kernels.find_nvcc() == str(nvcc)
