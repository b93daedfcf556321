"""The register-heavy Triton kernels of the flow family (slogdet, LU weight and 1x1-conv, forward
and backward) compile offline for sm_90 without register spills (no GPU needed): for each the last
(largest) entry of kernels/flows/__init__.py's COMPILE_SPECS is compiled. The elementwise kernels are left
to ``pygen inspect flows``, which compiles all 29 entries (~10 s more on 2 cores).

The compiles run in a child process: conftest sets TRITON_INTERPRET=1 on machines without a GPU,
and under it @triton.jit yields interpreter objects that cannot be compiled.
"""

from __future__ import annotations

from helpers import assert_compiled_without_spills, compile_in_child

CHILD = """
import json
from pygen.tools.inspect import compile_triton_spec
from pygen.kernels import flows
HEAVY = ("_slogdet_fwd_kernel", "_slogdet_bwd_kernel", "_lu_weight_fwd_kernel", "_lu_weight_bwd_kernel",
         "_conv1x1_fwd_kernel", "_conv1x1_dw_kernel")
last = {}
for spec in flows.COMPILE_SPECS:
    if spec["fn"].__name__ in HEAVY:
        last[spec["fn"].__name__] = spec
rows = []
for name, spec in last.items():
    r = compile_triton_spec(spec, "flows")
    rows.append({k: r.get(k) for k in ("kernel", "config", "error", "spill_stores", "spill_loads", "registers")})
print(json.dumps(rows))
"""


def test_every_flow_kernel_compiles_for_sm90_without_spills():
    rows = compile_in_child(CHILD)
    assert len(rows) == 6, [r["kernel"] for r in rows]
    assert_compiled_without_spills(rows)
