"""The ``pygen`` command: info, bench (quick shapes on CPU), inspect, profile; and the pieces of
pygen.bench_harness / pygen.inspect_kernels they are built from."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pygen import bench_harness as H
from pygen import inspect_kernels as IK
from pygen.cli import main

REQUIRED = ("op", "backend", "mode", "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "gbps",
            "device_name", "torch", "triton", "cuda", "git_sha", "date", "family", "status")


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for text in ("torch", "triton", "backends", "pygen._C", "pygen._cuda", "reference  cpu   yes"):
        assert text in out


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "pygen", "bench", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--quick" in res.stdout


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_bench_quick_cpu_end_to_end(tmp_path, capsys):
    out = tmp_path / "roi.jsonl"
    rc = main(["bench", "roi", "--quick", "--device", "cpu", "--json", str(out),
               "--baseline", "reference", "--baseline", "torchvision"])
    text = capsys.readouterr()
    assert rc == 0, text.out + text.err
    recs = _records(out)
    ops = {r["op"] for r in recs}
    assert ops == {"roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "multi_scale_roi_align"}
    assert {r["mode"] for r in recs} == {"fwd", "fwd+bwd"}
    for r in recs:
        for key in REQUIRED:
            assert key in r, key
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["median_ms"] > 0 and r["gbps"] > 0
        assert r["device_tag"] == H.device_tag(torch.device("cpu"))
        assert r["dtype"] == "float32"
    # the table on stdout and the note about the Triton interpreter
    assert "x reference" in text.out
    assert "interpreter" in text.out
    # every available kernel backend was timed (and so passed its correctness check)
    from pygen import _backend
    for b in _backend.available_backends("cpu"):
        if b in ("cpu",):
            assert any(r["backend"] == f"pygen:{b}" for r in recs)


def test_bench_default_path_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(H, "results_dir", lambda: tmp_path / "results")
    png = tmp_path / "roi.png"
    rc = main(["bench", "roi", "--quick", "--device", "cpu", "--op", "ps_roi_pool", "--mode", "fwd",
               "--mode", "bwd", "--baseline", "reference", "--no-copy", "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    path = tmp_path / "results" / H.device_tag(torch.device("cpu")) / "roi.jsonl"
    recs = _records(path)
    assert recs and all(r["op"] == "ps_roi_pool" for r in recs)
    assert {r["mode"] for r in recs} == {"fwd", "bwd"}
    try:
        import matplotlib  # noqa: F401
        assert png.exists()
    except ImportError:
        assert "matplotlib is not importable" in out


def test_bench_compile_baseline(tmp_path, capsys, monkeypatch):
    """torch.compile of the reference is checked and timed like any implementation."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU Inductor does not need it
    out = tmp_path / "c.jsonl"
    rc = main(["bench", "roi", "--quick", "--device", "cpu", "--op", "roi_pool", "--mode", "fwd",
               "--baseline", "compile", "--json", str(out), "--no-copy"])
    assert rc == 0
    assert "compile(reference)" in capsys.readouterr().out
    assert any(r["backend"] == "compile(reference)" for r in _records(out))


