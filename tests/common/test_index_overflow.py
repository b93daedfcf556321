"""64-bit index arithmetic (docs/ARCHITECTURE.md, house style): no pointer offset of the MLA and FP8
Triton kernels is a 32-bit product of an index and a runtime stride or size.

A real-size launch cannot run here (the interpreter copies every tensor to the host, and the sizes
that overflow hold 2^31 elements), so the proof is on the compiled IR: each kernel is lowered to
TTIR for sm_90 (no GPU needed) at its worst-case specialisation -- every stride a runtime i32,
which is what Triton passes for any stride below 2^31, unit strides included -- and a data-flow
walk from every ``tt.addptr`` back through its offset operand looks for an ``arith.muli`` on i32
with a kernel integer argument as one factor. Before the fix, ``rows[:, None] * stride_t`` in
kernels/mla/prefill.py's _load_qk was exactly such a multiply (``tensor<128x1xi32>`` feeding
the q pointer); after it the product is i64. ``test_checker_flags_32_bit_products`` keeps the
walk honest on two synthetic kernels (one flagged, one clean).

Allowed 32-bit products, each bounded by a refusal in the op: the FP8 GEMM's scale offsets
(pygen/ops/fp8.py refuses scale views spanning 2^31 elements; 64-bit scale pointers spill the
wgrad tile).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import compile_in_child

# kernels (COMPILE_SPECS names) and the pointer arguments whose offsets may stay 32-bit
CHECKED = {
    "mla": {
        "mla_prefill_fwd[bf16,causal]": (),
        "mla_prefill_bwd_preprocess[bf16]": (),
        "mla_prefill_bwd_dkdv[bf16,causal]": (),
        "mla_prefill_bwd_dq[bf16,causal]": (),
        "merge_attn_states[bf16]": (),
        "mla_decode[bf16,h128,sq1]": (),
        "mla_decode[fp8,h128,sq2]": (),
        "mla_decode_merge[bf16]": (),
        "mla_cache_append[bf16]": (),
        "mla_cache_append[fp8]": (),
    },
    "fp8": {
        "quantize_1x128[fp32,row]": (),
        "quantize_1x128[fp32,col]": (),
        "quantize_128x128[fp32,row]": (),
        "fp8_gemm[M=4096]": ("as_ptr", "bs_ptr"),
        "fp8_gemm[M=64]": ("as_ptr", "bs_ptr"),
        "fp8_gemm_grouped": ("as_ptr", "bs_ptr"),
        "fp8_gemm_wgrad": ("as_ptr", "bs_ptr"),
    },
}

CHILD = r'''
import importlib, json, os, sys, tempfile, warnings
warnings.simplefilter("ignore")
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pygen.tools.inspect import _spec_fields

TARGET = GPUTarget("cuda", 90, 32)


def worst_case(spec):
    """Unit strides specialised to constexpr 1 become runtime i32 (a transposed operand has them)."""
    d = _spec_fields(spec)
    d["constexprs"] = dict(d["constexprs"])
    d["signature"] = dict(d["signature"])
    for k in list(d["constexprs"]):
        if k.startswith("stride") and d["constexprs"][k] == 1:
            del d["constexprs"][k]
            d["signature"][k] = "i32"
    return d


def ttir(d):
    fn, consts = d["fn"], d["constexprs"]
    sig = dict(d["signature"])
    for k in consts:
        sig.setdefault(k, "constexpr")
    sig = {a: sig[a] for a in fn.arg_names if a in sig}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=d.get("attrs"))
    opts = {k: d[k] for k in ("num_warps", "num_stages") if d.get(k) is not None}
    try:   # TTIR only (no LLVM / ptxas): triton 3.9's pipeline, first stage
        from triton.compiler.compiler import make_backend
        from triton._C.libtriton import ir
        backend = make_backend(TARGET)
        options = backend.parse_options(dict(opts, **src.parse_options()))
        ctx = ir.context()
        ir.load_dialects(ctx)
        backend.load_dialects(ctx)
        mod = src.make_ir(TARGET, options, backend.get_codegen_implementation(options), backend.get_module_map(), ctx)
        stages = {}
        backend.add_stages(stages, options, src.language)
        return str(stages["ttir"](mod, {}))
    except Exception:   # other triton releases: the full compile has the same TTIR
        return triton.compile(src, target=TARGET, options=opts).asm["ttir"]


SYNTH = """
import triton
import triton.language as tl

@triton.jit
def synth_bad(x_ptr, y_ptr, n, stride_t, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + rows * stride_t, mask=rows < n)
    tl.store(y_ptr + rows, v, mask=rows < n)

