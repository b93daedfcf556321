"""The library-wide switch for value checks: the argument checks that read tensor *values* on the
host (box coordinates, page ids, cache lengths, expert ids, 0/1 masks, a zero LU diagonal) and so
cost a host synchronisation on a GPU. Shape, dtype, device and size checks read metadata only
and always run.

    pygen.set_value_checks(False)          # process-wide, until set again (None: back to the env)
    with pygen.value_checks(False):        # for a block (also a decorator); restores the setting
        ...
    PYGEN_VALUE_CHECKS=0                   # the default when neither was called (1 / unset: on)

Whatever the switch says, value checks are skipped while torch.compile traces, while a CUDA graph
is being captured and on fake tensors (pygen/ops/_common_checks.py::checking_values, the one
predicate every family uses). With checks off, bad index values are the caller's responsibility:
each family's checks module says what its kernels then do with them.

The setting is process-wide (not per thread), like torch.autograd.set_detect_anomaly.
"""

from __future__ import annotations

import contextlib
import os

ENV = "PYGEN_VALUE_CHECKS"
_ON = ("", "1", "true", "on", "yes")
_OFF = ("0", "false", "off", "no")

_override: bool | None = None  # set_value_checks / value_checks; None: PYGEN_VALUE_CHECKS decides


def _from_env() -> bool:
    v = os.environ.get(ENV, "").strip().lower()
    if v in _ON:
        return True
    if v in _OFF:
        return False
    raise ValueError(f"{ENV} must be 1 or 0 (also true/false, on/off, yes/no), got {os.environ[ENV]!r}")


def value_checks_enabled() -> bool:
    """The switch as set (set_value_checks / value_checks, else PYGEN_VALUE_CHECKS, else on); it
    does not account for tracing or capture (checking_values does)."""
    return _from_env() if _override is None else _override


def set_value_checks(enabled: bool | None) -> None:
    """Turn value checks on (True) or off (False) for the whole process; None returns to the
    PYGEN_VALUE_CHECKS default."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_value_checks: enabled must be a bool or None, got {enabled!r}")
    _override = enabled


@contextlib.contextmanager
def value_checks(enabled: bool):
    """``with pygen.value_checks(False): ...`` runs the block with value checks off (or on) and
    restores the previous setting on exit; usable as a decorator."""
    global _override
    if not isinstance(enabled, bool):
        raise TypeError(f"value_checks: enabled must be a bool, got {enabled!r}")
    before = _override
    _override = enabled
    try:
        yield
    finally:
        _override = before
