"""Stage 1 of the fused Inception forward (Triton): one launch for every GEMM that reads x.

NHWC view: pixel p = (n*H + h)*W + w is a GEMM row; x[p, c] sits at n*sxn + h*sxh + w*sxw + c*sxc
(any strides: channels_last, channel slices, expanded inputs are read in place).

The program grid is 1-D over (row tile, column tile) pairs, column tiles fastest so that the
programs sharing a row tile of x run together and read it from L2.  The column tiles cover
    [ ch1x1 | ch3x3red | ch5x5red ]  (the merged 1x1 GEMM over x, NM = their sum)   then
    [ pool_proj ]                    (the pool projection)
and the column tile index picks what a program computes:
  * merged 1x1 tile: B is the merged weight [ch1x1 + ch3x3red + ch5x5red, Cin] (the three
    sibling weights as adjacent rows of one buffer, which the model's folded-weight cache
    provides; the op concatenates them per call otherwise); the epilogue writes ch1x1 columns
    into the output's first channel slice and the reduce columns into the scratch matrix
    red[P, ch3x3red + ch5x5red] that stage 2 reads;
  * pool projection tile: the A-operand loader takes the max over the 3x3 neighbourhood
    (stride 1, padding 1; out-of-image taps load -inf, so padding never wins the max) of each
    [BLOCK_M, BLOCK_K] tile of x while loading it; no pooled tensor exists.  The epilogue
    writes the last channel slice of the output.
Epilogue: fp32 accumulator + bias (optional, per-branch constexpr flags), ReLU (NaN kept, as
torch.relu), cast to the output dtype, masked stores with the output's own strides (so `out`
may be a channel slice of a larger buffer, or NCHW).

Every @triton.jit function this kernel calls lives in this module or in kernel_common.py (the
shared helpers, imported relatively: the backend loads private copies of both for the other
interpreter mode; see kernel_common.py and backends/triton/__init__.py), and none comes from
triton.language's @jit standard library (tl.cdiv, tl.zeros, tl.max, ...): those are built once,
when triton is imported, for one mode only, so they would break switching to the interpreter
after import.  Only builtins (tl.full, tl.where, tl.maximum, tl.dot, ...) are used.
"""
import triton
import triton.language as tl

from .kernel_common import _epilogue, _load, _load_or_ninf, _mma, _pixel_tile, _wide


