"""The MADE matmul kernels compile offline for sm_90 with Hopper tensor-core MMAs (wgmma) and no
register spills (no GPU needed). Two representative entries of kernels/made/__init__.py's COMPILE_SPECS
are compiled here (the bf16 degree-mask forward, the bf16 dW kernel and the bf16 persistent sampler,
~10 s each on 2 cores);
``pygen inspect made`` compiles all of them.

The compiles run in a child process: conftest sets TRITON_INTERPRET=1 on machines without a GPU,
and under it @triton.jit yields interpreter objects that cannot be compiled.
"""

from __future__ import annotations

from helpers import assert_compiled_without_spills, compile_in_child

NAMES = ["masked_linear_fwd[bf16]", "masked_linear_dw[bf16]", "made_sample_persistent[bf16]"]

CHILD = """
import json, sys
from pygen.tools.inspect import compile_triton_spec
from pygen.kernels import made
rows = []
for spec in made.COMPILE_SPECS:
    if spec["name"] in sys.argv[1:]:
        r = compile_triton_spec(spec, "made")
        rows.append({k: r.get(k) for k in ("kernel", "error", "wgmma", "spill_stores", "spill_loads", "registers")}
                    | {"name": spec["name"]})
print(json.dumps(rows))
"""


def test_matmul_kernels_use_wgmma_without_spills():
    rows = compile_in_child(CHILD, *NAMES)
    assert sorted(r["name"] for r in rows) == sorted(NAMES)
    assert_compiled_without_spills(rows)
    for r in rows:
        assert r["wgmma"] is True, f"{r['name']}: no wgmma in the sm_90 PTX"
