"""Triton backend of the DeepSeek-V3 block-scaled FP8 family: quantisation (kernels/fp8/quant.py)
and the FP8 GEMMs (kernels/fp8/gemm.py). Semantics are pygen.ref.fp8's (the float64 oracle and
the per-K-block float32 recipe); the launcher contract is docs/ARCHITECTURE.md's: launchers take
tensors, allocate nothing and return None; pygen/ops/fp8.py validates and allocates.

Launchers
---------
    quantize_1x128_fwd(x, q, s, ue8m0, precast=None)     x [M, K] -> q [M, K] e4m3, s [M, K/128]
    quantize_128x128_fwd(w, q, s, ue8m0, precast=None)   w [N, K] -> q, s [ceil(N/128), K/128]
    fp8_gemm_fwd(a, sa, b, sb, bias, out, b_block, cfg)  out [M, N] = A B^T, scaled per K block
    fp8_gemm_grouped_fwd(a, sa, b, sb, m_indices, out, cfg)   contiguous MoE layout
Every tensor is read through its strides (the scale layouts of pygen.ref.fp8, transposed views
of B for the input gradient). ``precast`` (float32, like x) receives the clamped x / s values
before the fp8 cast: a debug output for the interpreter tests (docs/fp8.md: its fp8 cast is
wrong, so CPU tests check the arithmetic there and the cast on a GPU). When ``cfg.split_k > 1``
``out`` must be a zeroed float32 tensor (split-K partials are added with atomics).

Tile configurations: one per shape class (``gemm_config``), no autotuning (one config is also
what the interpreter can run). See docs/fp8.md for the table and the reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from .._compile_spec import compile_spec
from .._device import on_tensor_device
from .gemm import _fp8_gemm_fwd_kernel
from .quant import QUANT_BLOCK_ROWS, _quantize_1x128_fwd_kernel, _quantize_128x128_fwd_kernel, quant_compile_specs  # noqa: F401 (re-export for COMPILE_SPECS and the ops layer)

NUM_SMS_H100 = 132
BLOCK = 128


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    swap_ab: bool = False
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 4
    num_programs: int | None = None  # persistent grid size; None: min(units, SMs x CTAs per SM)


def _num_sms(device) -> int:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(dev).multi_processor_count
    return NUM_SMS_H100  # the interpreter runs the schedule an H100/H200 would


def gemm_config(m: int, n: int, k: int, *, grouped: bool = False, device: str | torch.device = "cuda") -> GemmConfig:
    """The tile configuration for one shape class (docs/fp8.md, "Tile configurations").

    decode      M <= 64        swap A/B: weight rows are the wgmma M side (64), tokens the N side
    small       64 < M <= 256  64 x 128 tiles, 4 warps (one warpgroup)
    large       M > 256        128 x 128 tiles, 8 warps (two warpgroups), 3 stages of 32 KB
    grouped     MoE            128 x 128 (the M tile is the contiguous layout's alignment)
    Split-K is added when the tiles fill less than half the SMs and each split keeps >= 4 K blocks,
    unless deterministic algorithms are on (its atomics add in run-to-run order).
    """
    sms = _num_sms(device)
    kb = max(k // BLOCK, 1)
    if grouped:
        cfg = GemmConfig(128, 128, num_warps=8, num_stages=3)
    elif m <= 64:
        bm = max(16, triton.next_power_of_2(m))
        cfg = GemmConfig(bm, 64, swap_ab=True, num_warps=4, num_stages=5 if bm <= 32 else 4)
    elif m <= 256:
        cfg = GemmConfig(64, 128, num_warps=4, num_stages=4)
    else:
        cfg = GemmConfig(128, 128, num_warps=8, num_stages=3)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    split = 1
    # split-K adds float32 partials with atomics (run-to-run order): not under
    # torch.use_deterministic_algorithms(True)
    if not grouped and tiles * 2 <= sms and not torch.are_deterministic_algorithms_enabled():
        split = max(1, min(sms // tiles, kb // 4))
    return GemmConfig(cfg.block_m, cfg.block_n, cfg.swap_ab, split, cfg.group_m, cfg.num_warps, cfg.num_stages)


# Hopper SM (H100 / H200): 64K 32-bit registers, allocated per warp in units of 256; 228 KB of
# shared memory of which each resident CTA also reserves 1 KB; 2048 threads.
SM_REGS, SM_SMEM, CTA_SMEM_RESERVED, SM_THREADS = 65536, 233472, 1024, 2048


def ctas_per_sm(n_regs: int, smem: int, num_warps: int) -> int:
    """How many CTAs of a compiled kernel (``n_regs`` registers per thread, ``smem`` bytes of
    shared memory) one SM holds at once. Two or more resident programs of the persistent GEMM
    overlap one's per-128-K promotion (CUDA-core FMAs after a wgmma wait) with the other's wgmma,
    the overlap DeepGEMM gets from its second math warpgroup: the 64 x 128 / 4-warp tile (~230
    registers, 98.8 KB) fits 2 per SM, the swap-AB decode tile (~167, 64 KB) 3, the 128 x 128 /
    8-warp tile (~218, 96 KB) 1 (docs/fp8.md)."""
    per_warp = -(-max(n_regs, 1) * 32 // 256) * 256
    by_regs = SM_REGS // (per_warp * num_warps)
    by_smem = SM_SMEM // (smem + CTA_SMEM_RESERVED)
    by_threads = SM_THREADS // (32 * num_warps)
    return max(1, min(by_regs, by_smem, by_threads))


_OCCUPANCY: dict[tuple, int] = {}
OCCUPANCY_ERRORS: list[str] = []  # why a probe fell back to 1 (a GPU test asserts it stays empty)


def _occupancy(args: tuple, kwargs: dict, device: torch.device) -> int:
    """CTAs per SM of the kernel these launch arguments compile to (measured once per
    specialisation from its register count and shared memory). 1 where it cannot be read: the
    interpreter, or a Triton without ``warmup``."""
    if device.type != "cuda":
        return 1
    key = (
        (device.index,)
        + tuple(sorted(kwargs.items()))
        + tuple(
            str(a.dtype) if isinstance(a, torch.Tensor) else (a % 16 == 0 if isinstance(a, int) else type(a).__name__)
            for a in args
        )
    )
    if key not in _OCCUPANCY:
        try:
            kern = _fp8_gemm_fwd_kernel.warmup(*args, grid=(1,), **kwargs)
            kern._init_handles()
            _OCCUPANCY[key] = ctas_per_sm(int(kern.n_regs), int(kern.metadata.shared), kwargs["num_warps"])
        except Exception as exc:  # noqa: BLE001 (private Triton API: fall back to one CTA per SM)
            OCCUPANCY_ERRORS.append(f"{type(exc).__name__}: {exc}")
            _OCCUPANCY[key] = 1
    return _OCCUPANCY[key]


def _dummy(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((1,), dtype=torch.int32)


USE_TMA = True  # module switch (tests turn it off to cover the pointer path)


def _tma_2d(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` ([M, K] or [E, N, K], unit stride along K) as the 2-D view a TMA descriptor takes, or
    None where TMA cannot address it: the base and the row stride must be 16-byte aligned, the
    experts of a 3-D B back to back, the rows within TMA's int32 coordinates."""
    if t.dim() == 3:
        e, n, k = t.shape
        if t.stride(0) != n * t.stride(1):
            return None
        t = t.as_strided((e * n, k), (t.stride(1), t.stride(2)))
    ok = (
        t.stride(-1) == 1
        and t.data_ptr() % 16 == 0
        and (t.stride(0) * t.element_size()) % 16 == 0
        and t.shape[0] < 2**31
    )
    return t if ok else None


def _descriptors(a, b, cfg: GemmConfig):
    """(a_desc, b_desc) host TMA descriptors for tiles of [BLOCK_M or BLOCK_N, 128], or (None, None)
    for the pointer path (no descriptor support, or an operand TMA cannot address)."""
    if not USE_TMA:
        return None, None
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None, None
    a2, b2 = _tma_2d(a), _tma_2d(b)
    if a2 is None or b2 is None:
        return None, None
    return (
        TensorDescriptor.from_tensor(a2, [cfg.block_m, BLOCK]),
        TensorDescriptor.from_tensor(b2, [cfg.block_n, BLOCK]),
    )


def _launch(a, sa, b, sb, bias, out, mi, b_block: int, cfg: GemmConfig):
    m, k = a.shape
    n = b.shape[-2]
    grouped = mi is not None
    e = b.shape[0] if grouped else 1
    units = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n) * cfg.split_k
    sbe = sb.stride(0) if grouped else 0
    be = b.stride(0) if grouped else 0
    args = [
        a,
        sa,
        b,
        sb,
        bias if bias is not None else _dummy(a),
        out,
        mi if grouped else _dummy(a),
        m,
        n,
        k,
        e,
        a.stride(0),
        a.stride(1),
        sa.stride(0),
        sa.stride(1),
        be,
        b.stride(-2),
        b.stride(-1),
        sbe,
        sb.stride(-2),
        sb.stride(-1),
        out.stride(0),
        out.stride(1),
    ]
    a_desc, b_desc = _descriptors(a, b, cfg)
    kwargs = dict(
        B_BLOCK=b_block,
        HAS_BIAS=bias is not None,
        GROUPED=grouped,
        SWAP_AB=cfg.swap_ab,
        SPLIT_K=cfg.split_k,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        GROUP_M=cfg.group_m,
        USE_TMA=a_desc is not None,
        UPCAST=not a.is_cuda,  # the interpreter's bf16 stores round in float32 first (kernels/_bf16.py)
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    with on_tensor_device(a):
        if cfg.num_programs:
            progs = min(units, cfg.num_programs)
        else:
            # the probe compiles with num_programs = the SM count; the launch may specialise on
            # its own count (1, or a multiple of 16) with the same tile and about the same registers
            sms = _num_sms(a.device)
            progs = min(units, sms * _occupancy((*args, sms, a_desc, b_desc), kwargs, a.device))
        _fp8_gemm_fwd_kernel[(max(1, progs),)](*args, max(1, progs), a_desc, b_desc, **kwargs)


def fp8_gemm_fwd(
    a: Tensor, sa: Tensor, b: Tensor, sb: Tensor, bias: Tensor | None, out: Tensor, b_block: int, cfg: GemmConfig
) -> None:
    """out [M, N] = (A * sa) (B * sb)^T (+ bias); see the module docstring."""
    _launch(a, sa, b, sb, bias, out, None, b_block, cfg)


def fp8_gemm_grouped_fwd(
    a: Tensor, sa: Tensor, b: Tensor, sb: Tensor, m_indices: Tensor, out: Tensor, cfg: GemmConfig
) -> None:
    """Contiguous-layout grouped GEMM (pygen/ops/fp8.py states the m_indices contract)."""
    if cfg.swap_ab or cfg.block_m != BLOCK:
        raise ValueError("fp8_gemm_grouped_fwd: the contiguous layout needs BLOCK_M = 128 without swap")
    _launch(a, sa, b, sb, None, out, m_indices, BLOCK, cfg)


def _quantize(
    kernel, grid: tuple[int], x: Tensor, q: Tensor, s: Tensor, ue8m0: bool, precast: Tensor | None, **kw
) -> None:
    with on_tensor_device(x):
        kernel[grid](
            x,
            q,
            s,
            precast if precast is not None else q,
            x.shape[0],
            *x.stride(),
            *q.stride(),
            *s.stride(),
            UE8M0=ue8m0,
            WRITE_PRECAST=precast is not None,
            ROUND_IN_FP32=not x.is_cuda,  # the interpreter's fp32 -> fp8 cast misrounds
            **kw,
        )


def quantize_1x128_fwd(x: Tensor, q: Tensor, s: Tensor, ue8m0: bool, precast: Tensor | None = None) -> None:
    """x [M, K] -> q [M, K] e4m3 and s [M, K/128] float32 (any strides; module docstring)."""
    m, k = x.shape
    grid = (triton.cdiv(m, QUANT_BLOCK_ROWS) * (k // BLOCK),)  # 1-D: K/128 in y would stop at 65,535
    _quantize(_quantize_1x128_fwd_kernel, grid, x, q, s, ue8m0, precast, BLOCK_R=QUANT_BLOCK_ROWS, num_warps=4)


def quantize_128x128_fwd(w: Tensor, q: Tensor, s: Tensor, ue8m0: bool, precast: Tensor | None = None) -> None:
    """w [N, K] -> q [N, K] e4m3 and s [ceil(N/128), K/128] float32 (any strides)."""
    n, k = w.shape
    grid = (triton.cdiv(n, BLOCK) * (k // BLOCK),)
    _quantize(_quantize_128x128_fwd_kernel, grid, w, q, s, ue8m0, precast, num_warps=8)


# ----------------------------------------------------------------------------------------------
# offline sm_90 compile specs (pygen inspect fp8, tests/test_fp8_compile.py)
# ----------------------------------------------------------------------------------------------
def _gemm_spec(name, cfg: GemmConfig, b_block=BLOCK, grouped=False, bias=True, out="bf16", tma=True):
    sig = {
        "a_ptr": "*fp8e4nv",
        "as_ptr": "*fp32",
        "b_ptr": "*fp8e4nv",
        "bs_ptr": "*fp32",
        "bias_ptr": "*bf16",
        "c_ptr": "*fp32" if cfg.split_k > 1 else f"*{out}",
        "mi_ptr": "*i32",
        "M": "i32",
        "N": "i32",
        "K": "i32",
        "E": "i32",
        "stride_am": "i32",
        "stride_sam": "i32",
        "stride_sak": "i32",
        "stride_be": "i32",
        "stride_bn": "i32",
        "stride_sbe": "i32",
        "stride_sbn": "i32",
        "stride_cm": "i32",
        "num_programs": "i32",
    }
    consts = {
        "stride_ak": 1,
        "stride_bk": 1,
        "stride_sbk": 1,
        "stride_cn": 1,
        "B_BLOCK": b_block,
        "HAS_BIAS": bias,
        "GROUPED": grouped,
        "SWAP_AB": cfg.swap_ab,
        "SPLIT_K": cfg.split_k,
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "GROUP_M": cfg.group_m,
        "USE_TMA": tma,
        "UPCAST": False,
    }
    if tma:  # host descriptors, as the launcher builds them (_descriptors)
        sig["a_desc"] = f"tensordesc<fp8e4nv[{cfg.block_m}, {BLOCK}]>"
        sig["b_desc"] = f"tensordesc<fp8e4nv[{cfg.block_n}, {BLOCK}]>"
    else:
        consts.update(a_desc=None, b_desc=None)
    fn = _fp8_gemm_fwd_kernel
    div = ("M", "N", "K", "stride_am", "stride_bn", "stride_cm", "stride_be")
    return compile_spec(
        fn,
        name,
        sig,
        consts,
        cfg.num_warps,
        cfg.num_stages,
        div,
        tensor_cores=True,
        what=f"{name}: BM={cfg.block_m} BN={cfg.block_n} swap={cfg.swap_ab} split={cfg.split_k} "
        f"w={cfg.num_warps} s={cfg.num_stages}{' tma' if tma else ''}",
    )


def _specs():
    specs = []
    # DeepSeek-V3 shapes: N x K = 7168 x 2048 at M = 4096 / 128 / 64, and the grouped expert GEMM
    for m in (4096, 128, 64):
        cfg = gemm_config(m, 7168, 2048, device="cpu")
        specs.append(_gemm_spec(f"fp8_gemm[M={m}]", cfg, bias=False))
    cfg = gemm_config(64, 2112, 7168, device="cpu")  # split-K decode shape
    specs.append(_gemm_spec("fp8_gemm[M=64,N=2112,splitK]", cfg, bias=False))
    specs.append(
        _gemm_spec(
            "fp8_gemm_grouped", gemm_config(4096, 4096, 7168, grouped=True, device="cpu"), grouped=True, bias=False
        )
    )
    specs.append(
        _gemm_spec("fp8_gemm_wgrad", gemm_config(7168, 2048, 4096, device="cpu"), b_block=1, bias=False, out="fp32")
    )
    # the pointer path (operands TMA cannot address: unaligned views)
    specs.append(
        _gemm_spec("fp8_gemm[M=4096,pointers]", gemm_config(4096, 7168, 2048, device="cpu"), bias=False, tma=False)
    )
    specs.append(
        _gemm_spec("fp8_gemm[M=64,pointers]", gemm_config(64, 7168, 2048, device="cpu"), bias=False, tma=False)
    )
    return specs + quant_compile_specs()


COMPILE_SPECS = _specs()
