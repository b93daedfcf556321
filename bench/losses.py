"""Losses family benchmarks: the LM-head cross-entropy and policy log-probs without logits.

Default shapes (``cases(quick=False)``)
---------------------------------------
GPU: DeepSeek-V3's head, H = 7168, V = 129,280, at N = 8192 tokens (issue 14), bf16.
CPU: N = 2048, H = 1024, V = 32,768 (eager fp32 logits 256 MiB, their gradient as much again): the
eager baseline at the GPU shape would need 8+ GB and tens of minutes on two cores.
Quick: N = 512, H = 256, V = 8192.

Baselines: "eager" is the composition a user would write, F.linear + F.cross_entropy in the input
dtype (pygen.ref.losses.linear_cross_entropy(eager=True)); "reference" the float64-style oracle.

Byte model (E = bytes per element): the floor is reading hidden and the weight once per pass and
writing what must be returned,
    fwd      (N H + V H) E            (+ V E bias, + 16 N row statistics)
    bwd      2 (N H + V H) E          (read both again to recompute, write both gradients)
    fwd+bwd  fwd + bwd
FLOPs: 2 N H V per matmul; forward 1, backward 3 (recompute + two gradient products).

Memory (not a timing: ``python -m pygen.bench.losses --memory`` or ``python bench/losses.py
--memory``, ``--device cuda`` on a GPU): peak extra memory of one forward+backward (CPU: resident,
GPU: allocated), measured in a fresh child process per implementation (see ``peak_extra_bytes``),
against the eager composition; ``pygen bench losses`` prints it after the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

import pygen.ops
import pygen.ref.losses as ref
from pygen.tools.harness import Case, Inputs

FAMILY = "losses"
BACKENDS = ("triton", "cpu")  # no csrc backend: the cpu backend is torch over vocabulary chunks

GPU = {"N": 8192, "H": 7168, "V": 129_280}
CPU = {"N": 2048, "H": 1024, "V": 32_768}
QUICK = {"N": 512, "H": 256, "V": 8192}


def _make(shape, seed):
    def make(device, dtype) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        n, h, v = shape["N"], shape["H"], shape["V"]
        hid = torch.randn(n, h, generator=g).to(device=device, dtype=dtype)
        w = (torch.randn(v, h, generator=g) * h**-0.5).to(device=device, dtype=dtype)
        t = torch.randint(0, v, (n,), generator=g).to(device)
        t[::17] = -100  # padding rows
        return Inputs({"hidden": hid, "weight": w, "targets": t}, [hid, w], torch.ones((), device=device))

    return make


def _bytes(I, mode):
    e = I.hidden.element_size()
    one = (I.hidden.numel() + I.weight.numel()) * e
    return {"fwd": one, "bwd": 2 * one, "fwd+bwd": 3 * one}[mode]


def _ce_case(shape, tag) -> Case:
    def eager():
        return lambda I: ref.linear_cross_entropy(I.hidden, I.weight, I.targets, eager=True)

    return Case(
        FAMILY,
        "linear_cross_entropy",
        tag,
        dict(shape),
        _make(shape, 1),
        lambda I, b: pygen.ops.linear_cross_entropy(I.hidden, I.weight, I.targets, backend=b),
        (ref.linear_cross_entropy, lambda I: (I.hidden, I.weight, I.targets)),
        _bytes,
        "fwd (N H + V H) E; bwd twice that (recompute + gradients)",
        baselines={"eager": eager},
        backends=BACKENDS,
    )


def _log_probs_case(shape, tag) -> Case:
    def tokens(I):
        return I.targets.clamp(min=0)

    return Case(
        FAMILY,
        "linear_log_probs",
        tag,
        dict(shape),
        _make(shape, 2),
        lambda I, b: pygen.ops.linear_log_probs(I.hidden, I.weight, tokens(I), backend=b).sum(),
        (lambda h, w, t: ref.linear_log_probs(h, w, t).sum(), lambda I: (I.hidden, I.weight, tokens(I))),
        _bytes,
        "fwd (N H + V H) E; bwd twice that (recompute + gradients)",
        baselines={
            "eager": lambda: lambda I: torch.log_softmax(I.hidden @ I.weight.T, 1).gather(1, tokens(I)[:, None]).sum()
        },
        backends=BACKENDS,
    )


def cases(quick: bool = False, device: str | torch.device | None = None) -> list[Case]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = QUICK if quick else (GPU if torch.device(device).type == "cuda" else CPU)
    tag = "quick" if quick else ("dsv3-head" if shape is GPU else "cpu")
    cases = [_ce_case(shape, tag), _log_probs_case(shape, tag)] + _grpo_cases(quick, device, shape, tag)
    return cases + _info_nce_cases(quick, device, tag)


# ---- InfoNCE (pygen.ops.info_nce) ---------------------------------------------------------------
# SimCLR's NT-Xent over 2N views and CLIP's symmetric loss over N pairs, d = 512 (a ResNet-50 /
# ViT-B projection width). GPU: 16,384 views (the N >= 8192 regime); CPU and quick smaller.
# The eager baseline materialises the [N, N] similarities (ref.info_nce(eager=True): F.normalize,
# a matmul, F.cross_entropy). Bytes: the embeddings read once per pass (the keys of every tile are
# the same rows), the gradients written once; FLOPs 2 N^2 d per similarity pass.
INFO_NCE = {"gpu": {"N": 16_384, "d": 512}, "cpu": {"N": 4096, "d": 512}, "quick": {"N": 1024, "d": 128}}


def _info_nce_make(shape, seed, pairs: bool):
    def make(device, dtype) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(shape["N"], shape["d"], generator=g).to(device=device, dtype=dtype)
        k = torch.randn(shape["N"], shape["d"], generator=g).to(device=device, dtype=dtype) if pairs else None
        return Inputs({"q": q, "k": k}, [q] if k is None else [q, k], torch.ones((), device=device))

    return make


def _info_nce_bytes(I, mode):
    one = sum(t.numel() * t.element_size() for t in (I.q, I.k) if t is not None)
    return {"fwd": one, "bwd": 2 * one, "fwd+bwd": 3 * one}[mode]


def _info_nce_cases(quick, device, tag) -> list[Case]:
    key = "quick" if quick else ("gpu" if torch.device(device).type == "cuda" else "cpu")
    shape = INFO_NCE[key]

    def case(mode, pairs, opts):
        return Case(
            FAMILY, "info_nce", f"{tag}-{mode}", dict(shape), _info_nce_make(shape, 5, pairs),
            lambda I, b: pygen.ops.info_nce(I.q, I.k, **opts, backend=b),
            (lambda q, k: ref.info_nce(q, k, **opts), lambda I: (I.q, I.k)), _info_nce_bytes,
            "fwd (N d [+ N d]) E; bwd twice that", backends=BACKENDS,
            baselines={"eager": lambda: lambda I: ref.info_nce(I.q, I.k, **opts, eager=True)},
        )  # fmt: skip

    return [case("simclr", False, {"temperature": 0.5}), case("clip", True, {"temperature": 0.07, "symmetric": True})]


# ---- GRPO (pygen.ops.grpo_loss / linear_grpo_loss) ----------------------------------------------
# grpo_loss over [B, T] log-probs: GPU 64 prompts x 16 completions of 8192 tokens (DeepSeek-R1-style
# long completions), CPU and quick smaller. Bytes: the forward reads logp, old, ref (E each), the
# bool mask (1) and writes nothing of size B T; the backward reads them again and writes the
# gradient (E). linear_grpo_loss runs the head shape above as [B, T] = [N / 512, 512].
GRPO = {"gpu": {"B": 1024, "T": 8192}, "cpu": {"B": 64, "T": 4096}, "quick": {"B": 16, "T": 1024}}


def _grpo_make(shape, seed, head=None):
    def make(device, dtype) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        b, t = shape["B"], shape["T"]
        logp = -torch.rand(b, t, generator=g) * 3
        old = logp + 0.1 * torch.randn(b, t, generator=g)
        ref_lp = logp + 0.1 * torch.randn(b, t, generator=g)
        adv = ref.group_advantages(torch.randn(b, generator=g), 16 if b % 16 == 0 else 1)
        mask = torch.arange(t)[None, :] < torch.randint(t // 4, t + 1, (b, 1), generator=g)
        d = {"logp": logp, "old": old, "ref": ref_lp, "adv": adv, "mask": mask}
        d = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in d.items()}
        leaves = [d["logp"]]
        if head is not None:
            hd, v = head["H"], head["V"]
            d["hidden"] = torch.randn(b, t, hd, generator=g).to(device=device, dtype=dtype)
            d["weight"] = (torch.randn(v, hd, generator=g) * hd**-0.5).to(device=device, dtype=dtype)
            d["tokens"] = torch.randint(0, v, (b, t), generator=g).to(device)
            leaves = [d["hidden"], d["weight"]]
        return Inputs(d, leaves, torch.ones((), device=device))

    return make


def _grpo_bytes(I, mode):
    e = I.logp.element_size()
    fwd, bwd = (3 * e + 1) * I.logp.numel(), (4 * e + 1) * I.logp.numel()
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _grpo_args(I):
    return I.logp, I.old, I.ref, I.adv, I.mask


def _linear_grpo_args(I):
    return I.hidden, I.weight, I.tokens, I.old, I.ref, I.adv, I.mask


def _grpo_cases(quick, device, head, tag) -> list[Case]:
    key = "quick" if quick else ("gpu" if torch.device(device).type == "cuda" else "cpu")
    shape = GRPO[key]
    lin = {"B": head["N"] // 512, "T": 512}
    grpo = Case(
        FAMILY, "grpo_loss", tag, dict(shape), _grpo_make(shape, 3),
        lambda I, b: pygen.ops.grpo_loss(*_grpo_args(I), backend=b),
        (ref.grpo_loss, _grpo_args), _grpo_bytes, "fwd (3 E + 1) B T; bwd (4 E + 1) B T", backends=BACKENDS,
    )  # fmt: skip
    linear = Case(
        FAMILY, "linear_grpo_loss", tag, {**lin, "H": head["H"], "V": head["V"]}, _grpo_make(lin, 4, head),
        lambda I, b: pygen.ops.linear_grpo_loss(*_linear_grpo_args(I), backend=b),
        (lambda h, w, t, *rest: ref.grpo_loss(ref.linear_log_probs(h, w, t), *rest), _linear_grpo_args),
        lambda I, mode: _bytes(Inputs({"hidden": I.hidden, "weight": I.weight}, []), mode),
        "as linear_cross_entropy's (the [B, T] GRPO pass is negligible next to the head)", backends=BACKENDS,
    )  # fmt: skip
    return [grpo, linear]


# ---- memory ------------------------------------------------------------------------------------
CHILD = r"""
import json, sys, torch
import pygen.ops, pygen.ref.losses as ref
n, h, v, impl, dtype = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], getattr(torch, sys.argv[5])
op, dev = sys.argv[6], sys.argv[7]
torch.set_num_threads(2)
g = torch.Generator(dev).manual_seed(0)
hid = torch.randn(n, h, generator=g, device=dev).to(dtype).requires_grad_()
w = (torch.randn(v, h, generator=g, device=dev) * h**-0.5).to(dtype).requires_grad_()
t = torch.randint(0, v, (n,), generator=g, device=dev)
if op == "info_nce":  # SimCLR over the n rows of hid (d = h); w is not an input
    w = w[:0].detach().requires_grad_()
    if impl == "eager":
        call = lambda x, _w, _t: ref.info_nce(x, temperature=0.5, eager=True)
    elif impl == "compile":  # torch.compile of the eager [N, N] path
        call = torch.compile(lambda x, _w, _t: ref.info_nce(x, temperature=0.5, eager=True), dynamic=True)
    else:
        call = lambda x, _w, _t: pygen.ops.info_nce(x, temperature=0.5, backend=impl)
