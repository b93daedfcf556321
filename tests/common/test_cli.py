"""The ``pygen`` command: info, bench (quick shapes on CPU), inspect, profile; and the pieces of
pygen.tools.harness / pygen.tools.inspect they are built from."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pygen.cli import main
from pygen.tools import harness as H, inspect as IK

REQUIRED = (
    "op",
    "backend",
    "mode",
    "shape",
    "dtype",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "gbps",
    "device_name",
    "torch",
    "triton",
    "cuda",
    "git_sha",
    "date",
    "family",
    "status",
)


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for text in ("torch", "triton", "backends", "pygen._C", "pygen._cuda", "reference  cpu   yes"):
        assert text in out


def test_python_dash_m():
    res = subprocess.run(
        [sys.executable, "-m", "pygen", "bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "--quick" in res.stdout


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out


def cli_args(*parts: str | Path) -> list[str]:
    """An argv from command-line text: each str part split on white space, each path one argument."""
    return [w for p in parts for w in (p.split() if isinstance(p, str) else [str(p)])]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_bench_quick_cpu_end_to_end(tmp_path, capsys):
    out = tmp_path / "roi.jsonl"
    rc = main(cli_args("bench roi --quick --device cpu --json", out, "--baseline reference --baseline torchvision"))
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


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401 (probe: skip without matplotlib)

        return True
    except ImportError:
        return False


def test_bench_default_path_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(H, "results_dir", lambda: tmp_path / "results")
    png = tmp_path / "roi.png"
    argv = cli_args(
        "bench roi --quick --device cpu --op ps_roi_pool --mode fwd --mode bwd --baseline reference --no-copy"
    )
    if not _have_matplotlib():  # a missing matplotlib is an argument error, before anything runs
        assert main(argv + ["--plot", str(png)]) == 2
        assert "--plot needs matplotlib" in capsys.readouterr().err
        assert not (tmp_path / "results").exists()
    rc = main(argv + (["--plot", str(png)] if _have_matplotlib() else []))
    out = capsys.readouterr().out
    assert rc == 0
    path = tmp_path / "results" / H.device_tag(torch.device("cpu")) / "roi.jsonl"
    assert f"results: JSON lines appended to {path.parent}/<family>.jsonl" in out
    recs = _records(path)
    assert recs and all(r["op"] == "ps_roi_pool" for r in recs)
    assert {r["mode"] for r in recs} == {"fwd", "bwd"}
    if _have_matplotlib():
        assert png.exists()


def test_bench_compile_baseline(tmp_path, capsys, monkeypatch):
    """torch.compile of the reference is checked and timed like any implementation."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU Inductor does not need it
    out = tmp_path / "c.jsonl"
    rc = main(
        cli_args("bench roi --quick --device cpu --op roi_pool --mode fwd --baseline compile --json", out, "--no-copy")
    )
    assert rc == 0
    assert "compile(reference)" in capsys.readouterr().out
    assert any(r["backend"] == "compile(reference)" for r in _records(out))


