"""Every Triton kernel of the RoI family compiles offline for sm_90 (no GPU needed).

The configurations are kernels/roi/__init__.py's COMPILE_SPECS (representative FPN / Mask R-CNN / R-FCN
shapes). Each must compile and, assembled by the ptxas Triton itself uses for sm_90, show zero
spill stores and loads. A second pass turns every integer size argument into the constant 1, as
Triton's JIT does for arguments equal to 1 (1x1 outputs, one image, one channel, unit maps,
sampling_ratio=1), and checks that those specialisations compile too.

The compiles run in a child process: conftest sets TRITON_INTERPRET=1 on machines without a
GPU, and under it @triton.jit yields interpreter objects that cannot be compiled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

ARCH = 90


def _ptxas() -> str | None:
    try:  # the ptxas Triton runs for this arch (triton 3.6: ptxas, 3.9: ptxas-blackwell)
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(ARCH).path
    except Exception:  # noqa: BLE001 (any failure means: no toolchain)
        return shutil.which("ptxas")


def _ptxas_report(ptx: str) -> dict:
    ptxas = _ptxas()
    if ptxas is None:
        return {"error": "no ptxas"}
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", path, "-o", os.path.join(tmp, "k.o")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    log = res.stdout + res.stderr
    if res.returncode != 0:
        return {"error": log[-2000:]}
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_stores": int(spill.group(1)) if spill else 0,
        "spill_loads": int(spill.group(2)) if spill else 0,
        "log": log[-2000:],
    }


def _child() -> None:
    """Compile every spec (as given, then with unit sizes) and print one JSON object."""
    import triton
    from triton.backends.compiler import GPUTarget

    from pygen.kernels import roi as kroi
    from pygen.kernels._compile_spec import constexpr_name

    def compile_(spec, sig, consts):
        src = triton.compiler.ASTSource(fn=spec["fn"], signature=sig, constexprs=consts)
        return triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options={"num_warps": spec["num_warps"]})

    out = {"kernels": sorted(n for n in dir(kroi) if n.startswith("_") and n.endswith("_kernel")), "specs": []}
    for spec in kroi.COMPILE_SPECS:
        row = {
            "name": spec["name"],
            "what": spec["what"],
            "arg_names": list(spec["fn"].arg_names),
            "signature": spec["signature"],
            "constexprs": sorted(constexpr_name(spec["fn"], k) for k in spec["constexprs"]),
        }
        try:
            row.update(_ptxas_report(compile_(spec, spec["signature"], spec["constexprs"]).asm["ptx"]))
        except Exception as exc:  # noqa: BLE001 (the child reports any compile failure)
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        sig, consts = dict(spec["signature"]), dict(spec["constexprs"])
        for idx, (name, ty) in enumerate(spec["signature"].items()):
            if name in ("go", "am", "rois"):  # (pointer, strides) views: strides stay as the spec has them
                continue
            if ty == "i32":
                sig[name], consts[name] = "constexpr", 1
            elif isinstance(ty, tuple):  # feat's sizes and strides, the FPN levels' sizes and strides
                sig[name] = tuple("constexpr" if t == "i32" else t for t in ty)
                consts.update({(idx, i): 1 for i, t in enumerate(ty) if t == "i32"})
        try:
            compile_(spec, sig, consts)
            row["unit_error"] = None
        except Exception as exc:  # noqa: BLE001 (the child reports any compile failure)
            row["unit_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        out["specs"].append(row)
    print("@@JSON@@" + json.dumps(out))


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True, timeout=1800
    )
    marker = [ln for ln in res.stdout.splitlines() if ln.startswith("@@JSON@@")]
    assert marker, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(marker[0][len("@@JSON@@") :])


def test_specs_cover_every_kernel(compiled):
    assert set(compiled["kernels"]) == {s["name"] for s in compiled["specs"]}
    for s in compiled["specs"]:
        assert list(s["signature"]) == s["arg_names"], s["name"]
        sig = s["signature"].items()
        const = [a for a, t in sig if t == "constexpr"]  # and tuple elements (JSON lists) by "arg[i]"
        const += [f"{a}[{i}]" for a, t in sig if isinstance(t, list) for i, e in enumerate(t) if e == "constexpr"]
        const.sort()
        assert const == s["constexprs"], s["name"]


def test_compiles_for_sm90_without_spills(compiled):
    bad = []
    for s in compiled["specs"]:
        if s.get("error") == "no ptxas":
            pytest.skip("no ptxas next to Triton or on PATH")
        if s.get("error") or not s.get("registers") or s["spill_stores"] or s["spill_loads"]:
            bad.append((s["name"], s["what"], s.get("error") or s.get("log")))
    assert not bad, bad


def test_unit_size_specialisations_compile(compiled):
    bad = [(s["name"], s["unit_error"]) for s in compiled["specs"] if s["unit_error"]]
    assert not bad, bad


if __name__ == "__main__":
    _child()