@triton.jit
def _merged_1x1_tile(x_ptr, wm_ptr, b1_ptr, b3r_ptr, b5r_ptr, out_ptr, red_ptr, tile_n,
                     offs_m, m_mask, x_row, o_row, CIN, NM, C1, R3, RR, sxc, swm, soc,
                     HAS_B1: tl.constexpr, HAS_B3R: tl.constexpr, HAS_B5R: tl.constexpr,
                     RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr,
                     UPCAST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of the merged 1x1 GEMM: columns [ch1x1 | ch3x3red | ch5x5red]."""
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < NM
    is1 = offs_n < C1
    is3 = (offs_n >= C1) & (offs_n < C1 + R3)
    is5 = (offs_n >= C1 + R3) & n_mask
    j3 = offs_n - C1
    j5 = offs_n - C1 - R3
    w_col = wm_ptr + offs_n * swm
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, CIN, BLOCK_K):
        kk = _wide(k0 + offs_k, INT64)
        k_mask = kk < CIN
        a = _load(x_ptr + x_row[:, None] + kk[None, :] * sxc, m_mask[:, None] & k_mask[None, :], UPCAST)
        b = _load(w_col[None, :] + kk[:, None], k_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    bias = tl.full((BLOCK_N,), 0.0, tl.float32)
    if HAS_B1:
        bias += tl.load(b1_ptr + offs_n, mask=is1, other=0.0).to(tl.float32)
    if HAS_B3R:
        bias += tl.load(b3r_ptr + j3, mask=is3, other=0.0).to(tl.float32)
    if HAS_B5R:
        bias += tl.load(b5r_ptr + j5, mask=is5, other=0.0).to(tl.float32)
    y = _epilogue(acc, bias, RELU, out_ptr.dtype.element_ty, UPCAST)
    # branch 1 straight into its channel slice of the output
    tl.store(out_ptr + o_row[:, None] + _wide(offs_n, INT64)[None, :] * soc, y,
             mask=m_mask[:, None] & is1[None, :])
    # both reduce outputs into the scratch matrix red (row stride RR >= NM - C1)
    tl.store(red_ptr + offs_m[:, None] * RR + j3[None, :], y, mask=m_mask[:, None] & (is3 | is5)[None, :])


@triton.jit
def _pool_proj_tile(x_ptr, wp_ptr, bp_ptr, out_ptr, tile_n, m_mask, h, w, x_row, o_row,
                    H, W, CIN, CP, OFF_P, sxc, sxh, sxw, swp, soc,
                    HAS_BP: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr,
                    ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, POOL_BLOCK_K: tl.constexpr):
    """One tile of the pool projection; the A loader takes the 3x3/s1/p1 max (-inf padding)."""
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CP
    w_col = wp_ptr + offs_n * swp
    up_ok = h >= 1
    down_ok = h + 1 < H
    left_ok = w >= 1
    right_ok = w + 1 < W
    offs_k = tl.arange(0, POOL_BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # Not software-pipelined (num_stages=1): multi-buffering nine tap loads would take nine times
    # the shared memory of a plain GEMM tile; the nine loads are in flight together, in
    # registers, so big tiles take a narrower K step here (POOL_BLOCK_K).
    for k0 in tl.range(0, CIN, POOL_BLOCK_K, num_stages=1):
        kk = _wide(k0 + offs_k, INT64)
        k_mask = kk < CIN
        mk = m_mask[:, None] & k_mask[None, :]
        centre = x_ptr + x_row[:, None] + kk[None, :] * sxc
        a = _load_or_ninf(centre, mk, UPCAST)
        for t in tl.static_range(9):
            if t != 4:
                dh = t // 3 - 1
                dw = t % 3 - 1
                ok = m_mask
                if dh == -1:
                    ok = ok & up_ok
                if dh == 1:
                    ok = ok & down_ok
                if dw == -1:
                    ok = ok & left_ok
                if dw == 1:
                    ok = ok & right_ok
                v = _load_or_ninf(centre + (dh * sxh + dw * sxw), ok[:, None] & k_mask[None, :], UPCAST)
                # (the max of two bf16 tensors comes back as fp32: cast back)
                a = tl.maximum(a, v, propagate_nan=tl.PropagateNan.ALL).to(v.dtype)
        a = tl.where(mk, a, tl.full(a.shape, 0.0, a.dtype))  # no -inf (and no 0 * inf) reaches the dot
        b = _load(w_col[None, :] + kk[:, None], k_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    bias = tl.full((BLOCK_N,), 0.0, tl.float32)
    if HAS_BP:
        bias += tl.load(bp_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    y = _epilogue(acc, bias, RELU, out_ptr.dtype.element_ty, UPCAST)
    tl.store(out_ptr + o_row[:, None] + _wide(OFF_P + offs_n, INT64)[None, :] * soc, y,
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def inception_stage1_kernel(
    x_ptr, wm_ptr, wp_ptr,
    b1_ptr, b3r_ptr, b5r_ptr, bp_ptr,
    out_ptr, red_ptr,
    P, H, W, CIN, NM, C1, R3, CP, RR, OFF_P,
    sxn, sxc, sxh, sxw,
    swm, swp,
    son, soc, soh, sow,
    HAS_B1: tl.constexpr, HAS_B3R: tl.constexpr, HAS_B5R: tl.constexpr, HAS_BP: tl.constexpr,
    RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, POOL_BLOCK_K: tl.constexpr,
):
    """wm is the merged 1x1 weight [NM, CIN] (rows: ch1x1, ch3x3red, ch5x5red), wp the pool
    projection's [CP, CIN]; both with unit stride along CIN and row strides swm, swp.  red is
    [P, RR] row-major (RR >= NM - C1); branch 1 goes to output channels 0.., the pool
    projection to OFF_P.."""
    num_n1 = (NM + BLOCK_N - 1) // BLOCK_N
    num_n = num_n1 + (CP + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n

    offs_m, m_mask, img, h, w = _pixel_tile(pid_m, P, H, W, BLOCK_M, INT64)
    x_row = img * sxn + h * sxh + w * sxw
    o_row = img * son + h * soh + w * sow
    # Each branch is a helper of its own: nothing is merged across the two (a runtime-uniform
    # branch per program, no values carried out of it).
    if pid_n < num_n1:
        _merged_1x1_tile(x_ptr, wm_ptr, b1_ptr, b3r_ptr, b5r_ptr, out_ptr, red_ptr, pid_n,
                         offs_m, m_mask, x_row, o_row, CIN, NM, C1, R3, RR, sxc, swm, soc,
                         HAS_B1, HAS_B3R, HAS_B5R, RELU, INT64, ALLOW_TF32, UPCAST,
                         BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        _pool_proj_tile(x_ptr, wp_ptr, bp_ptr, out_ptr, pid_n - num_n1, m_mask, h, w, x_row, o_row,
                        H, W, CIN, CP, OFF_P, sxc, sxh, sxw, swp, soc,
                        HAS_BP, RELU, INT64, ALLOW_TF32, UPCAST, BLOCK_M, BLOCK_N, POOL_BLOCK_K)


def grid(P, NM, CP):
    """Launch grid for a configuration's META dict."""
    def g(META):
        bn = META["BLOCK_N"]
        return (triton.cdiv(P, META["BLOCK_M"]) * (triton.cdiv(NM, bn) + triton.cdiv(CP, bn)),)
    return g
