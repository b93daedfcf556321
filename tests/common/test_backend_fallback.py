"""PYGEN_BACKEND is a preference: an op without that kernel falls back to the automatic choice and
says so once (a warning naming the op, the preference, why and the backend used, pointing at the
caller's line); ``pygen info`` lists which ops have the preferred kernel."""

from __future__ import annotations

import warnings

import pytest
import torch

import pygen
from pygen import _backend, ops
from pygen.cli import main


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(_backend, "_WARNED", set())


def test_fallback_warns_once_per_op(monkeypatch, fresh_warnings):
    monkeypatch.setenv("PYGEN_BACKEND", "cpu")
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.actnorm(x, torch.zeros(3), torch.zeros(3))
        ops.actnorm(x, torch.zeros(3), torch.zeros(3))
    msgs = [str(w.message) for w in caught if "PYGEN_BACKEND" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "actnorm: PYGEN_BACKEND=cpu does not apply on cpu" in msgs[0]
    assert "no cpu kernel" in msgs[0] and "running the reference backend" in msgs[0]
    assert [w.filename for w in caught if "PYGEN_BACKEND" in str(w.message)] == [__file__]


def test_no_warning_where_the_preference_applies(monkeypatch, fresh_warnings):
    if not pygen.backend_status("cpu", "cpu")[0]:
        pytest.skip("pygen._C not built")
    monkeypatch.setenv("PYGEN_BACKEND", "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.roi_align(torch.randn(1, 2, 5, 5), torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 2)
    assert not [w for w in caught if "PYGEN_BACKEND" in str(w.message)]


def test_info_lists_the_ops_of_the_preferred_backend(monkeypatch, capsys):
    monkeypatch.setenv("PYGEN_BACKEND", "cpu")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("PYGEN_BACKEND=cpu: ops with a cpu kernel:"))
    assert "roi_align" in line and "actnorm" not in line
    assert "fall back to the automatic choice" in out and "actnorm" in out.split(line, 1)[1]


def test_triton_older_than_the_minimum_is_off_with_its_reason(monkeypatch):
    """An older Triton (torch's CUDA wheels pin their own) leaves the triton backend off and says
    why; an explicit backend="triton" is refused with that reason instead of failing to compile."""
    triton = pytest.importorskip("triton")
    before = _backend.backend_status("triton", "cpu")
    monkeypatch.setattr(triton, "__version__", "3.3.1")
    _backend._triton_error.cache_clear()
    try:
        ok, why = _backend.backend_status("triton", "cpu")
        assert not ok and "triton 3.3.1 is older than 3.4" in why, why
        with pytest.raises(RuntimeError, match="3.3.1 is older than 3.4"):
            ops.grpo_loss(torch.zeros(1, 2), None, None, torch.zeros(1), torch.ones(1, 2), beta=0.0, backend="triton")
        assert _backend._version("3.4.0+git1234") == (3, 4) >= _backend.TRITON_MIN
    finally:
        monkeypatch.undo()
        _backend._triton_error.cache_clear()
    assert _backend.backend_status("triton", "cpu") == before  # the installed Triton's state again