elif impl == "eager":
    call = lambda x, w, t: ref.linear_cross_entropy(x, w, t, eager=True)
elif impl == "compile":  # torch.compile of the eager composition; dynamic, so the warm-up compiles it
    call = torch.compile(lambda x, w, t: ref.linear_cross_entropy(x, w, t, eager=True), dynamic=True)
else:
    call = lambda x, w, t: pygen.ops.linear_cross_entropy(x, w, t, backend=impl)
fn = lambda: call(hid, w, t)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
small = (hid[:8].detach().requires_grad_(), w[:64].detach().requires_grad_(), t[:8] % 64)
call(*small).backward()
if dev == "cuda":  # the caching allocator's peak of live tensors (what the call needs, not cached)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
else:
    before = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    fn().backward()
    peak = status("VmHWM:") - before
grads = (hid.numel() + w.numel()) * hid.element_size()
print(json.dumps({"impl": impl, "peak_extra": peak, "grads": grads}))
"""


def peak_extra_bytes(
    n: int, h: int, v: int, impl: str, dtype: str = "float32", op: str = "linear_cross_entropy", device: str = "cpu"
) -> dict:
    """Peak extra resident memory (bytes) of one forward+backward of ``impl`` ("eager", "compile" =
    torch.compile of eager, or a pygen backend) on CPU: in a fresh child process, after the inputs
    are built and a tiny warm-up call has loaded (or compiled) the code paths, the kernel's
    peak-RSS counter (VmHWM) is reset to the current RSS (/proc/self/clear_refs = 5) and read after
    the call; ``grads`` is the size of the gradients the call must return (included in the peak).
    glibc's mmap threshold is fixed at 64 KiB in the child so that freed temporaries leave RSS at
    once (the peak is the live tensors', not the heap's high-water mark).
    ``op`` "info_nce": SimCLR over n rows of width h (``v`` unused), eager = the [n, n] similarities
    materialised. ``device`` "cuda": the same call on the GPU, the figure from the caching
    allocator (max_memory_allocated after reset_peak_memory_stats, minus the memory allocated
    before: live tensors, not the allocator's cache)."""
    args = [str(n), str(h), str(v), impl, dtype, op, device]
    env = dict(os.environ)
    if device == "cpu":
        # glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed, after
        # which freed chunk temporaries stay in the heap and in RSS: the same SimCLR call measured
        # 114-155 MiB from run to run. A fixed threshold (setting it turns the raising off) maps
        # every block of 64 KiB or more on its own and unmaps it when freed, so the peak RSS
        # follows the live tensors, as the GPU figure does (85 MiB, within 0.3 MiB over 4 runs)
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
    res = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(quick: bool, device) -> list[str]:
    """``pygen bench losses``'s memory lines: linear_cross_entropy at the run's shape and SimCLR
    info_nce, each against its eager path (CPU: float32, the child process's peak RSS; GPU: bf16
    and the triton backend, the caching allocator's peak). A measurement that fails is a line
    saying so, not an error: the timings above are already printed."""
    dev = torch.device(device).type
    if dev == "cpu":
        (s, n), dtype, ours = ((QUICK, 1024) if quick else (CPU, 4096)), "float32", "cpu"
    else:
        (s, n), dtype, ours = ((QUICK, 1024) if quick else (GPU, 32_768)), "bfloat16", "triton"
    mib, lines, what_peak = 2**20, [], "peak extra RSS" if dev == "cpu" else "peak extra allocated"
    for op, (a, b, c), what in (
        ("linear_cross_entropy", (s["N"], s["H"], s["V"]), f"N={s['N']} H={s['H']} V={s['V']}"),
        ("info_nce", (n, 512, 1), f"SimCLR N={n} d=512"),
    ):
        try:
            r = {impl: peak_extra_bytes(a, b, c, impl, dtype, op, dev) for impl in ("eager", ours)}
        except (subprocess.CalledProcessError, ValueError) as exc:
            last = ((getattr(exc, "stderr", "") or str(exc)).strip().splitlines() or ["?"])[-1]
            lines.append(f"memory {op} {what} {dtype}: not measured ({last[:160]})")
            continue
        lines.append(
            f"memory {op} {what} {dtype} fwd+bwd, {what_peak}: pygen:{ours} {r[ours]['peak_extra'] / mib:.1f} MiB, "
            f"eager {r['eager']['peak_extra'] / mib:.1f} MiB (both include the {r[ours]['grads'] / mib:.1f} MiB of "
            f"gradients returned)"
        )
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", action="store_true", help="measure peak extra memory (one child process per impl)")
    p.add_argument("--shape", default="cpu", choices=("cpu", "quick", "gpu"), help="gpu: V3's head, N = 8192")
    p.add_argument("--impls", default="eager,cpu", help="comma list of eager, compile and pygen backends")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: the allocator's peak")
    p.add_argument("--info-nce", type=int, metavar="N", help="also SimCLR info_nce over N rows of d = 512")
    args = p.parse_args(argv)
    if not args.memory:
        p.error("use `pygen bench losses` for timings; this entry point measures --memory")
    if args.info_nce:
        for impl in args.impls.split(","):
            r, n = peak_extra_bytes(args.info_nce, 512, 1, impl, args.dtype, "info_nce", args.device), args.info_nce
            print(
                f"info_nce {impl:7s} N={n} d=512 {args.dtype}: peak extra {r['peak_extra'] / 2**20:8.1f} MiB "
                f"(gradients {r['grads'] / 2**20:.1f} MiB, similarities {n**2 * 4 / 2**20:.1f} MiB)"
            )
    s = {"cpu": CPU, "quick": QUICK, "gpu": GPU}[args.shape]
    for impl in args.impls.split(","):
        r = peak_extra_bytes(s["N"], s["H"], s["V"], impl, args.dtype, device=args.device)
        mib, size = 2**20, torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
        print(
            f"{impl:7s} N={s['N']} H={s['H']} V={s['V']} {args.dtype}: peak extra {r['peak_extra'] / mib:8.1f} MiB "
            f"(gradients {r['grads'] / mib:.1f} MiB, logits {s['N'] * s['V'] * size / mib:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