def test_bench_compile_failure_is_skipped_with_reason(tmp_path, capsys, monkeypatch):
    def broken(fn, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("inductor exploded")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    rc = main(["bench", "roi", "--quick", "--device", "cpu", "--op", "ps_roi_pool", "--mode", "fwd",
               "--baseline", "compile", "--baseline", "reference", "--no-save", "--no-copy"])
    out = capsys.readouterr().out
    assert rc == 0  # a baseline failing is reported, not fatal
    assert "RuntimeError: inductor exploded" in out


def test_bench_unknown_family(capsys):
    assert main(["bench", "nope", "--quick", "--device", "cpu"]) == 2


def test_bench_max_time_reports_skips(tmp_path, capsys):
    rc = main(["bench", "roi", "--quick", "--device", "cpu", "--baseline", "reference",
               "--json", str(tmp_path / "x.jsonl"), "--no-copy", "--max-time", "0"])
    assert rc == 0
    assert "exhausted" in capsys.readouterr().out


def test_progress_and_table():
    buf = io.StringIO()
    p = H.Progress(2, stream=buf)
    p.step("a")
    p.step("b")
    p.close()
    assert "2/2" in buf.getvalue()
    rows = [{"op": "o", "shape_label": "s", "dtype": "float32", "mode": "fwd", "backend": b, "kind": k,
             "status": "ok", "median_ms": ms, "p20_ms": ms, "p80_ms": ms, "gbps": 1.0, "correct": True}
            for b, k, ms in (("pygen:cpu", "pygen", 1.0), ("reference", "baseline", 4.0))]
    table = H.format_table(rows)
    assert "x reference" in table
    assert "4.00" in table  # reference / pygen:cpu


def test_timer_stats():
    t = H.time_cpu(lambda: sum(range(1000)), min_reps=5, budget_s=0.01)
    assert t.n >= 5 and t.p20_ms <= t.median_ms <= t.p80_ms


PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z10roi_kernelPKfPf' for 'sm_90a'
ptxas info    : Function properties for _Z10roi_kernelPKfPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 384 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'other' for 'sm_90a'
ptxas info    : Function properties for other
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 368 bytes cmem[0]
"""


def test_parse_ptxas():
    rows = IK.parse_ptxas(PTXAS_SAMPLE)
    assert [r["kernel"] for r in rows] == ["_Z10roi_kernelPKfPf", "other"]
    assert rows[0] == {"kernel": "_Z10roi_kernelPKfPf", "arch": "sm_90a", "registers": 40,
                       "spill_stores": 4, "spill_loads": 12, "stack": 8, "smem": 1024}
    assert rows[1]["registers"] == 12 and rows[1]["smem"] == 0


def _roi_specs():
    try:
        from pygen.kernels import roi as kroi
    except Exception as exc:  # noqa: BLE001
        return None, f"pygen.kernels.roi not importable: {exc}"
    specs = getattr(kroi, "COMPILE_SPECS", None)
    return specs, None if specs else "kernels/roi.py has no COMPILE_SPECS yet"


def test_inspect_triton_roi():
    specs, why = _roi_specs()
    if not specs:
        pytest.skip(why)
    rows = IK.triton_rows(["roi"], limit=3)  # the kernels' own tests compile every spec
    assert len(rows) == min(3, len(specs))
    for r in rows:
        assert r["error"] is None, r
        assert r["source"] == "triton" and r["registers"] and r["registers"] > 0
        assert r["wgmma"] is False  # gathers and scatters, no matmul


def test_inspect_nvcc_roi():
    nvcc = IK.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    assert IK.cu_files(["roi"]), "pygen inspect finds no csrc/roi/*.cu"
    rows = IK.nvcc_rows(["roi"], nvcc=nvcc)
    assert rows
    for r in rows:
        assert r["error"] is None, r
        assert r["registers"] and r["spill_stores"] is not None


def test_inspect_cli(capsys, monkeypatch):
    """The command's plumbing (the compiles themselves are the two tests above)."""
    row = {c: None for c in IK.COLUMNS}
    row.update(source="triton", family="roi", kernel="_k", registers=40, spill_stores=0,
               spill_loads=0, smem=0, wgmma=False, error=None)
    bad = {**row, "source": "nvcc", "kernel": "x.cu", "error": "x.cu(1): error: boom"}
    monkeypatch.setattr(IK, "triton_rows", lambda fams: [row])
    monkeypatch.setattr(IK, "nvcc_rows", lambda fams, **kw: [bad])
    monkeypatch.setattr(IK, "find_nvcc", lambda: "/bin/true")
    assert main(["inspect", "roi"]) == 1
    out = capsys.readouterr().out
    assert "_k" in out and "ERROR: x.cu(1): error: boom" in out
    assert "2 kernels, 1 failed to compile, 0 spill" in out
    assert main(["inspect", "roi", "--no-cuda"]) == 0


def test_profile_quick(capsys):
    assert main(["profile", "faster_rcnn_roi_head", "--quick", "--device", "cpu", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "end-to-end speedup" in out and "agree" in out
    assert "top 5 ops" in out


def test_bench_unknown_baseline_is_an_error(capsys):
    rc = main(["bench", "roi", "--quick", "--device", "cpu", "--baseline", "torchvison", "--no-save", "--no-copy"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown baseline 'torchvison'" in err and "torchvision" in err


def test_bench_reference_failure_is_reported_not_fatal(monkeypatch, capsys):
    """A case whose reference raises in one mode gets error rows for that mode; the run goes on."""
    from pygen import bench_harness as H
    real = H.run_once

    def flaky(impl, inputs, mode):
        if impl.name == "reference" and mode == "fwd+bwd":
            raise RuntimeError("boom")
        return real(impl, inputs, mode)

    monkeypatch.setattr(H, "run_once", flaky)
    rc = main(["bench", "roi", "--quick", "--device", "cpu", "--op", "roi_align", "--no-save", "--no-copy",
               "--baseline", "reference", "--no-progress"])
    out = capsys.readouterr().out
    fwdbwd = [line for line in out.splitlines() if line.startswith("roi_align") and " fwd+bwd " in line]
    fwd = [line for line in out.splitlines() if line.startswith("roi_align") and " fwd " in line]
    assert fwdbwd and all("the reference failed: RuntimeError: boom" in line for line in fwdbwd)
    assert any("pygen:cpu" in line and "ERROR" not in line for line in fwd)    # the fwd mode still ran
    assert rc == 1                                                               # and the run reports it
