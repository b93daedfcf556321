"""Triton backend of the normalizing-flow family (RealNVP, Glow): affine and additive coupling,
ActNorm, the invertible 1x1 convolution, Glow's LU weight (kernels/flows/lu.py) and the batched
small-matrix slogdet (kernels/flows/slogdet.py), forward and backward. Semantics are pygen.ref.flows' (the float64
oracle); the launcher contract is docs/ARCHITECTURE.md's. Arithmetic is float32 (float16 /
bfloat16 are upcast right after the load); log-determinants are float32.

Layouts (the op in pygen/ops/flows.py prepares them)
-------
coupling   x, r (raw log-scale), t (shift), y: [B, N] rows with unit inner stride and any row
           stride (a channel-chunk view of the conditioner output qualifies); N = C_b*H*W.
           part: [B, n_split] float32 per-chunk log-det sums (n_split = 1: the log-det itself).
actnorm    x, y: [B*C, S] contiguous (row = b*C + c, S = H*W); loc, p: [C] contiguous, p is
           log_scale (LOG) or scale; logdet: [B] float32. Init: loc, log_scale [C] float32 out.
conv 1x1   x: [B, C, S] with unit stride along S; w: [C, C] any strides (the transpose is passed
           as strides for dx = W^T g); y: [B, C, S] contiguous.

Math (s = c*tanh(r/c) when CLAMP, else r)
----
affine fwd    y = x*exp(s) + t,   logdet = sum s        bwd: dx = g e^s, dt = g,
                                                             ds = g x e^s + gl
affine rev    x = (y - t)e^-s,    logdet = -sum s       bwd: dy = g e^-s, dt = -dy,
                                                             ds = -g x - gl
              dr = ds * (1 - (s/c)^2)  (CLAMP), dr = ds otherwise
Glow scale    m = sigmoid(r + 2) (SIGMOID): fwd y = (x + t) m, logdet = sum log m;
              bwd dx = dt = g m, dr = (g m (x + t) + gl)(1 - m);  rev x = y/m - t,
              logdet = -sum log m; bwd dy = g/m, dt = -g, dr = -(dy y + gl)(1 - m)
actnorm       y = (x + loc)*m (fwd) or y = x/m - loc (rev), m = exp(p) or p;
              logdet = +-S * sum_c log|m_c|; bwd: din = g*m^{+-1} plus per-channel sums
              A_c = sum g, B_c = sum g*in, finished per channel (see _actnorm_bwd_finish_kernel)
actnorm init  loc_c = -mean_c, log_scale_c = -log(std_c + eps) over (B, S), std the population
              std (Glow's data-dependent init); one program per channel, two passes
conv 1x1      y[b] = W x[b];  dx[b] = W^T g[b];  dW = sum_b g[b] x[b]^T  (fp32 IEEE dots: no TF32)

Grids
-----
affine fwd: (row blocks, n_split); a program sums its chunk of its samples, so the log-det needs
no atomics (deterministic); n_split > 1 only for a few large samples (coupling_splits), and the op
then adds the n_split partial sums. Elementwise passes: (row blocks, cdiv(N, BLOCK)). The batch
is always in grid x (up to 2^31 - 1 programs; y and z stop at 65,535). ActNorm: 2-D tiles of [rows, S]
so that S = 1 (2-D data) and large S both fill a program. Conv: (S blocks, C_out blocks, B).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .._bf16 import cast as _cast
from .._compile_spec import compile_spec
from .._device import launches_on_device
from .._grid import program_block
from .lu import (  # noqa: F401 (re-export: launchers of the LU / slogdet kernels)
    MAX_C as LU_MAX_C,  # noqa: F401 (re-export)
    compile_specs as _lu_specs,
    lu_weight_bwd,
    lu_weight_fwd,
)
from .slogdet import (  # noqa: F401 (re-export: launchers of the LU / slogdet kernels)
    MAX_D as SLOGDET_MAX_D,  # noqa: F401 (re-export)
    compile_specs as _slogdet_specs,
    slogdet_bwd,
    slogdet_fwd,
)

# ----------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tanh(z):
    # no tanh in tl.math; a Taylor branch near 0 avoids the 1 - e^{-2|z|} cancellation
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    a2 = a * a
    small = a * (1.0 + a2 * (-0.3333333333333333 + a2 * (0.13333333333333333 + a2 * -0.05396825396825397)))
    t = tl.where(a < 0.125, small, big)
    return tl.where(z < 0, -t, t)


@triton.jit
def _glow_scale(r):
    """(m, log m, 1 - m) for Glow's m = sigmoid(r + 2), each computed without cancellation."""
    z = r + 2.0
    e = tl.exp(-tl.abs(z))  # in (0, 1]: no overflow
    log1pe = tl.log(1.0 + e)
    m = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    one_m = tl.where(z >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
    log_m = tl.minimum(z, 0.0) - log1pe
    return m, log_m, one_m


@triton.jit
def _scale_of(r, clamp, inv_clamp, CLAMP: tl.constexpr):
    if CLAMP:
        s = clamp * _tanh(r * inv_clamp)
    else:
        s = r
    return s


@triton.jit
def _rows_tile(B, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's [BLOCK_B samples, BLOCK_N elements] tile of [B, N] rows (grid: sample blocks,
    element blocks): the samples as int64 rows [BLOCK_B, 1], the elements, the tile mask."""
    idx, nm = program_block(1, N, BLOCK_N)
    rows, rm = program_block(0, B, BLOCK_B)
    return rows.to(tl.int64)[:, None], idx, rm[:, None] & nm[None, :]


@triton.jit
def _load_rows(ptr, rl, row_stride, idx, m):
    """The [rows, idx] tile (rl: int64 rows [BLOCK_B, 1]) of a [B, N] operand with unit inner
    stride, in float32, 0 outside m."""
    return tl.load(ptr + rl * row_stride + idx[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, rl, N, idx, v, m, UPCAST: tl.constexpr):
    """Store v (float32) into the [rows, idx] tile of a contiguous [B, N] output, in its dtype."""
    tl.store(ptr + rl * N + idx[None, :], _cast(v, ptr.dtype.element_ty, UPCAST), mask=m)


# ----------------------------------------------------------------------------------------------
# affine / additive coupling: [BLOCK_B samples, BLOCK_N elements] tiles, so that both 2-D data
# (N = 1) and images (N in the thousands) fill a program
# ----------------------------------------------------------------------------------------------
@triton.jit
def _affine_coupling_fwd_kernel(
    x_ptr,  # [B, N] input half x_b (y when REVERSE)
    r_ptr,  # [B, N] raw log-scale from the conditioner
    t_ptr,  # [B, N] shift
    y_ptr,  # [B, N] out, contiguous
    part_ptr,  # [B, n_split] float32 out: log-det partial sums
    B,
    N,  # samples, elements per sample
    span,  # elements per program (a multiple of BLOCK_N)
    n_split,  # programs per sample row
    x_sb,
    r_sb,
    t_sb,  # row strides (inner stride is 1)
    clamp,
    inv_clamp,  # soft-clamp c and 1/c
    CLAMP: tl.constexpr,
    REVERSE: tl.constexpr,
    SIGMOID: tl.constexpr,  # Glow's scale m = sigmoid(r + 2), y = (x + t) m (CLAMP unused)
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    j = tl.program_id(1)
    rows, rm = program_block(0, B, BLOCK_B)
    rl = rows.to(tl.int64)[:, None]
    start = j * span
    end = tl.minimum(start + span, N)
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    for off in range(start, end, BLOCK_N):
        idx = off + tl.arange(0, BLOCK_N)
        m = rm[:, None] & (idx[None, :] < end)
        x = _load_rows(x_ptr, rl, x_sb, idx, m)
        r = _load_rows(r_ptr, rl, r_sb, idx, m)
        t = _load_rows(t_ptr, rl, t_sb, idx, m)
        if SIGMOID:
            sc, s, _ = _glow_scale(r)
            if REVERSE:
                y = x / sc - t
            else:
                y = (x + t) * sc
        else:
            s = _scale_of(r, clamp, inv_clamp, CLAMP)
            if REVERSE:
                y = (x - t) * tl.exp(-s)
            else:
                y = x * tl.exp(s) + t
        _store_rows(y_ptr, rl, N, idx, y, m, UPCAST)
        acc += tl.where(m, s, 0.0)
    total = tl.sum(acc, axis=1)
    if REVERSE:
        total = -total
    tl.store(part_ptr + rows * n_split + j, total, mask=rm)


@triton.jit
def _affine_coupling_bwd_kernel(
    x_ptr,  # [B, N] the forward's input (x, or y when REVERSE)
    r_ptr,  # [B, N] raw log-scale
    t_ptr,  # [B, N] shift (read only when REVERSE)
    g_ptr,  # [B, N] upstream gradient of the output
    gl_ptr,  # [B] upstream gradient of the log-det
    dx_ptr,  # [B, N] out (contiguous): gradient of the input
    dr_ptr,  # [B, N] out (contiguous): gradient of r
    dt_ptr,  # [B, N] out (contiguous, REVERSE or SIGMOID): gradient of t
    B,
    N,
    x_sb,
    r_sb,
    t_sb,
    g_sb,
    gl_s,
    clamp,
    inv_clamp,
    CLAMP: tl.constexpr,
    REVERSE: tl.constexpr,
    SIGMOID: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows, rm = program_block(0, B, BLOCK_B)  # the samples, for their log-det gradients
    rl, idx, m = _rows_tile(B, N, BLOCK_B, BLOCK_N)
    x = _load_rows(x_ptr, rl, x_sb, idx, m)
    r = _load_rows(r_ptr, rl, r_sb, idx, m)
    g = _load_rows(g_ptr, rl, g_sb, idx, m)
    gl = tl.load(gl_ptr + rows * gl_s, mask=rm, other=0.0).to(tl.float32)[:, None]
    if SIGMOID:
        # d m / d r = m (1 - m), d log m / d r = 1 - m
        sc, _, one_m = _glow_scale(r)
        if REVERSE:  # x_out = y / m - t
            dx = g / sc
            ds = -(dx * x + gl) * one_m
            _store_rows(dt_ptr, rl, N, idx, -g, m, UPCAST)
        else:  # y = (x + t) m
            t = _load_rows(t_ptr, rl, t_sb, idx, m)
            dx = g * sc
            ds = (dx * (x + t) + gl) * one_m
            _store_rows(dt_ptr, rl, N, idx, dx, m, UPCAST)
    else:
        s = _scale_of(r, clamp, inv_clamp, CLAMP)
        if REVERSE:
            t = _load_rows(t_ptr, rl, t_sb, idx, m)
            dx = g * tl.exp(-s)
            ds = -dx * (x - t) - gl
            _store_rows(dt_ptr, rl, N, idx, -dx, m, UPCAST)
        else:
            dx = g * tl.exp(s)
            ds = dx * x + gl
        if CLAMP:
            q = s * inv_clamp
            ds = ds * (1.0 - q * q)
    _store_rows(dx_ptr, rl, N, idx, dx, m, UPCAST)
    _store_rows(dr_ptr, rl, N, idx, ds, m, UPCAST)


@triton.jit
def _additive_coupling_fwd_kernel(
    x_ptr,
    t_ptr,
    y_ptr,  # [B, N] rows (unit inner stride); y contiguous
    B,
    N,
    x_sb,
    t_sb,
    REVERSE: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rl, idx, m = _rows_tile(B, N, BLOCK_B, BLOCK_N)
    x = _load_rows(x_ptr, rl, x_sb, idx, m)
    t = _load_rows(t_ptr, rl, t_sb, idx, m)
    if REVERSE:
        y = x - t
    else:
        y = x + t
    _store_rows(y_ptr, rl, N, idx, y, m, UPCAST)


# ----------------------------------------------------------------------------------------------
# ActNorm
# ----------------------------------------------------------------------------------------------
@triton.jit
def _act_multiplier(p, LOG: tl.constexpr, REVERSE: tl.constexpr):
    if LOG:
        if REVERSE:
            m = tl.exp(-p)
        else:
            m = tl.exp(p)
    else:
        if REVERSE:
            m = 1.0 / p
        else:
            m = p
    return m


@triton.jit
def _actnorm_tile(
    p_ptr, R, C, S, LOG: tl.constexpr, REVERSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr
):
    """This program's [BLOCK_R rows, BLOCK_S positions] tile of x [R = B*C, S]: rows, their mask,
    their channels, the channels' multipliers m^{+-1} (float32), the tile mask, the tile offsets."""
    rows, rm = program_block(0, R, BLOCK_R)
    cols, cm = program_block(1, S, BLOCK_S)
    ch = rows % C
    p = tl.load(p_ptr + ch, mask=rm, other=1.0).to(tl.float32)
    mul = _act_multiplier(p, LOG, REVERSE)
    return rows, rm, ch, mul, rm[:, None] & cm[None, :], rows.to(tl.int64)[:, None] * S + cols[None, :]


@triton.jit
def _actnorm_fwd_kernel(
    x_ptr,  # [B*C, S] contiguous
    loc_ptr,
    p_ptr,  # [C] loc and log_scale (LOG) or scale
    y_ptr,  # [B*C, S] out
    ld_ptr,  # [B] float32 out: logdet (written by program (0, 0))
    R,
    C,
    S,
    B,  # rows = B*C
    S_f,  # float(S)
    LOG: tl.constexpr,
    REVERSE: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
    LD_BLOCK: tl.constexpr,
):
    _, rm, ch, mul, m, offs = _actnorm_tile(p_ptr, R, C, S, LOG, REVERSE, BLOCK_R, BLOCK_S)
    loc = tl.load(loc_ptr + ch, mask=rm, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if REVERSE:
        y = x * mul[:, None] - loc[:, None]
    else:
        y = (x + loc[:, None]) * mul[:, None]
    tl.store(y_ptr + offs, _cast(y, y_ptr.dtype.element_ty, UPCAST), mask=m)
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        # the log-det is the same for every sample: program (0, 0) writes it, LD_BLOCK at a time
        acc = tl.zeros([LD_BLOCK], dtype=tl.float32)
        for c0 in range(0, C, LD_BLOCK):
            cc = c0 + tl.arange(0, LD_BLOCK)
            pc = tl.load(p_ptr + cc, mask=cc < C, other=1.0).to(tl.float32)
            if LOG:
                acc += tl.where(cc < C, pc, 0.0)
            else:
                acc += tl.log(tl.abs(pc))
        total = tl.sum(acc, axis=0) * S_f
        if REVERSE:
            total = -total
        for b0 in range(0, B, LD_BLOCK):
            bb = b0 + tl.arange(0, LD_BLOCK)
            tl.store(ld_ptr + bb, tl.zeros([LD_BLOCK], dtype=tl.float32) + total, mask=bb < B)


@triton.jit
def _actnorm_bwd_kernel(
    x_ptr,  # [B*C, S] the forward's input, contiguous
    g_ptr,  # [B*C, S] upstream gradient, contiguous
    p_ptr,  # [C]
    dx_ptr,  # [B*C, S] out
    pa_ptr,
    pb_ptr,  # [B, n_sb, C] float32 out: per-tile sums of g and g*x
    R,
    C,
    S,
    n_sb,
    LOG: tl.constexpr,
    REVERSE: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    rows, rm, ch, mul, m, offs = _actnorm_tile(p_ptr, R, C, S, LOG, REVERSE, BLOCK_R, BLOCK_S)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs, _cast(g * mul[:, None], dx_ptr.dtype.element_ty, UPCAST), mask=m)
    sa = tl.sum(g, axis=1)
    sb = tl.sum(g * x, axis=1)
    dst = ((rows // C).to(tl.int64) * n_sb + tl.program_id(1)) * C + ch
    tl.store(pa_ptr + dst, sa, mask=rm)
    tl.store(pb_ptr + dst, sb, mask=rm)


@triton.jit
def _actnorm_bwd_finish_kernel(
    pa_ptr,
    pb_ptr,  # [Q, C] float32 partial sums (Q = B*n_sb)
    gl_ptr,  # [B] upstream gradient of the log-det
    loc_ptr,
    p_ptr,  # [C]
    dloc_ptr,
    dp_ptr,  # [C] out
    Q,
    C,
    B,
    gl_s,
    S_f,
    LOG: tl.constexpr,
    REVERSE: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_Q: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cc, cm = program_block(0, C, BLOCK_C)
    a = tl.zeros([BLOCK_C], dtype=tl.float32)
    s = tl.zeros([BLOCK_C], dtype=tl.float32)
    for q0 in range(0, Q, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        m = (q[:, None] < Q) & cm[None, :]
        offs = q.to(tl.int64)[:, None] * C + cc[None, :]
        a += tl.sum(tl.load(pa_ptr + offs, mask=m, other=0.0), axis=0)
        s += tl.sum(tl.load(pb_ptr + offs, mask=m, other=0.0), axis=0)
    gacc = tl.zeros([BLOCK_Q], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_Q):
        bb = b0 + tl.arange(0, BLOCK_Q)
        gacc += tl.load(gl_ptr + bb * gl_s, mask=bb < B, other=0.0).to(tl.float32)
    gsum = tl.sum(gacc, axis=0) * S_f
    loc = tl.load(loc_ptr + cc, mask=cm, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + cc, mask=cm, other=1.0).to(tl.float32)
    if LOG:
        if REVERSE:
            dloc = -a
            dp = -tl.exp(-p) * s - gsum
        else:
            e = tl.exp(p)
            dloc = e * a
            dp = e * (s + loc * a) + gsum
    else:
        if REVERSE:
            dloc = -a
            dp = -s / (p * p) - gsum / p
        else:
            dloc = p * a
            dp = s + loc * a + gsum / p
    tl.store(dloc_ptr + cc, _cast(dloc, dloc_ptr.dtype.element_ty, UPCAST), mask=cm)
    tl.store(dp_ptr + cc, _cast(dp, dp_ptr.dtype.element_ty, UPCAST), mask=cm)


@triton.jit
def _channel_sum(x_ptr, c, B, C, S, mean, CENTRED: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr):
    """Sum over channel c of x [B*C, S] (CENTRED: of (x - mean)^2), in float32; a [BLOCK_B, BLOCK_S]
    tile keeps the lanes busy for S = 1 (2-D data) too."""
    rb = tl.arange(0, BLOCK_B)
    cs = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_B, BLOCK_S], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bb = b0 + rb
        rows = (bb.to(tl.int64) * C + c) * S
        for s0 in range(0, S, BLOCK_S):
            ss = s0 + cs
            m = (bb < B)[:, None] & (ss < S)[None, :]
            v = tl.load(x_ptr + rows[:, None] + ss[None, :], mask=m, other=0.0).to(tl.float32)
            if CENTRED:
                d = tl.where(m, v - mean, 0.0)
                acc += d * d
            else:
                acc += v
    return tl.sum(tl.sum(acc, axis=1), axis=0)


@triton.jit
def _actnorm_init_kernel(
    x_ptr,  # [B*C, S] contiguous
    loc_ptr,
    ls_ptr,  # [C] float32 out: -mean and -log(std + eps) of each channel over (B, S)
    B,
    C,
    S,
    n_f,  # float(B * S)
    eps,
    BLOCK_B: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    # one program per channel, two passes over its B x S values (the mean, then the centred
    # squares: no cancellation)
    c = tl.program_id(0)
    mean = _channel_sum(x_ptr, c, B, C, S, 0.0, False, BLOCK_B, BLOCK_S) / n_f
    std = tl.sqrt(_channel_sum(x_ptr, c, B, C, S, mean, True, BLOCK_B, BLOCK_S) / n_f)
    tl.store(loc_ptr + c, -mean)
    tl.store(ls_ptr + c, -tl.log(std + eps))


# ----------------------------------------------------------------------------------------------
# invertible 1x1 convolution
# ----------------------------------------------------------------------------------------------
@triton.jit
def _conv1x1_fwd_kernel(
    x_ptr,  # [B, C, S], unit stride along S
    w_ptr,  # [C, C] (out, in) any strides
    y_ptr,  # [B, C, S] out, contiguous
    C,
    S,
    x_sb,
    x_sc,
    w_so,
    w_si,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    # grid (S blocks x batch, C blocks): the batch is folded into x (grid z stops at 65,535 and
    # tabular flows have S = 1 with batches past that)
    n_sb = tl.cdiv(S, BLOCK_S)
    pid = tl.program_id(0)
    s_idx = (pid % n_sb) * BLOCK_S + tl.arange(0, BLOCK_S)
    o_idx, om = program_block(1, C, BLOCK_O)
    b = (pid // n_sb).to(tl.int64)
    sm = s_idx < S
    acc = tl.zeros([BLOCK_O, BLOCK_S], dtype=tl.float32)
    for i0 in range(0, C, BLOCK_I):
        i_idx = i0 + tl.arange(0, BLOCK_I)
        im = i_idx < C
        w = tl.load(
            w_ptr + o_idx[:, None] * w_so + i_idx[None, :] * w_si, mask=om[:, None] & im[None, :], other=0.0
        ).to(tl.float32)
        x = tl.load(
            x_ptr + b * x_sb + i_idx[:, None] * x_sc + s_idx[None, :], mask=im[:, None] & sm[None, :], other=0.0
        ).to(tl.float32)
        acc = tl.dot(w, x, acc, input_precision="ieee")
    y = _cast(acc, y_ptr.dtype.element_ty, UPCAST)
    tl.store(y_ptr + b * C * S + o_idx[:, None] * S + s_idx[None, :], y, mask=om[:, None] & sm[None, :])


@triton.jit
def _conv1x1_dw_kernel(
    g_ptr,  # [B, C, S] upstream gradient, unit stride along S
    x_ptr,  # [B, C, S] forward input, unit stride along S
    part_ptr,  # [n_split, C, C] float32 out: partial dW
    B,
    C,
    S,
    b_per,  # samples per split
    g_sb,
    g_sc,
    x_sb,
    x_sc,
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    o_idx, om = program_block(0, C, BLOCK_O)
    i_idx, im = program_block(1, C, BLOCK_I)
    split = tl.program_id(2)
    acc = tl.zeros([BLOCK_O, BLOCK_I], dtype=tl.float32)
    b0 = split * b_per
    for i in range(0, b_per):
        b = b0 + i
        bl = b.to(tl.int64)
        for s0 in range(0, S, BLOCK_S):
            s_idx = s0 + tl.arange(0, BLOCK_S)
            sm = (s_idx < S) & ((s_idx * 0 + b) < B)  # vector form: the interpreter rejects scalar & vector masks
            g = tl.load(
                g_ptr + bl * g_sb + o_idx[:, None] * g_sc + s_idx[None, :], mask=om[:, None] & sm[None, :], other=0.0
            ).to(tl.float32)
            x = tl.load(
                x_ptr + bl * x_sb + i_idx[None, :] * x_sc + s_idx[:, None], mask=im[None, :] & sm[:, None], other=0.0
            ).to(tl.float32)
            acc = tl.dot(g, x, acc, input_precision="ieee")
    tl.store(
        part_ptr + split.to(tl.int64) * C * C + o_idx[:, None] * C + i_idx[None, :], acc, mask=om[:, None] & im[None, :]
    )


# ----------------------------------------------------------------------------------------------
# launchers (docs/ARCHITECTURE.md, "Launcher contract"): tensors in, nothing allocated, None out
# ----------------------------------------------------------------------------------------------
_TILE_GPU = 2048  # values per program: 16 a thread at 4 warps
_TILE_CPU = 16384  # interpreter: few, large programs
# a sample is split over several programs only while the grid would hold fewer than this
_TARGET_PROGRAMS = 1056  # 8 per SM on a 132-SM H200
_SPLIT_MIN_ELEMS = 65536  # per row block, before a sample is split over several programs


def _opts(t: Tensor, warps: int = 4) -> dict:
    """Launch options of every flows kernel: the warps on the GPU (the interpreter takes none)."""
    return {"num_warps": warps} if t.is_cuda else {}


def _rounding(t: Tensor) -> bool:
    # the UPCAST constexpr of the stores: CPU tensors only run under the interpreter
    return not t.is_cuda


def coupling_blocks(batch: int, n: int, gpu: bool) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_N) of the coupling kernels: up to 1024 elements of a sample (4096 under
    the interpreter) and as many samples as fill the tile."""
    tile = _TILE_GPU if gpu else _TILE_CPU
    bn = min(triton.next_power_of_2(max(n, 1)), tile // 2)
    bb = max(1, min(triton.next_power_of_2(max(batch, 1)), tile // bn))
    return bb, bn


def coupling_splits(batch: int, n: int, gpu: bool) -> int:
    """Programs per sample row of the affine-coupling forward (the op sizes its partial-sum
    buffer [B, n_split] with this): 1 unless the batch alone cannot fill the GPU."""
    bb, bn = coupling_blocks(batch, n, gpu)
    row_blocks = triton.cdiv(max(batch, 1), bb)
    # splitting costs a second (tiny) launch to add the partial sums: only worth it when each
    # row block would stream a lot of data alone (one large image), not for Glow's 64 x 1536
    if not gpu or row_blocks >= _TARGET_PROGRAMS or bb * n <= _SPLIT_MIN_ELEMS:
        return 1
    return max(1, min(triton.cdiv(max(n, 1), bn), triton.cdiv(_TARGET_PROGRAMS, row_blocks)))


def _affine_args(x: Tensor, clamp: float | None, reverse: bool, sigmoid: bool) -> tuple[tuple, dict]:
    """(trailing scalars, constexprs and options) of both affine-coupling kernels: the soft clamp c
    and 1/c, then CLAMP / REVERSE / SIGMOID / UPCAST and the tile."""
    bb, bn = coupling_blocks(x.shape[0], x.shape[1], x.is_cuda)
    c = float(clamp) if clamp is not None else 1.0
    kw = dict(CLAMP=clamp is not None, REVERSE=bool(reverse), SIGMOID=bool(sigmoid), UPCAST=_rounding(x))
    return (c, 1.0 / c), dict(kw, BLOCK_B=bb, BLOCK_N=bn, **_opts(x))


@launches_on_device
def affine_coupling_fwd(
    x: Tensor, r: Tensor, t: Tensor, y: Tensor, part: Tensor, clamp: float | None, reverse: bool, sigmoid: bool = False
) -> None:
    """x, r, t: [B, N] (unit inner stride); y: [B, N] contiguous; part: [B, n_split] float32
    (any n_split >= 1; the caller adds the partial sums when n_split > 1)."""
    bsz, n = x.shape
    if bsz == 0:
        return
    n_split = part.shape[1]
    scalars, kw = _affine_args(x, clamp, reverse, sigmoid)
    bb, bn = kw["BLOCK_B"], kw["BLOCK_N"]
    span = triton.cdiv(triton.cdiv(max(n, 1), n_split), bn) * bn
    _affine_coupling_fwd_kernel[(triton.cdiv(bsz, bb), n_split)](
        x, r, t, y, part, bsz, n, span, n_split, x.stride(0), r.stride(0), t.stride(0), *scalars, **kw
    )


@launches_on_device
def affine_coupling_bwd(
    x: Tensor,
    r: Tensor,
    t: Tensor,
    g: Tensor,
    gl: Tensor,
    dx: Tensor,
    dr: Tensor,
    dt: Tensor | None,
    clamp: float | None,
    reverse: bool,
    sigmoid: bool = False,
) -> None:
    """Gradients of affine_coupling_fwd. dx, dr (and dt when ``reverse`` or ``sigmoid``; else
    unused, may be None): [B, N] contiguous outputs; gl: [B]."""
    bsz, n = x.shape
    if bsz == 0 or n == 0:
        return
    scalars, kw = _affine_args(x, clamp, reverse, sigmoid)
    dt_arg = dt if (reverse or sigmoid) else dx
    strides = (x.stride(0), r.stride(0), t.stride(0), g.stride(0), gl.stride(0))
    _affine_coupling_bwd_kernel[(triton.cdiv(bsz, kw["BLOCK_B"]), triton.cdiv(n, kw["BLOCK_N"]))](
        x, r, t, g, gl, dx, dr, dt_arg, bsz, n, *strides, *scalars, **kw
    )


@launches_on_device
def additive_coupling_fwd(x: Tensor, t: Tensor, y: Tensor, reverse: bool) -> None:
    """y = x + t (x - t when ``reverse``); x, t: [B, N] (unit inner stride); y contiguous."""
    bsz, n = x.shape
    if bsz == 0 or n == 0:
        return
    bb, bn = coupling_blocks(bsz, n, x.is_cuda)
    kw = dict(REVERSE=bool(reverse), UPCAST=_rounding(x), BLOCK_B=bb, BLOCK_N=bn, **_opts(x))
    _additive_coupling_fwd_kernel[(triton.cdiv(bsz, bb), triton.cdiv(n, bn))](
        x, t, y, bsz, n, x.stride(0), t.stride(0), **kw
    )


def _actnorm_blocks(rows: int, s: int, gpu: bool) -> tuple[int, int]:
    tile = 2048 if gpu else 16384
    bs = max(1, min(triton.next_power_of_2(max(s, 1)), 1024 if gpu else 4096))
    br = max(1, min(triton.next_power_of_2(max(rows, 1)), tile // bs))
    return br, bs


def actnorm_s_blocks(rows: int, s: int, gpu: bool) -> int:
    """Number of S tiles of the ActNorm backward (the op sizes its partial buffers with it)."""
    return triton.cdiv(max(s, 1), _actnorm_blocks(rows, s, gpu)[1])


def _actnorm_kw(x: Tensor, log_param: bool, reverse: bool) -> dict:
    return dict(LOG=bool(log_param), REVERSE=bool(reverse), UPCAST=_rounding(x))


@launches_on_device
def actnorm_fwd(x: Tensor, loc: Tensor, p: Tensor, y: Tensor, logdet: Tensor, log_param: bool, reverse: bool) -> None:
    """x, y: [B, C, S] contiguous; loc, p: [C] contiguous; logdet: [B] float32."""
    bsz, c, s = x.shape
    rows = bsz * c
    if bsz == 0:
        return
    br, bs = _actnorm_blocks(rows, s, x.is_cuda)
    _actnorm_fwd_kernel[(triton.cdiv(max(rows, 1), br), triton.cdiv(max(s, 1), bs))](
        x,
        loc,
        p,
        y,
        logdet,
        rows,
        c,
        s,
        bsz,
        float(s),
        **_actnorm_kw(x, log_param, reverse),
        BLOCK_R=br,
        BLOCK_S=bs,
        LD_BLOCK=256,
        **_opts(x),
    )


def actnorm_init_blocks(s: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_S) of the init kernel: 1024-element tiles, S first."""
    bs = min(triton.next_power_of_2(max(s, 1)), 1024)
    return 1024 // bs, bs


@launches_on_device
def actnorm_init_fwd(x: Tensor, loc: Tensor, log_scale: Tensor, eps: float) -> None:
    """x: [B, C, S] contiguous, B * S >= 1; loc, log_scale: [C] float32 out."""
    bsz, c, s = x.shape
    bb, bs = actnorm_init_blocks(s)
    _actnorm_init_kernel[(c,)](
        x, loc, log_scale, bsz, c, s, float(bsz * s), float(eps), BLOCK_B=bb, BLOCK_S=bs, **_opts(x)
    )


@launches_on_device
def actnorm_bwd(
    x: Tensor,
    g: Tensor,
    loc: Tensor,
    p: Tensor,
    gl: Tensor,
    dx: Tensor,
    dloc: Tensor,
    dp: Tensor,
    pa: Tensor,
    pb: Tensor,
    log_param: bool,
    reverse: bool,
) -> None:
    """x, g, dx: [B, C, S] contiguous; loc, p, dloc, dp: [C]; gl: [B];
    pa, pb: [B, n_sb, C] float32 scratch (n_sb = actnorm_s_blocks)."""
    bsz, c, s = x.shape
    rows = bsz * c
    if c == 0:
        return
    br, bs = _actnorm_blocks(rows, s, x.is_cuda)
    n_sb = pa.shape[1]
    kw = _actnorm_kw(x, log_param, reverse)
    if rows and s:
        _actnorm_bwd_kernel[(triton.cdiv(rows, br), n_sb)](
            x, g, p, dx, pa, pb, rows, c, s, n_sb, **kw, BLOCK_R=br, BLOCK_S=bs, **_opts(x)
        )
    else:
        pa.zero_()
        pb.zero_()
    bc = min(triton.next_power_of_2(c), 64)
    bq = 64 if x.is_cuda else 1024
    gl_s = gl.stride(0) if gl.numel() else 1
    _actnorm_bwd_finish_kernel[(triton.cdiv(c, bc),)](
        pa, pb, gl, loc, p, dloc, dp, bsz * n_sb, c, bsz, gl_s, float(s), **kw, BLOCK_Q=bq, BLOCK_C=bc, **_opts(x)
    )


def _conv_blocks(c: int, s: int, gpu: bool) -> tuple[int, int, int]:
    bo = max(16, min(triton.next_power_of_2(c), 64))
    bi = max(16, min(triton.next_power_of_2(c), 64 if gpu else 128))
    bs = max(16, min(triton.next_power_of_2(max(s, 1)), 64 if gpu else 256))
    return bo, bi, bs


def _conv_warps(m: int, n: int) -> int:
    # a 64x64 fp32 accumulator (IEEE FMA dots) spills at 4 warps
    return 8 if m * n >= 4096 else 4


@launches_on_device
def conv1x1_fwd(x: Tensor, w: Tensor, y: Tensor) -> None:
    """y[b] = w @ x[b]. x: [B, C, S] (unit stride along S); w: [C, C] any strides; y contiguous."""
    bsz, c, s = x.shape
    if bsz == 0 or c == 0 or s == 0:
        return
    bo, bi, bs = _conv_blocks(c, s, x.is_cuda)
    strides = (x.stride(0), x.stride(1), w.stride(0), w.stride(1))
    _conv1x1_fwd_kernel[(triton.cdiv(s, bs) * bsz, triton.cdiv(c, bo))](
        x,
        w,
        y,
        c,
        s,
        *strides,
        UPCAST=_rounding(x),
        BLOCK_O=bo,
        BLOCK_I=bi,
        BLOCK_S=bs,
        **_opts(x, _conv_warps(bo, bs)),
    )


def _dw_blocks(c: int, s: int, gpu: bool) -> tuple[int, int, int]:
    """(BLOCK_O = BLOCK_I, BLOCK_S, num_warps) of the dW reduction: the spill-free sm_90
    configurations found with `pygen inspect` (ptxas spills the 64x64 tile at 8 warps and the
    16x16 tile at 4 warps with BLOCK_S = 64)."""
    bo = max(16, min(triton.next_power_of_2(c), 64))
    if not gpu:
        return bo, max(16, min(triton.next_power_of_2(max(s, 1)), 256)), 4
    return bo, {16: 64, 32: 32, 64: 16}[bo], {16: 2, 32: 4, 64: 4}[bo]


def conv1x1_dw_splits(batch: int, c: int, gpu: bool) -> int:
    """Batch splits of the dW reduction (the op sizes its [n_split, C, C] buffer with it)."""
    if batch == 0:
        return 1
    tiles = triton.cdiv(c, _conv_blocks(c, 1, gpu)[0]) ** 2
    want = max(1, _TARGET_PROGRAMS // tiles) if gpu else 1
    return max(1, min(batch, want))


@launches_on_device
def conv1x1_dw(g: Tensor, x: Tensor, part: Tensor) -> None:
    """part[k] = sum over batch split k of g[b] @ x[b]^T; g, x: [B, C, S] (unit stride along S);
    part: [n_split, C, C] float32 (or dW itself when float32 and one split)."""
    bsz, c, s = x.shape
    n_split = part.shape[0]
    if bsz == 0 or c == 0 or s == 0:
        part.zero_()
        return
    bo, bs, warps = _dw_blocks(c, s, x.is_cuda)
    b_per = triton.cdiv(bsz, n_split)
    strides = (g.stride(0), g.stride(1), x.stride(0), x.stride(1))
    _conv1x1_dw_kernel[(triton.cdiv(c, bo), triton.cdiv(c, bo), n_split)](
        g, x, part, bsz, c, s, b_per, *strides, BLOCK_O=bo, BLOCK_I=bo, BLOCK_S=bs, **_opts(x, warps)
    )


# ----------------------------------------------------------------------------------------------
# offline compile entries for `pygen inspect` (Glow on 32x32x3: C_b = 6 at 16x16 etc.)
# ----------------------------------------------------------------------------------------------


def _spec(fn, sig: dict, consts: dict, num_warps: int = 4) -> dict:
    # recorded without alignment attrs and at Triton's default stages (docs/inspect reports)
    return compile_spec(fn, None, sig, consts, num_warps, None, aligned=False)


def _sig(ptrs: str, ints: str, floats: str = "", dtype: str = "fp32") -> dict:
    """Signature from space-separated names: ``*dtype`` pointers, i32 and fp32 scalars (in order)."""
    return {
        **{a: f"*{dtype}" for a in ptrs.split()},
        **{a: "i32" for a in ints.split()},
        **{a: "fp32" for a in floats.split()},
    }


def _specs() -> list[dict]:
    specs = []
    bb, bn = coupling_blocks(64, 6 * 16 * 16, True)
    fwd = _sig("x_ptr r_ptr t_ptr y_ptr part_ptr", "B N span n_split x_sb r_sb t_sb", "clamp inv_clamp")
    bwd = _sig("x_ptr r_ptr t_ptr g_ptr gl_ptr dx_ptr dr_ptr dt_ptr", "B N x_sb r_sb t_sb g_sb gl_s", "clamp inv_clamp")
    for clamp, sig in ((True, False), (False, False), (False, True)):
        for rev in (False, True):
            consts = {"CLAMP": clamp, "REVERSE": rev, "SIGMOID": sig, "UPCAST": False, "BLOCK_B": bb, "BLOCK_N": bn}
            specs += [_spec(_affine_coupling_fwd_kernel, fwd, consts), _spec(_affine_coupling_bwd_kernel, bwd, consts)]
    add = _sig("x_ptr t_ptr y_ptr", "B N x_sb t_sb", dtype="bf16")
    specs.append(
        _spec(_additive_coupling_fwd_kernel, add, {"REVERSE": False, "UPCAST": False, "BLOCK_B": bb, "BLOCK_N": bn})
    )
    bb_i, bs_i = actnorm_init_blocks(256)
    init = _sig("x_ptr loc_ptr ls_ptr", "B C S", "n_f eps")
    specs.append(_spec(_actnorm_init_kernel, init, {"BLOCK_B": bb_i, "BLOCK_S": bs_i}))
    br, bs = _actnorm_blocks(64 * 12, 256, True)
    for log in (True, False):
        an = {"LOG": log, "REVERSE": False, "UPCAST": False}
        specs += [
            _spec(
                _actnorm_fwd_kernel,
                _sig("x_ptr loc_ptr p_ptr y_ptr ld_ptr", "R C S B", "S_f"),
                {**an, "BLOCK_R": br, "BLOCK_S": bs, "LD_BLOCK": 256},
            ),
            _spec(
                _actnorm_bwd_kernel,
                _sig("x_ptr g_ptr p_ptr dx_ptr pa_ptr pb_ptr", "R C S n_sb"),
                {**an, "BLOCK_R": br, "BLOCK_S": bs},
            ),
            _spec(
                _actnorm_bwd_finish_kernel,
                _sig("pa_ptr pb_ptr gl_ptr loc_ptr p_ptr dloc_ptr dp_ptr", "Q C B gl_s", "S_f"),
                {**an, "BLOCK_Q": 64, "BLOCK_C": 16},
            ),
        ]
    for c, s in ((12, 256), (24, 64), (48, 16)):
        bo, bi, bs = _conv_blocks(c, s, True)
        conv = _sig("x_ptr w_ptr y_ptr", "C S x_sb x_sc w_so w_si")
        specs.append(
            _spec(
                _conv1x1_fwd_kernel,
                conv,
                {"UPCAST": False, "BLOCK_O": bo, "BLOCK_I": bi, "BLOCK_S": bs},
                _conv_warps(bo, bs),
            )
        )
        dbo, dbs, dwarps = _dw_blocks(c, s, True)
        dw = _sig("g_ptr x_ptr part_ptr", "B C S b_per g_sb g_sc x_sb x_sc")
        specs.append(_spec(_conv1x1_dw_kernel, dw, {"BLOCK_O": dbo, "BLOCK_I": dbo, "BLOCK_S": dbs}, dwarps))
    return specs + _lu_specs() + _slogdet_specs()


COMPILE_SPECS = _specs()