def test_bench_compile_failure_is_skipped_with_reason(tmp_path, capsys, monkeypatch):
    def broken(fn, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("inductor exploded")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    rc = main(
        cli_args(
            "bench roi --quick --device cpu --op ps_roi_pool --mode fwd",
            "--baseline compile --baseline reference --no-save --no-copy",
        )
    )
    out = capsys.readouterr().out
    assert rc == 0  # a baseline failing is reported, not fatal
    assert "RuntimeError: inductor exploded" in out


def test_bench_unknown_family(capsys):
    assert main(["bench", "nope", "--quick", "--device", "cpu"]) == 2


def test_bench_max_time_reports_skips(tmp_path, capsys):
    rc = main(
        cli_args(
            "bench roi --quick --device cpu --baseline reference --json", tmp_path / "x.jsonl", "--no-copy --max-time 0"
        )
    )
    assert rc == 0
    assert "exhausted" in capsys.readouterr().out


def test_bench_nothing_measured_exits_2(capsys):
    """Every implementation skipped (flows has no cpu kernel, --no-baselines drops the rest): exit 2
    with the reason, not 0 as if the run had measured something."""
    rc = main(cli_args("bench flows --quick --device cpu --no-baselines --no-save --no-copy --no-progress"))
    captured = capsys.readouterr()
    assert rc == 2
    assert "no pygen kernel on cpu for these ops" in captured.out
    assert "nothing measured" in captured.err


def test_bench_skip_reasons_name_the_op(capsys):
    """A GPU-only op's skip is said once, by the "no pygen kernel" line; no family-wide "moe has no
    cpu implementation" beside moe_route's timed pygen:cpu rows."""
    rc = main(cli_args("bench moe --quick --device cpu --op fused_moe --no-save --no-copy --no-progress"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "no pygen kernel on cpu for these ops (GPU only): fused_moe" in out
    assert "has no cpu implementation" not in out
    cases = H.load_bench_package().load("moe").cases(quick=True, device=torch.device("cpu"))
    case = next(c for c in cases if c.op == "fused_moe")
    assert H.kernel_status(case, "cpu", torch.device("cpu")) == (False, "fused_moe has no cpu implementation")


def test_bench_max_time_finishes_the_started_case(tmp_path, monkeypatch, capsys):
    """--max-time starts no new (case, dtype) but finishes a started one: the deadline passing
    between two implementations timed pygen without its baselines (no ratio), and rows that
    could never run were counted as out of time."""
    import time as real_time
    import types

    calls = {"n": 0}

    def monotonic():  # the deadline passes right after the first (case, dtype) starts
        calls["n"] += 1
        return real_time.monotonic() + (0.0 if calls["n"] <= 1 else 1e6)

    fake = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if not k.startswith("_")})
    fake.monotonic = monotonic
    monkeypatch.setattr(H, "time", fake)
    out = tmp_path / "x.jsonl"
    argv = cli_args("bench roi --quick --device cpu --no-copy --no-progress --json", out)
    assert main(argv + ["--max-time", "100"]) == 0
    rows = _records(out)
    key = lambda r: (r["op"], r["shape_label"], r["dtype"])  # noqa: E731 (one (case, dtype))
    first = [r for r in rows if key(r) == key(rows[0])]
    assert {r["backend"] for r in first if r["status"] == "ok"} >= {"pygen:cpu", "reference"}
    assert first == rows  # nothing after it was measured (JSON keeps measured rows only)
    text = capsys.readouterr().out
    assert "--max-time 100s exhausted" in text
    assert "skipped pygen:triton: Triton on CPU" in text  # its own reason, not counted out of time


def _bench_row(backend, kind, ms, correct):
    """One measured row of a harness table (op "o", shape "s", float32 forward, 1 GB/s)."""
    return {
        "op": "o",
        "shape_label": "s",
        "dtype": "float32",
        "mode": "fwd",
        "backend": backend,
        "kind": kind,
        "status": "ok",
        "median_ms": ms,
        "p20_ms": ms,
        "p80_ms": ms,
        "gbps": 1.0,
        "correct": correct,
    }


def test_progress_and_table():
    buf = io.StringIO()
    p = H.Progress(2, stream=buf)
    p.step("a")
    p.step("b")
    p.close()
    assert "2/2" in buf.getvalue()
    rows = [_bench_row(b, k, ms, True) for b, k, ms in (("pygen:cpu", "pygen", 1.0), ("reference", "baseline", 4.0))]
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
    assert rows[0] == {
        "kernel": "_Z10roi_kernelPKfPf",
        "arch": "sm_90a",
        "registers": 40,
        "spill_stores": 4,
        "spill_loads": 12,
        "stack": 8,
        "smem": 1024,
    }
    assert rows[1]["registers"] == 12 and rows[1]["smem"] == 0


def _roi_specs():
    try:
        from pygen.kernels import roi as kroi
    except Exception as exc:  # noqa: BLE001 (the test reports any failure)
        return None, f"pygen.kernels.roi not importable: {exc}"
    specs = getattr(kroi, "COMPILE_SPECS", None)
    return specs, None if specs else "kernels/roi/__init__.py has no COMPILE_SPECS yet"


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


def _triton_row() -> dict:
    """An inspect row of a Triton kernel that compiled without spills (for the CLI's plumbing)."""
    row = dict.fromkeys(IK.COLUMNS)
    row.update(source="triton", family="roi", kernel="_k", registers=40, spill_stores=0, spill_loads=0, smem=0)
    return {**row, "wgmma": False, "error": None}


def test_inspect_cli(capsys, monkeypatch):
    """The command's plumbing (the compiles themselves are the two tests above)."""
    row = _triton_row()
    bad = {**row, "source": "nvcc", "kernel": "x.cu", "error": "x.cu(1): error: boom"}
    monkeypatch.setattr(IK, "triton_rows", lambda fams: [row])
    monkeypatch.setattr(IK, "nvcc_rows", lambda fams, **kw: [bad])
    monkeypatch.setattr(IK, "find_nvcc", lambda: "/bin/true")
    assert main(["inspect", "roi"]) == 1
    out = capsys.readouterr().out
    assert "_k" in out and "ERROR: x.cu(1): error: boom" in out
    assert "2 kernels, 1 failed to compile, 0 spill" in out
    assert main(["inspect", "roi", "--no-cuda"]) == 0


def test_inspect_json_names_the_triton_version(capsys, monkeypatch, tmp_path):
    """Issue 11: the report says which Triton compiled (CI has 3.9, the GPU machine 3.6) and
    --json writes the rows with that toolchain."""
    import json

    row = _triton_row()
    tc = {"triton": "9.9.9", "ptxas": "ptxas", "ptxas_version": "12.8"}
    monkeypatch.setattr(IK, "triton_rows", lambda fams: [row])
    monkeypatch.setattr(IK, "triton_toolchain", lambda: tc)
    out_path = tmp_path / "sub" / "r.json"
    assert main(["inspect", "roi", "--no-cuda", "--json", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert "Triton 9.9.9 compiles the Triton rows (ptxas 12.8" in out
    rep = json.loads(out_path.read_text())
    assert rep["toolchain"] == tc and rep["rows"][0]["kernel"] == "_k"
    assert rep["rows"][0]["registers"] == 40


def test_user_errors_exit_2_before_the_work(capsys, monkeypatch, tmp_path):
    """Found trying the CLI as a new user: inspect --json into a folder compiled everything and then
    failed with a traceback (exit 1), profile --backend cpu on a model whose ops have no cpu kernel
    failed after its header (exit 1), and info called an unknown PYGEN_BACKEND harmless."""
    monkeypatch.setattr(IK, "triton_rows", lambda fams: pytest.fail("compiled before checking --json"))
    assert main(["inspect", "roi", "--no-cuda", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["profile", "made", "--quick", "--device", "cpu", "--backend", "cpu"]) == 2
    out = capsys.readouterr()
    assert "masked_linear: backend 'cpu' is not implemented" in out.out + out.err
    assert "pygen profile made" not in out.out  # refused before the header
    monkeypatch.setenv("PYGEN_BACKEND", "bogus")
    assert main(["info"]) == 0
    assert "PYGEN_BACKEND=bogus is not a backend" in capsys.readouterr().out


def test_inspect_diff_reports():
    def rep(regs, spills):
        return {
            "rows": [
                {
                    "source": "triton",
                    "family": "f",
                    "kernel": "k",
                    "config": "c",
                    "registers": r,
                    "spill_stores": s,
                    "spill_loads": s,
                    "smem": 0,
                }
                for r, s in zip(regs, spills)
            ]
        }

    assert IK.diff_reports(rep([10, 20], [0, 0]), rep([10, 20], [0, 0])) == []
    d = IK.diff_reports(rep([10, 20], [0, 0]), rep([10, 24], [0, 8]))
    assert len(d) == 1 and d[0]["registers"] == (20, 24) and d[0]["spill_stores"] == (0, 8)


def test_inspect_summary_markdown():
    def rep(version, rows):
        return {
            "toolchain": {"triton": version, "ptxas_version": "12.8"},
            "rows": [
                {
                    "source": "triton",
                    "family": "f",
                    "kernel": k,
                    "config": "c",
                    "registers": r,
                    "spill_stores": s,
                    "spill_loads": s,
                    "smem": m,
                    "wgmma": w,
                    "error": None,
                }
                for k, r, s, m, w in rows
            ],
        }

    md = IK.summary_markdown(
        {
            "a": rep("3.6.0", [("k1", 100, 0, 10, True), ("k2", 250, 0, 0, False)]),
            "b": rep("3.9.0", [("k1", 255, 16, 20, True), ("k2", 200, 0, 0, False)]),
        }
    )
    lines = md.splitlines()
    assert "| 3.6.0 | 12.8 | 2 | 0 | 0 | 1 | 10 |" in lines
    assert "| 3.9.0 | 12.8 | 2 | 0 | 1 | 1 | 20 |" in lines
    assert "| f | `k1` | 100 / 0 | 255 / 16 |" in lines and "| f | `k2` | 250 / 0 | 200 / 0 |" in lines


def test_recorded_inspect_reports():
    """docs/inspect/triton-<version>.json (``pygen inspect --no-cuda --json``) name the Triton that
    made them, were made from today's specs (a retuned tile must be recompiled under every recorded
    release: CI only compiles under the Triton it installs, the GPU machine runs 3.6), every spec
    compiled, and nothing spills under any recorded release."""
    from collections import Counter

    files = sorted((Path(__file__).resolve().parents[2] / "docs" / "inspect").glob("triton-*.json"))
    assert {f.stem for f in files} >= {"triton-3.6", "triton-3.9"}
    current = Counter(IK.triton_spec_keys())
    for f in files:
        rep = json.loads(f.read_text())
        assert rep["toolchain"]["triton"].startswith(f.stem.split("-", 1)[1]), f
        assert rep["rows"] and not [r for r in rep["rows"] if r["error"]], f
        rows = [r for r in rep["rows"] if r["source"] == "triton"]
        recorded = Counter((r["family"], r["kernel"], r["config"], r["constexprs"]) for r in rows)
        assert recorded == current, (
            f.name,
            "stale: regenerate (docs/inspect.md)",
            sorted((recorded - current).elements())[:3],
            sorted((current - recorded).elements())[:3],
        )
        spills = [
            (r["kernel"], r["spill_stores"], r["spill_loads"]) for r in rows if r["spill_stores"] or r["spill_loads"]
        ]
        assert not spills, (f.name, spills)


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
    from pygen.tools import harness as H

    real = H.run_once

    def flaky(impl, inputs, mode):
        if impl.name == "reference" and mode == "fwd+bwd":
            raise RuntimeError("boom")
        return real(impl, inputs, mode)

    monkeypatch.setattr(H, "run_once", flaky)
    rc = main(
        cli_args("bench roi --quick --device cpu --op roi_align --no-save --no-copy --baseline reference --no-progress")
    )
    out = capsys.readouterr().out
    fwdbwd = [line for line in out.splitlines() if line.startswith("roi_align") and " fwd+bwd " in line]
    fwd = [line for line in out.splitlines() if line.startswith("roi_align") and " fwd " in line]
    assert fwdbwd and all("the reference failed: RuntimeError: boom" in line for line in fwdbwd)
    assert any("pygen:cpu" in line and "ERROR" not in line for line in fwd)  # the fwd mode still ran
    assert rc == 1  # and the run reports it


# ---------------------------------------------------------------------------------------------
# issue 10, part 2: arguments checked before anything runs, the CPU default, where results go,
# per-family tables, interruption, and the "no pygen kernel" label
# ---------------------------------------------------------------------------------------------
def _fake_run_case(calls: list, on_call=None):
    """A stand-in for harness.run_case: two timed rows (pygen:cpu, reference) per mode,
    appended to ``out`` like the real one; ``on_call(n, case)`` runs after the first row."""

    def run_case(case, opts, progress=None, log=lambda s: None, out=None):
        rows = out if out is not None else []
        calls.append((case, opts))
        for i, mode in enumerate(opts.modes):
            for name, kind in (("pygen:cpu", "pygen"), ("reference", "baseline")):
                rows.append(
                    {
                        "family": case.family,
                        "op": case.op,
                        "shape_label": case.label,
                        "shape": case.shape,
                        "dtype": "float32",
                        "mode": mode,
                        "backend": name,
                        "kind": kind,
                        "status": "ok",
                        "correct": True,
                        "median_ms": 1.0,
                        "p20_ms": 0.9,
                        "p80_ms": 1.1,
                        "samples": 10,
                        "gbps": 1.0,
                    }
                )
                if on_call and i == 0 and name == "pygen:cpu":
                    on_call(len(calls), case)
        return rows

    return run_case


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if anything is measured (the copy bandwidth, a case, a model)."""

    def boom(*a, **k):
        raise AssertionError("measured something before rejecting the arguments")

    monkeypatch.setattr(H, "measure_copy_gbps", boom)
    monkeypatch.setattr(H, "run_case", boom)
    monkeypatch.setattr(H, "env_info", boom)
    import pygen.tools.profile

    monkeypatch.setattr(pygen.tools.profile, "profile_model", boom)
    monkeypatch.setattr(IK, "triton_rows", boom)
    monkeypatch.setattr(IK, "nvcc_rows", boom)


BAD_BENCH = [
    (["roi", "--quick", "--device", "cpu", "--backend", "cuda"], "--backend cuda runs on a GPU"),
    (["roi", "--device", "cpu", "--backend", "triton"], "--backend triton on cpu"),
    (["roi", "--quick", "--device", "cpu", "--baseline", "nope"], "unknown baseline 'nope'"),
    (["roi", "--quick", "--device", "cpu", "--op", "nope"], "unknown op 'nope' for family roi; known: roi_align"),
    (["nope", "--device", "cpu"], "unknown family 'nope'; known: roi"),
    (["roi", "--device", "cpu", "--max-time", "-1"], "--max-time -1"),
]


@pytest.mark.parametrize("argv,message", BAD_BENCH, ids=[m.split(":")[0][:30] for _, m in BAD_BENCH])
def test_bench_bad_arguments_exit_2_before_measuring(argv, message, nothing_runs, capsys):
    assert main(["bench", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # not even the header
    assert err.startswith("pygen bench: error: ") and message in err


def test_bench_backend_without_kernel_in_selection(nothing_runs, capsys):
    from pygen import _backend

    if not _backend.backend_status("cpu", "cpu")[0]:
        pytest.skip("pygen._C not built: --backend cpu is rejected for that reason instead")
    assert main(["bench", "flows", "--device", "cpu", "--backend", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "none of the selected ops has a pygen cpu kernel" in err


def test_bench_device_cuda_without_gpu(nothing_runs, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "roi", "--device", "cuda"]) == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert main(["profile", "made", "--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_bench_plot_without_matplotlib(nothing_runs, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["bench", "roi", "--device", "cpu", "--plot", str(tmp_path / "x.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--plot needs matplotlib" in err


def test_bench_unwritable_destinations(nothing_runs, tmp_path, capsys):
    assert main(["bench", "roi", "--device", "cpu", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["bench", "roi", "--device", "cpu", "--results-dir", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--quick", "--full"], ["--json", "x.jsonl", "--no-save"], ["--results-dir", "d", "--json", "x.jsonl"]]
)
def test_bench_conflicting_flags(argv, nothing_runs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "roi", "--device", "cpu", *argv])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["profile", "nope"], "unknown model 'nope'"),
        (["profile", "made", "--device", "cpu", "--backend", "cuda"], "--backend cuda runs on a GPU"),
        (["profile", "made", "--device", "cpu", "--backend", "triton"], "--backend triton on cpu"),
        (["profile", "made", "--device", "cpu", "--top", "0"], "--top 0"),
        (["inspect", "nope"], "unknown family 'nope'; known: "),
        (["inspect", "roi", "--jobs", "0"], "--jobs 0"),
    ],
)
def test_profile_inspect_bad_arguments_exit_2(argv, message, nothing_runs, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"pygen {argv[0]}: error: ") and message in err


def test_inspect_knows_every_family():
    assert set(IK.known_families()) >= {"roi", "flows", "made", "mla", "moe", "fp8"}
    assert {fam for fam, _ in IK._kernel_modules(None)} >= {"roi", "flows", "made", "mla", "moe", "fp8"}


def test_bench_cpu_default_shapes_and_baselines(monkeypatch, capsys):
    """CPU default: every family's small shapes, eager baselines; --full: the model-size
    (CPU-scaled) shapes and torch.compile of the reference, only where a pygen kernel runs on the
    CPU (roi, not the GPU-only flows); --compile adds it to the default; --quick: none."""
    pkg = H.load_bench_package()
    cpu = torch.device("cpu")
    for argv, quick, compiled_families in (
        ([], True, set()),
        (["--full"], False, {"roi"}),
        (["--quick"], True, set()),
        (["--compile"], True, {"roi"}),
        (["--full", "--no-compile"], False, set()),
        (["--baseline", "compile"], True, {"roi", "flows"}),
    ):
        calls = []
        monkeypatch.setattr(H, "run_case", _fake_run_case(calls))
        assert main(["bench", "roi", "flows", "--device", "cpu", "--no-save", "--no-copy", "--no-progress", *argv]) == 0
        want = [c.label for f in ("roi", "flows") for c in pkg.load(f).cases(quick=quick, device=cpu)]
        assert [case.label for case, _ in calls] == want, argv
        for case, opts in calls:
            compiled = opts.baselines is None or "compile" in opts.baselines
            assert compiled == (case.family in compiled_families), (argv, case.label, opts.baselines)
            if argv != ["--baseline", "compile"]:
                assert opts.baselines is None or "reference" in opts.baselines
        out = capsys.readouterr().out
        assert ("CPU default" in out) == ("--full" not in argv and "--quick" not in argv), argv
        assert ("--compile adds it" in out) == (argv in ([], ["--quick"])), argv


def test_bench_results_default_outside_source_tree(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(H.RESULTS_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(H, "run_case", _fake_run_case([]))
    committed = H.committed_results_dir()
    before = {p: p.stat().st_size for p in committed.rglob("*")}
    assert main(["bench", "roi", "--device", "cpu", "--no-copy", "--no-progress"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "cache" / "pygen" / "bench" / H.device_tag(torch.device("cpu"))
    assert f"results: JSON lines appended to {folder}/<family>.jsonl" in out
    assert _records(folder / "roi.jsonl")
    assert f"JSON lines appended to {folder / 'roi.jsonl'}" in out
    assert {p: p.stat().st_size for p in committed.rglob("*")} == before
    repo = Path(H.__file__).resolve().parent.parent
    assert repo not in H.results_dir().resolve().parents


def test_bench_results_dir_flag_and_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(H, "run_case", _fake_run_case([]))
    monkeypatch.setenv(H.RESULTS_ENV, str(tmp_path / "env"))
    assert main(["bench", "roi", "--device", "cpu", "--no-copy", "--no-progress"]) == 0
    assert _records(tmp_path / "env" / H.device_tag(torch.device("cpu")) / "roi.jsonl")
    assert (
        main(["bench", "roi", "--device", "cpu", "--no-copy", "--no-progress", "--results-dir", str(tmp_path / "mine")])
        == 0
    )
    assert _records(tmp_path / "mine" / "roi.jsonl")
    assert main(["bench", "roi", "--device", "cpu", "--no-copy", "--no-progress", "--no-save"]) == 0
    assert "no JSON lines written" in capsys.readouterr().out


def test_bench_prints_each_family_table_when_it_finishes(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    seen = []
    monkeypatch.setattr(H, "run_case", _fake_run_case([], lambda n, case: seen.append((case.family, buf.getvalue()))))
    assert main(["bench", "roi", "flows", "--device", "cpu", "--no-save", "--no-copy", "--no-progress"]) == 0
    first_flows = next(text for fam, text in seen if fam == "flows")
    assert "== roi:" in first_flows and "== flows:" not in first_flows
    assert any(line.startswith("roi_align ") and "pygen:cpu" in line for line in first_flows.splitlines())
    assert all(fam == "roi" for fam, text in seen if "== roi:" not in text)


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "SIGTERM"])
def test_bench_interrupt_prints_what_was_measured(how, tmp_path, monkeypatch, capsys):
    import os
    import signal

    def on_call(n, case):
        if n == 2:  # in the middle of the second case, after one of its rows
            if how == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt

    calls = []
    monkeypatch.setattr(H, "run_case", _fake_run_case(calls, on_call))
    term_before = signal.getsignal(signal.SIGTERM)
    out_json = tmp_path / "x.jsonl"
    rc = main(cli_args("bench roi flows --device cpu --json", out_json, "--no-copy --no-progress --mode fwd"))
    out, err = capsys.readouterr()
    assert rc == (143 if how == "SIGTERM" else 130)
    assert len(calls) == 2
    first, second = calls[0][0], calls[1][0]
    table = [line for line in out.splitlines() if line.startswith((first.op + " ", second.op + " "))]
    assert any(first.op in line and "pygen:cpu" in line for line in table)
    assert any(line.startswith(second.op + " ") and "pygen:cpu" in line for line in table)  # partial case
    assert "INTERRUPTED" in out and "== flows" not in out
    assert f"interrupted ({'SIGTERM' if how == 'SIGTERM' else 'SIGINT'})" in err and "not started: flows" in err
    assert len(_records(out_json)) == 3  # case 1 (2 rows) + the row of case 2 measured so far
    assert signal.getsignal(signal.SIGTERM) == term_before


def test_bench_no_pygen_kernel_label(capsys, monkeypatch):
    """A GPU-only op on a CPU: the table says so and has no pygen row of a timing; the baselines
    are not compared with a compile of themselves."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rc = main(cli_args("bench flows --device cpu --op actnorm --mode fwd --no-save --no-copy --no-progress"))
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("actnorm ")]
    assert rows and any("pygen " in line and "no pygen kernel on cpu for this op (GPU only)" in line for line in rows)
    assert not any("pygen:" in line for line in rows)
    assert not any("compile(reference)" in line for line in rows)
    assert any(" reference " in line for line in rows)
    assert "no pygen kernel on cpu for these ops (GPU only): actnorm" in out


def test_kernel_backends_follow_the_family(monkeypatch):
    """Which pygen kernels a bench case times is stated once (harness.kernel_status), for the case's
    family: with pygen._C missing (simulated) the losses' cpu backend (PyTorch code) is still timed,
    so its ops keep the compile baseline, and ``--backend cpu`` is accepted for them, while the native
    families' cpu backend is not."""
    from pygen import _ext
    from pygen.cli import BadArgs, _check_backend, _kernel_backends

    monkeypatch.setitem(_ext._errors, "_C", "ImportError: simulated failed build")
    dev = torch.device("cpu")
    pkg = H.load_bench_package()
    for family, want in (("losses", ["cpu"]), ("roi", [])):
        case = pkg.load(family).cases(quick=True, device=dev)[0]
        assert _kernel_backends(case, dev, None) == want, family
        cpu = next(i for i in H.build_impls(case, dev, baselines=[]) if i.name == "pygen:cpu")
        assert (cpu.fn is not None) == bool(want), (family, cpu.skip)
    _check_backend("cpu", dev, ["roi", "losses"])  # --backend cpu: the losses still run it
    with pytest.raises(BadArgs, match="--backend cpu cannot run on cpu: pygen._C not built"):
        _check_backend("cpu", dev, ["roi"])


def test_no_kernel_rows_unit():
    case = next(c for c in H.load_bench_package().load("flows").cases(quick=True, device="cpu"))
    base = {
        "family": "flows",
        "op": case.op,
        "shape_label": case.label,
        "shape": case.shape,
        "dtype": "float32",
        "mode": "fwd",
    }
    rows = [
        {**base, "backend": "pygen:triton", "kind": "pygen", "status": "skipped", "reason": "interp"},
        {**base, "backend": "reference", "kind": "baseline", "status": "ok", "median_ms": 1.0},
    ]
    from pygen.cli import _with_no_kernel_rows

    shown = _with_no_kernel_rows(case, rows, torch.device("cpu"))
    assert [r["backend"] for r in shown] == ["pygen", "reference"]
    assert shown[0]["reason"] == "no pygen kernel on cpu for this op (GPU only)"
    # with a pygen row that ran, nothing is added
    rows[0].update(status="ok", median_ms=0.5)
    shown = _with_no_kernel_rows(case, rows, torch.device("cpu"))
    assert [r["backend"] for r in shown] == ["pygen:triton", "reference"]


def test_profile_without_pygen_kernel_reports_no_speedup(capsys):
    assert main(["profile", "made", "--quick", "--device", "cpu", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "no pygen kernel on cpu for this model's ops (GPU only)" in out
    assert "end-to-end speedup" not in out and "pygen ops (3 forward passes)" not in out


def test_progress_names_running_step_with_eta():
    now = [0.0]
    buf = io.StringIO()
    p = H.Progress(4, stream=buf, clock=lambda: now[0])
    p.step("roi_align fwd pygen:cpu")
    assert "eta ?" in buf.getvalue()
    now[0] = 10.0
    p.step("roi_align fwd reference")
    now[0] = 20.0
    p.step("roi_pool fwd pygen:cpu")
    last = buf.getvalue().splitlines()[-1]
    # two steps finished in 20 s, two left: 20 s to go
    assert "3/4" in last and "0m20s" in last and "eta 0m20s" in last
    assert last.endswith("running: roi_pool fwd pygen:cpu")


# ---------------------------------------------------------------------------------------------
# Timing statistics (issue 10 part 3): interleaving, paired-ratio CIs and verdicts, the legend,
# the speedup plot, and baselines that compute something else. No wall-clock assertions.
# ---------------------------------------------------------------------------------------------
def _timing_from(samples):
    return H._cpu_timing(list(samples))


def test_median_ci_ranks():
    assert H.median_ci_ranks(5) is None  # even [min, max] covers < 95%
    assert H.median_ci_ranks(6) == (1, 6)
    assert H.median_ci_ranks(10) == (2, 9)  # 97.9% coverage
    k, k2 = H.median_ci_ranks(40)
    assert k2 == 41 - k and 12 <= k <= 15


def test_ratio_verdicts_on_synthetic_samples():
    import random

    rng = random.Random(0)
    # a clear 3x: the baseline takes 3 ms, the impl 1 ms, both with 5% jitter
    impl = [1.0 * (1 + 0.05 * rng.uniform(-1, 1)) for _ in range(20)]
    base = [3.0 * (1 + 0.05 * rng.uniform(-1, 1)) for _ in range(20)]
    st = H.ratio_stats(_timing_from(impl), _timing_from(base))
    assert st["verdict"] == "faster" and not st["wide"]
    assert 2.7 < st["lo"] <= st["ratio"] <= st["hi"] < 3.3 and st["n"] == 20
    cell = H.format_ratio(st)
    assert cell.endswith(" faster") and abs(float(cell.split()[0]) - 3.0) < 0.1 and "[" in cell
    # the same pair the other way round
    assert H.ratio_stats(_timing_from(base), _timing_from(impl))["verdict"] == "slower"
    # a lost 16 ms time slice spoils one pair, not the result: 3 hits on each side of 20 pairs
    hit_impl = [x + 16 if i in (1, 7, 13) else x for i, x in enumerate(impl)]
    hit_base = [x + 16 if i in (4, 10, 16) else x for i, x in enumerate(base)]
    st = H.ratio_stats(_timing_from(hit_impl), _timing_from(hit_base))
    assert st["verdict"] == "faster" and 2.7 < st["lo"] and st["hi"] < 3.3
    # a noisy pair: the same typical cost, each call scattered over a factor of ~e either way
    a = [rng.lognormvariate(0, 1) for _ in range(20)]
    b = [rng.lognormvariate(0, 1) for _ in range(20)]
    st = H.ratio_stats(_timing_from(a), _timing_from(b))
    assert st["verdict"] == "noisy" and st["lo"] < 1 < st["hi"]
    cell = H.format_ratio(st)
    assert cell.startswith("noisy [")  # the interval, no ratio
    # the same speed within a few %: "~"
    c = [1.0 * (1 + 0.02 * rng.uniform(-1, 1)) for _ in range(20)]
    d = [1.0 * (1 + 0.02 * rng.uniform(-1, 1)) for _ in range(20)]
    assert H.ratio_stats(_timing_from(c), _timing_from(d))["verdict"] == "~"
    # the verdict thresholds: a difference under 10% is no verdict, however tight its interval
    assert H.verdict(1.02, 1.08) == "~" and H.verdict(0.93, 0.98) == "~"
    assert H.verdict(1.12, 1.3) == "faster" and H.verdict(0.5, 0.85) == "slower"
    assert H.verdict(0.7, 1.05) == "noisy" and H.verdict(None, None) == "noisy"
    # too few pairs for any interval
    st = H.ratio_stats(_timing_from([1, 1, 1, 1]), _timing_from([3, 3, 3, 3]))
    assert st["verdict"] == "noisy" and H.format_ratio(st) == "noisy (n=4)"
    # clearly faster but too spread to size: the direction is printed, the ratio is not
    e = [1.0] * 10
    f = [2.0, 2.5, 3, 4, 5, 8, 9, 12, 20, 30]
    st = H.ratio_stats(_timing_from(e), _timing_from(f))
    assert st["verdict"] == "faster" and st["wide"]
    assert H.format_ratio(st).startswith("faster, noisy [")
    # unpaired (GPU do_bench quantiles): the p20/p80 interval
    g = H.Timing(1.0, 0.95, 1.05, None, "do_bench")
    h = H.Timing(4.0, 3.9, 4.1, None, "do_bench")
    st = H.ratio_stats(g, h)
    assert st["method"] == "p20-p80" and st["verdict"] == "faster" and abs(st["ratio"] - 4) < 1e-9


def test_interleaved_order_and_pairing():
    assert H.interleaved_order(2, 3) == [0, 1, 1, 0, 0, 1]
    assert H.interleaved_order(3, 3) == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    log = []

    def call(name):
        return (lambda: log.append(name)), (lambda: log.append("reset " + name))

    ts = H.time_cpu_interleaved(
        [call("A"), call("B"), call("C")], min_rounds=4, max_rounds=4, budget_s=0.0, max_total_s=60.0
    )
    calls = [x for x in log if not x.startswith("reset")]
    assert calls == ["A", "B", "C", "B", "C", "A", "C", "A", "B", "A", "B", "C"]
    # every call is preceded by its own reset, outside the timed region
    assert all(log[i] == "reset " + log[i + 1] for i in range(0, len(log), 2))
    assert [t.n for t in ts] == [4, 4, 4] and all(len(t.samples_ms) == 4 for t in ts)
    assert len({t.timer for t in ts}) == 1 and ts[0].timer in ("thread_time", "perf_counter")


def test_interleaving_goes_on_until_settled():
    seen = []

    def settled(samples):
        seen.append(len(samples[0]))
        return len(samples[0]) >= 7

    noop = (lambda: None, lambda: None)
    ts = H.time_cpu_interleaved(
        [noop, noop], min_rounds=3, max_rounds=50, budget_s=0.0, max_total_s=60.0, settled=settled
    )
    assert ts[0].n == 7 and seen[0] == 3


def test_table_legend_and_units():
    rows = [
        _bench_row(b, k, ms, ok)
        for b, k, ms, ok in (
            ("pygen:cpu", "pygen", 1.0, True),
            ("reference", "baseline", 4.0, True),
            ("torch.matmul", "baseline", 0.5, False),
        )
    ]
    table = H.format_table(rows)
    head = table.splitlines()[0]
    assert "p20 ms" in head and "p80 ms" in head and "x torch.matmul" in head
    assert "torch.matmul (!)" in table
    assert "legend:" in table and "(!)" in table.split("legend:")[1]
    assert "faster" in table and "noisy" in table.split("legend:")[1]
    assert "legend:" not in H.format_table(rows, legend=False)


def test_bench_prints_threads_and_legend(capsys):
    rc = main(
        cli_args(
            "bench roi --quick --device cpu --op ps_roi_pool --mode fwd",
            "--baseline reference --no-save --no-copy --no-progress --threads 1",
        )
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "threads: 1 " in out and "load average" in out
    assert "legend:" in out and "x reference" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("ps_roi_pool") and "pygen:cpu" in ln)
    assert any(v in line for v in ("faster", "slower", " ~", "noisy"))


def test_plot_speedup_per_family_with_labels(tmp_path):
    pytest.importorskip("matplotlib")
    base = {"shape_label": "s", "dtype": "float32", "p20_ms": 1.0, "p80_ms": 1.0, "status": "ok"}
    rows = [
        {
            **base,
            "family": "roi",
            "op": "roi_align",
            "mode": "fwd",
            "backend": "pygen:cpu",
            "kind": "pygen",
            "median_ms": 1.0,
            "vs": {
                "torchvision": {
                    "ratio": 3.0,
                    "lo": 2.8,
                    "hi": 3.2,
                    "n": 20,
                    "method": "paired",
                    "verdict": "faster",
                    "wide": False,
                },
                "reference": {
                    "ratio": 9.0,
                    "lo": 8.0,
                    "hi": 10.0,
                    "n": 20,
                    "method": "paired",
                    "verdict": "faster",
                    "wide": False,
                },
            },
        },
        {
            **base,
            "family": "roi",
            "op": "roi_align",
            "mode": "fwd",
            "backend": "torchvision",
            "kind": "baseline",
            "median_ms": 3.0,
        },
        {
            **base,
            "family": "roi",
            "op": "roi_align",
            "mode": "fwd",
            "backend": "reference",
            "kind": "baseline",
            "median_ms": 9.0,
        },
        {
            **base,
            "family": "flows",
            "op": "actnorm",
            "mode": "fwd",
            "backend": "pygen:cpu",
            "kind": "pygen",
            "median_ms": 1.0,
            "vs": {
                "reference": {
                    "ratio": 1.3,
                    "lo": 0.4,
                    "hi": 5.0,
                    "n": 20,
                    "method": "paired",
                    "verdict": "noisy",
                    "wide": True,
                }
            },
        },
        {
            **base,
            "family": "flows",
            "op": "actnorm",
            "mode": "fwd",
            "backend": "reference",
            "kind": "baseline",
            "median_ms": 1.3,
        },
    ]
    entries = H.plot_entries(rows)
    assert list(entries) == ["roi", "flows"]  # one panel per family
    assert [e["label"].split("  ")[1] for e in entries["roi"]] == ["pygen:cpu vs torchvision"]
    assert entries["roi"][0]["text"].startswith("3.00x [2.80-3.20] faster")
    assert entries["flows"][0]["text"].startswith("noisy [")
    fig = H._plot_figure(rows)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("3.00x") for t in texts) and any(t.startswith("noisy") for t in texts)
    assert all(ax.get_xscale() == "log" for ax in fig.axes)  # log-ratio axis, 1x marked
    assert H.plot_entries(rows, baseline="reference")["roi"][0]["text"].startswith("9.00x")
    png = tmp_path / "speedup.png"
    assert H.plot(rows, png) == f"plot written to {png}" and png.stat().st_size > 0


def _toy_case(**kw):
    def make(device, dtype):
        x = torch.linspace(-2, 2, 64, dtype=dtype, device=device)
        return H.Inputs({"x": x}, [x], torch.ones_like(x))

    return H.Case(
        "toy",
        "double",
        "s",
        {},
        make,
        lambda I, b: I.x * 2,
        (lambda x: x * 2, lambda I: (I.x,)),
        lambda I, m: 512,
        "512",
        backends=("cpu",),
        **kw,
    )


def test_baseline_that_computes_something_else_is_not_timed():
    from pygen import _backend

    if not _backend.backend_status("cpu", "cpu")[0]:
        pytest.skip("pygen._C not built")
    case = _toy_case(
        baselines={"wrong": lambda: lambda I: I.x * 3, "half": lambda: lambda I: (I.x * 2 + 1e-3).half().float()},
        approximate={"half": "the same op rounded through float16"},
    )
    opts = H.BenchOptions(
        device=torch.device("cpu"),
        dtypes=[torch.float32],
        modes=["fwd"],
        backends=["cpu"],
        baselines=["reference", "wrong", "half"],
        cpu_budget_s=0.0,
        cpu_min_reps=1,
        cpu_min_rounds=6,
        cpu_max_total_s=0.2,
    )
    notes = []
    rows = {r["backend"]: r for r in H.run_case(case, opts, log=notes.append)}
    assert rows["wrong"]["status"] == "mismatch" and "median_ms" not in rows["wrong"]
    assert "not timed" in rows["wrong"]["reason"] and any("wrong" in n and "not timed" in n for n in notes)
    assert rows["half"]["status"] == "ok" and rows["half"]["correct"] is False
    assert "float16" in rows["half"]["approximate"]
    # the ratio columns: pygen vs each timed baseline, never vs the mismatching one
    assert set(rows["pygen:cpu"]["vs"]) == {"reference", "half"}
    assert rows["pygen:cpu"]["vs"]["reference"]["n"] == rows["pygen:cpu"]["samples"] >= 6


@pytest.mark.parametrize("op", ["fp8_linear", "quantize_fp8_1x128"])
def test_fp8_compile_baseline_computes_the_reference(op):
    """compile(reference) of fp8_linear used to compile the quantised forward alone, so autograd
    differentiated through the e4m3 cast (whose backward rounds the gradient to e4m3 unscaled):
    dW off by 164. The function it compiles now has the recipe's straight-through backward; checked
    eagerly here (torch.compile adds nothing to what is computed, and takes a minute on 2 cores)."""
    case = next(c for c in H.load_bench_package().load("fp8").cases(quick=True, device="cpu") if c.op == op)
    inputs = case.make_inputs(torch.device("cpu"), torch.float32)
    expected = H.run_once(H.reference_impl(case), inputs, "fwd+bwd")
    fn, args = case.reference
    ok, err = H.check(
        case, H.Impl("eager(reference fn)", "baseline", lambda I: fn(*args(I))), inputs, "fwd+bwd", expected
    )
    assert ok and err < 1e-3, err


def test_cpu_clock_choice():
    """With one torch thread the caller's CPU time is used, unless the work ran on another thread."""
    import threading
    import time

    def spin():
        t_end = time.thread_time() + 0.002
        while time.thread_time() < t_end:
            pass

    def elsewhere():
        t = threading.Thread(target=spin)
        t.start()
        t.join()

    before = torch.get_num_threads()
    try:
        H.set_cpu_threads(1)
        wall, cpu = [[3.0, 9.0, 2.5]], [[2.0, 2.1, 2.0]]  # descheduled for a while: wall > CPU
        assert H._pick_clock(wall, cpu, [6.1], "auto") == (cpu, "thread_time")
        assert H._pick_clock(wall, cpu, [12.0], "auto") == (wall, "perf_counter")  # others worked
        assert H._pick_clock(wall, cpu, [12.0], "thread_time")[1] == "thread_time"
        # a real call whose work runs on another thread (a background thread of the process
        # could flip a same-thread measurement to perf_counter too, so that one is not asserted)
        away = H.time_cpu_interleaved([(elsewhere, lambda: None)], min_rounds=3, max_rounds=3, budget_s=0.0)
        assert away[0].timer == "perf_counter" and away[0].wall_median_ms is None
        forced = H.time_cpu_interleaved(
            [(spin, lambda: None)], min_rounds=3, max_rounds=3, budget_s=0.0, timer="thread_time"
        )
        assert forced[0].timer == "thread_time" and forced[0].wall_median_ms is not None
        H.set_cpu_threads(2)
        assert H._pick_clock(wall, cpu, [6.1], "auto")[1] == "perf_counter"
    finally:
        torch.set_num_threads(before)


def test_gpu_timing_path_unpaired(monkeypatch):
    """On a GPU each implementation is timed alone with do_bench (time_cuda, stubbed here: no GPU
    needed) and the ratios use the unpaired p20/p80 interval."""
    calls = []

    def fake_time_cuda(fn, grad_to_none=None, *, allow_cudagraph=True, rep_ms=100):
        fn()
        calls.append(fn)
        ms = 1.0 if len(calls) == 1 else 5.0
        return H.Timing(ms, 0.95 * ms, 1.05 * ms, None, "do_bench")

    monkeypatch.setattr(H, "time_cuda", fake_time_cuda)
    case = _toy_case(baselines={"slow": lambda: lambda I: I.x * 2})
    case.make_inputs = lambda device, dtype: _toy_case().make_inputs(torch.device("cpu"), dtype)
    opts = H.BenchOptions(
        device=torch.device("cuda"), dtypes=[torch.float32], modes=["fwd"], baselines=["reference", "slow"]
    )
    rows = {r["backend"]: r for r in H.run_case(case, opts) if r.get("median_ms")}
    assert set(rows) == {"reference", "slow"} and len(calls) == 2
    st = rows["reference"]["vs"]["slow"]
    assert st["method"] == "p20-p80" and st["n"] is None and st["verdict"] == "faster"
    assert rows["reference"]["timer"] == "do_bench" and rows["reference"]["samples"] is None


def test_a_baseline_whose_pygen_import_fails_is_an_error_not_a_skip():
    """A baseline that is absent here (an optional package) is a skipped row; one whose import of
    pygen's own modules fails is a bug and raises (it was reported as a skip)."""
    from types import SimpleNamespace

    def missing():
        raise ModuleNotFoundError("No module named 'vllm'", name="vllm")

    def broken():
        raise ImportError("cannot import name 'gone'", name="pygen.integrations._patched")

    case = SimpleNamespace(baselines={"vllm": missing, "hf": broken})
    (impl,) = H.build_impls(case, torch.device("cpu"), backends=(), baselines=["vllm"])
    assert impl.fn is None and "vllm" in impl.skip
    with pytest.raises(ImportError, match="cannot import name 'gone'"):
        H.build_impls(case, torch.device("cpu"), backends=(), baselines=["hf"])


def test_compiled_reference_rows_run_compiled_code(monkeypatch):
    """Cases share reference functions (one for every MLA decode case): past dynamo's recompile
    limit the compile(reference) rows of the later cases ran eager code under that label (0 graph
    runs from the fifth quick decode case on). Each case now starts from a fresh dynamo cache."""
    import collections

    from pygen.bench import mla

    runs = collections.Counter()
    real = torch.compile

    def counting(fn, **kw):
        def backend(gm, example_inputs):
            def run(*a):
                runs["graphs"] += 1
                return gm.forward(*a)

            return run

        return real(fn, backend=backend)

    monkeypatch.setattr(torch, "compile", counting)
    decode = [c for c in mla.cases(quick=True, device=torch.device("cpu")) if c.op == "mla_decode"]
    assert len(decode) >= 8
    for case in decode:
        (impl,) = [i for i in H.build_impls(case, torch.device("cpu"), baselines=["compile"]) if i.fn]
        for dtype in (torch.float32, torch.bfloat16):
            inputs = case.make_inputs(torch.device("cpu"), dtype)
            before = runs["graphs"]
            impl.fn(inputs)
            assert runs["graphs"] > before, (case.label, dtype)
    torch._dynamo.reset()


def test_cpu_copy_ceiling_copies_the_size_it_names(monkeypatch):
    """The printout says "read+write of a <copy_bytes> MiB tensor copy": the CPU path copied a
    quarter of that (nbytes // 16 float32 elements), so a cache-resident copy was labelled as a
    4x larger one."""
    import types

    monkeypatch.setattr(H, "time_cpu", lambda fn, **kw: (fn(), types.SimpleNamespace(min_ms=1.0))[1])
    gbps = H.measure_copy_gbps(torch.device("cpu"), nbytes=1 << 20)
    assert gbps == pytest.approx(2 * (1 << 20) / 1e-3 / 1e9)  # read + write of 1 MiB in 1 ms