@triton.jit
def synth_good(x_ptr, y_ptr, n, stride_t, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + rows.to(tl.int64) * stride_t, mask=rows < n)
    tl.store(y_ptr + rows, v, mask=rows < n)
"""

out = {}
want = json.loads(sys.argv[1])
for fam, names in want.items():
    mod = importlib.import_module(f"pygen.kernels.{fam}")
    for spec in mod.COMPILE_SPECS:
        d = worst_case(spec)
        if d.get("name") in names:
            out[d["name"]] = ttir(d)
with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "synth_kernels.py"), "w") as f:
        f.write(SYNTH)
    sys.path.insert(0, tmp)
    synth = importlib.import_module("synth_kernels")
    for name in ("synth_bad", "synth_good"):
        out[name] = ttir({"fn": getattr(synth, name), "constexprs": {"BLOCK": 128}, "num_warps": 4,
                          "signature": {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "stride_t": "i32"}})
print(json.dumps([{"error": None, "ttir": out}]))
'''

_DEF = re.compile(r"^\s*(%[\w.$-]+)(?::(\d+))? = ([\w.]+)\b(.*)$")
_NAME = re.compile(r"%[\w.$-]+(?:#\d+)?")
_SHAPE_OPS = {"tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape", "tt.trans"}
_STOP_OPS = {"tt.load", "tt.get_program_id", "tt.get_num_programs", "arith.constant", "tt.make_range"}


def narrow_offset_products(ttir: str, allowed_ptrs=()) -> list[tuple[str, str, str]]:
    """(source line, pointer argument, integer argument) of every i32 ``arith.muli`` with a kernel
    integer argument as a factor (modulo splat / broadcast / expand_dims) that reaches the offset of
    a ``tt.addptr`` rooted at a pointer argument not in ``allowed_ptrs``."""
    lines = ttir.splitlines()
    locs = dict(m.groups() for m in (re.match(r"^(#loc\d*) = loc\((.*)\)$", ln.strip()) for ln in lines) if m)
    args, defs = {}, {}
    for ln in lines:
        if "tt.func" in ln:
            args.update(re.findall(r"(%[\w.$-]+): ([^ ,{)]+)", ln))
        m = _DEF.match(ln)
        if not m:
            continue
        name, nres, op, rest = m.groups()
        lm = re.search(r"loc\((#loc\d*)\)\s*$", rest)
        body = re.sub(r"loc\(.*$", "", rest)
        if op == "scf.for":  # loop-carried values start as their init operand
            it = re.search(r"iter_args\((.*?)\)\s*->", body)
            for a, b in re.findall(r"(%[\w.$-]+) = (%[\w.$-]+(?:#\d+)?)", it.group(1) if it else ""):
                defs[a] = ("iter_arg", [b], "", None)
            body = body.split("iter_args")[0]
        head, _, ty = body.rpartition(" : ") if " : " in body else (body, "", "")
        entry = (op, _NAME.findall(head), ty.strip(), lm.group(1) if lm else None)
        for r in [name] + [f"{name}#{i}" for i in range(int(nres or 0))]:
            defs[r] = entry

    def where(loc, depth=0):
        s = locs.get(loc, "") if loc else ""
        m = re.search(r'"([^"]+\.py)":(\d+)', s)
        if m:
            return f"{m.group(1).rsplit('/', 1)[-1]}:{m.group(2)}"
        m = re.search(r"(#loc\d*)", s)
        return where(m.group(1), depth + 1) if m and depth < 30 else "?"

    def roots(v, seen):
        if v in seen:
            return set()
        seen.add(v)
        if v in args:
            return {v} if args[v].startswith("!tt.ptr") else set()
        op, ops, _, _ = defs.get(v, ("", [], "", None))
        return set().union(*(roots(o, seen) for o in (ops[:1] if op == "tt.addptr" else ops))) if ops else set()

    def peel(v):
        while v in defs and defs[v][0] in _SHAPE_OPS:
            v = defs[v][1][0]
        return v

    found = set()

    def walk(v, ptr, seen):
        if v in seen or v not in defs:
            return
        seen.add(v)
        op, ops, ty, loc = defs[v]
        if op in _STOP_OPS:
            return
        if op == "arith.muli" and re.search(r"(^|x)i32>?$", ty):
            for o in map(peel, ops):
                if args.get(o) in ("i32", "i64"):
                    found.add((where(loc), ptr, o.lstrip("%")))
        for o in ops:
            walk(o, ptr, seen)

    for v, (op, ops, _, _) in defs.items():
        if op == "tt.addptr" and "#" not in v:
            for ptr in roots(ops[0], set()):
                if ptr.lstrip("%") not in allowed_ptrs:
                    walk(ops[1], ptr.lstrip("%"), set())
    return sorted(found)


@pytest.fixture(scope="module")
def ttirs():
    rows = compile_in_child(CHILD, json.dumps({f: list(n) for f, n in CHECKED.items()}))
    return rows[0]["ttir"]


def test_checker_flags_32_bit_products(ttirs):
    bad = narrow_offset_products(ttirs["synth_bad"])
    assert [(p, a) for _, p, a in bad] == [("x_ptr", "stride_t")], bad
    assert narrow_offset_products(ttirs["synth_good"]) == []


@pytest.mark.parametrize("fam,name", [(f, n) for f, names in CHECKED.items() for n in names])
def test_no_32_bit_index_times_stride_offsets(ttirs, fam, name):
    assert name in ttirs, f"{name} is no longer in kernels/{fam}.py's COMPILE_SPECS"
    assert "tt.addptr" in ttirs[name]
    bad = narrow_offset_products(ttirs[name], CHECKED[fam][name])
    assert not bad, f"{name}: 32-bit index x stride products feed pointer offsets (line, pointer, factor): {bad}"


# ---- the refusals that bound the 32-bit offsets left ------------------------------------------
def test_fp8_gemm_refuses_scale_views_spanning_2_31_elements(monkeypatch):
    from pygen import ops
    from pygen.ops import fp8 as fp8_ops

    # a [2, 1] scale view whose rows sit 2^31 floats apart would need 8 GiB of address space:
    # lower the limit instead (the check reads shapes and strides only)
    assert fp8_ops.TRITON_SCALE_SPAN == 2**31
    monkeypatch.setattr(fp8_ops, "TRITON_SCALE_SPAN", 4)
    a = torch.zeros((2, 128), dtype=torch.float8_e4m3fn)
    b = torch.zeros((2, 128), dtype=torch.float8_e4m3fn)
    padded = torch.ones(8).as_strided((2, 1), (4, 1))  # spans 5 elements
    with pytest.raises(ValueError, match="a_scales spans 5 elements"):
        ops.fp8_gemm(a, padded, b, torch.ones((1, 1)), backend="triton")
    with pytest.raises(ValueError, match="b_scales spans 5 elements"):
        ops.fp8_gemm_wgrad(a, torch.ones((2, 1)), b, padded, backend="triton")
    ops.fp8_gemm_wgrad(a, torch.ones((2, 1)), b, torch.ones((2, 1)), backend="triton")  # compact: runs


def test_32_bit_spans_are_refused(monkeypatch):
    """The RoI kernels (within one image), the MADE kernels (within a row of x, the weight, the
    mask) and the 1x1 conv (within one sample) compute offsets in int32 from 64-bit bases: the ops
    refuse operands whose part spans more than MAX_SPAN elements, naming the argument, before any
    launch (the limit is lowered here so that small tensors reach it)."""
    from pygen import ops
    from pygen.ops import _common_checks as cc

    monkeypatch.setattr(cc, "MAX_SPAN", 100)
    box = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match=r"input \(one image: C x H x W\) spans 108 elements"):
        ops.roi_align(torch.randn(2, 3, 6, 6), box, 2, backend="reference")
    with pytest.raises(ValueError, match=r"features\[1\] \(one image: C x H x W\) spans 108"):
        ops.multi_scale_roi_align([torch.randn(1, 3, 4, 4), torch.randn(1, 3, 6, 6)], box, 2, [1.0, 0.5])
    assert ops.roi_align(torch.randn(9, 2, 5, 5), box, 2, backend="reference").shape == (1, 2, 2, 2)  # 50 per image

    mask = torch.ones(4, 11, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"x \(one row\) spans 101 elements"):
        ops.masked_linear(
            torch.randn(2, 101), torch.randn(4, 101), mask=torch.ones(4, 101, dtype=torch.bool), backend="triton"
        )
    with pytest.raises(ValueError, match=r"x \(one row\) spans 111 elements"):  # a transposed view: stride 11
        ops.masked_linear(torch.randn(11, 11).t(), torch.randn(4, 11), mask=mask, backend="triton")
    with pytest.raises(ValueError, match="weight spans 110 elements"):
        ops.masked_linear(
            torch.randn(2, 11), torch.randn(10, 11), mask=torch.ones(10, 11, dtype=torch.bool), backend="triton"
        )
    y = ops.masked_linear(torch.randn(2, 11), torch.randn(4, 11), mask=mask, backend="triton")  # 44: runs
    assert y.shape == (2, 4)

    with pytest.raises(ValueError, match=r"x \(one sample\) spans 108 elements"):
        ops.inv_conv1x1(torch.randn(2, 3, 6, 6), torch.eye(3))
