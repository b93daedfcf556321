"""Every Triton kernel of the flow family compiles offline for sm_90 without register spills (no
GPU needed): for each kernel function the last (largest) entry of kernels/flows.py's
COMPILE_SPECS is compiled; ``pygen inspect flows`` compiles all of them.

The compiles run in a child process: conftest sets TRITON_INTERPRET=1 on machines without a GPU,
and under it @triton.jit yields interpreter objects that cannot be compiled.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = """
import json
from pygen.inspect_kernels import compile_triton_spec
from pygen.kernels import flows
last = {}
for spec in flows.COMPILE_SPECS:
    last[spec["fn"].__name__] = spec
rows = []
for name, spec in last.items():
    r = compile_triton_spec(spec, "flows")
    rows.append({k: r.get(k) for k in ("kernel", "config", "error", "spill_stores", "spill_loads", "registers")})
print(json.dumps(rows))
"""


def test_every_flow_kernel_compiles_for_sm90_without_spills():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 12, [r["kernel"] for r in rows]
    for r in rows:
        if r["error"] and "ptxas" in r["error"] and r["registers"] is None:
            pytest.skip(f"no usable ptxas: {r['error']}")
        assert r["error"] is None, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
