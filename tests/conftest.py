"""pytest fixtures shared by every test module; the shared helpers are in tests/helpers.py, which
this imports first so that TRITON_INTERPRET is set before triton or pygen is imported."""

from __future__ import annotations

import helpers  # noqa: F401 (sets TRITON_INTERPRET on machines without a GPU)
import pytest
import torch


@pytest.fixture
def one_thread():
    """torch single-threaded for the test, restored after. The test problems are tiny: intra-op
    threads buy nothing, and on a loaded 2-core machine their spin-waits made small ops and
    100-step model runs 10-20x slower (measured here). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
