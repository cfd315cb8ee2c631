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
With IN_POOL_K > 0 (a constexpr; 0 is the plain module) the module's input is the ceil-mode
IN_POOL_K x IN_POOL_K / IN_POOL_S max pool (no padding) of the tensor x (XH x XW), computed in the
A loaders while they load (no pooled tensor exists): H, W and the pixels p describe the pooled
grid, x's rows are read on the pre-pool one.
  * merged 1x1 tile: A[p, c] is the max over pooled pixel p's window (taps past the map's edge
    are -inf, so they never win);
  * pool projection tile: the 3x3/s1/p1 max of pooled values is the max over the union of the
    valid neighbouring windows, pre-pool rows IN_POOL_S*max(h-1, 0) .. min(IN_POOL_S*min(h+1,
    H-1) + IN_POOL_K - 1, XH - 1) (contiguous as IN_POOL_K >= IN_POOL_S), columns alike: a
    (2*IN_POOL_S + IN_POOL_K)^2 window of masked taps, one row of it in flight at a time.
Both loops then run unpipelined (the window's loads are in registers together; num_stages=1), with
K steps BLOCK_K and POOL_BLOCK_K as for the plain module.  NaN propagates through the maxima as in
torch's max_pool2d; masked elements are zeroed before the dot (no -inf, no 0 * inf there).
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
def _window_max_a(base, m_mask, k_mask, h0, w0, XH, XW, sxh, sxw,
                  IN_POOL_K: tl.constexpr, UPCAST: tl.constexpr):
    """The merged 1x1 tile's A operand on a pooled input: [BLOCK_M, BLOCK_K], the max over each
    row's IN_POOL_K x IN_POOL_K window whose first tap is pre-pool pixel (h0, w0) (``base``: the
    pointers of that tap); taps past the map's edge are -inf; 0 where a row or channel is masked."""
    mk = m_mask[:, None] & k_mask[None, :]
    a = _load_or_ninf(base, mk, UPCAST)  # the first tap lies inside the map (ceil mode's rule)
    for t in tl.static_range(1, IN_POOL_K * IN_POOL_K):
        dh = t // IN_POOL_K
        dw = t % IN_POOL_K
        ok = m_mask
        if dh > 0:
            ok = ok & (h0 + dh < XH)
        if dw > 0:
            ok = ok & (w0 + dw < XW)
        v = _load_or_ninf(base + (dh * sxh + dw * sxw), ok[:, None] & k_mask[None, :], UPCAST)
        a = tl.maximum(a, v, propagate_nan=tl.PropagateNan.ALL).to(v.dtype)
    return tl.where(mk, a, tl.full(a.shape, 0.0, a.dtype))


@triton.jit
def _union_max_a(base, m_mask, k_mask, h, w, XH, XW, sxh, sxw,
                 IN_POOL_K: tl.constexpr, IN_POOL_S: tl.constexpr, UPCAST: tl.constexpr):
    """The pool projection's A operand on a pooled input: [BLOCK_M, POOL_BLOCK_K], the 3x3/s1/p1
    max of the pooled values around pooled pixel (h, w) of the H x W grid, i.e. the max over the
    union of the valid neighbouring windows of x (XH x XW): rows S*max(h-1, 0) ..
    min(S*min(h+1, H-1) + K - 1, XH - 1), columns alike (S = IN_POOL_S, K = IN_POOL_K).  ``base``:
    the pointers of the pixel's own window's first tap (S*h, S*w); offsets below are relative to
    it.  0 where a row or channel is masked."""
    # (the clip at the map's edge also ends the last pooled pixel's union: in ceil mode the last
    # window reaches the edge, as K >= S)
    r_lo = tl.where(h >= 1, -IN_POOL_S, 0)
    r_hi = tl.minimum(IN_POOL_S + IN_POOL_K - 1, XH - 1 - h * IN_POOL_S)
    c_lo = tl.where(w >= 1, -IN_POOL_S, 0)
    c_hi = tl.minimum(IN_POOL_S + IN_POOL_K - 1, XW - 1 - w * IN_POOL_S)
    mk = m_mask[:, None] & k_mask[None, :]
    a = _load_or_ninf(base, mk, UPCAST)  # the pixel's own first tap: always in the union
    # A runtime loop over the union's 2S + K rows: one row of taps in flight at a time (no spills).
    for r in range(0, 2 * IN_POOL_S + IN_POOL_K):
        dr = r - IN_POOL_S
        row_ok = m_mask & (dr >= r_lo) & (dr <= r_hi)
        row = base + dr * sxh
        for c in tl.static_range(2 * IN_POOL_S + IN_POOL_K):
            dc = c - IN_POOL_S
            ok = row_ok & (dc >= c_lo) & (dc <= c_hi)
            v = _load_or_ninf(row + dc * sxw, ok[:, None] & k_mask[None, :], UPCAST)
            a = tl.maximum(a, v, propagate_nan=tl.PropagateNan.ALL).to(v.dtype)
    return tl.where(mk, a, tl.full(a.shape, 0.0, a.dtype))


@triton.jit
def _merged_1x1_tile(x_ptr, wm_ptr, b1_ptr, b3r_ptr, b5r_ptr, out_ptr, red_ptr, tile_n,
                     offs_m, m_mask, h, w, x_row, o_row, CIN, NM, C1, R3, RR, XH, XW,
                     sxc, sxh, sxw, swm, soc,
                     HAS_B1: tl.constexpr, HAS_B3R: tl.constexpr, HAS_B5R: tl.constexpr,
                     RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr,
                     UPCAST: tl.constexpr, IN_POOL_K: tl.constexpr, IN_POOL_S: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of the merged 1x1 GEMM: columns [ch1x1 | ch3x3red | ch5x5red]
    (IN_POOL_K > 0: over the pooled input, x_row being each row's window's first tap)."""
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
    if IN_POOL_K == 0:
        for k0 in range(0, CIN, BLOCK_K):
            kk = _wide(k0 + offs_k, INT64)
            k_mask = kk < CIN
            a = _load(x_ptr + x_row[:, None] + kk[None, :] * sxc, m_mask[:, None] & k_mask[None, :], UPCAST)
            b = _load(w_col[None, :] + kk[:, None], k_mask[:, None] & n_mask[None, :], UPCAST)
            acc = _mma(a, b, acc, ALLOW_TF32)
    else:
        # Not software-pipelined: the window's loads are in flight together, in registers.
        for k0 in tl.range(0, CIN, BLOCK_K, num_stages=1):
            kk = _wide(k0 + offs_k, INT64)
            k_mask = kk < CIN
            a = _window_max_a(x_ptr + x_row[:, None] + kk[None, :] * sxc, m_mask, k_mask,
                              h * IN_POOL_S, w * IN_POOL_S, XH, XW, sxh, sxw, IN_POOL_K, UPCAST)
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
                    H, W, CIN, CP, OFF_P, XH, XW, sxc, sxh, sxw, swp, soc,
                    HAS_BP: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr,
                    ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
                    IN_POOL_K: tl.constexpr, IN_POOL_S: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, POOL_BLOCK_K: tl.constexpr):
    """One tile of the pool projection; the A loader takes the 3x3/s1/p1 max (-inf padding), of
    x or (IN_POOL_K > 0) of the pooled input (_union_max_a)."""
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CP
    w_col = wp_ptr + offs_n * swp
    if IN_POOL_K == 0:
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
        if IN_POOL_K == 0:
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
        else:
            a = _union_max_a(centre, m_mask, k_mask, h, w, XH, XW, sxh, sxw,
                             IN_POOL_K, IN_POOL_S, UPCAST)
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
    P, H, W, CIN, NM, C1, R3, CP, RR, OFF_P, XH, XW,
    sxn, sxc, sxh, sxw,
    swm, swp,
    son, soc, soh, sow,
    HAS_B1: tl.constexpr, HAS_B3R: tl.constexpr, HAS_B5R: tl.constexpr, HAS_BP: tl.constexpr,
    RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    IN_POOL_K: tl.constexpr, IN_POOL_S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, POOL_BLOCK_K: tl.constexpr,
):
    """wm is the merged 1x1 weight [NM, CIN] (rows: ch1x1, ch3x3red, ch5x5red), wp the pool
    projection's [CP, CIN]; both with unit stride along CIN and row strides swm, swp.  red is
    [P, RR] row-major (RR >= NM - C1); branch 1 goes to output channels 0.., the pool
    projection to OFF_P..  IN_POOL_K = 0: x is the H x W input (XH, XW unused); IN_POOL_K > 0:
    the input is the ceil-mode IN_POOL_K x IN_POOL_K / IN_POOL_S max pool of x (XH x XW), whose
    H x W output grid the pixels P = N*H*W, red and the output are on."""
    num_n1 = (NM + BLOCK_N - 1) // BLOCK_N
    num_n = num_n1 + (CP + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n

    offs_m, m_mask, img, h, w = _pixel_tile(pid_m, P, H, W, BLOCK_M, INT64)
    if IN_POOL_K == 0:
        x_row = img * sxn + h * sxh + w * sxw
    else:
        x_row = img * sxn + (h * IN_POOL_S) * sxh + (w * IN_POOL_S) * sxw  # the window's first tap
    o_row = img * son + h * soh + w * sow
    # Each branch is a helper of its own: nothing is merged across the two (a runtime-uniform
    # branch per program, no values carried out of it).
    if pid_n < num_n1:
        _merged_1x1_tile(x_ptr, wm_ptr, b1_ptr, b3r_ptr, b5r_ptr, out_ptr, red_ptr, pid_n,
                         offs_m, m_mask, h, w, x_row, o_row, CIN, NM, C1, R3, RR, XH, XW,
                         sxc, sxh, sxw, swm, soc,
                         HAS_B1, HAS_B3R, HAS_B5R, RELU, INT64, ALLOW_TF32, UPCAST, IN_POOL_K, IN_POOL_S,
                         BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        _pool_proj_tile(x_ptr, wp_ptr, bp_ptr, out_ptr, pid_n - num_n1, m_mask, h, w, x_row, o_row,
                        H, W, CIN, CP, OFF_P, XH, XW, sxc, sxh, sxw, swp, soc,
                        HAS_BP, RELU, INT64, ALLOW_TF32, UPCAST, IN_POOL_K, IN_POOL_S,
                        BLOCK_M, BLOCK_N, POOL_BLOCK_K)


def grid(P, NM, CP):
    """Launch grid for a configuration's META dict."""
    def g(META):
        bn = META["BLOCK_N"]
        return (triton.cdiv(P, META["BLOCK_M"]) * (triton.cdiv(NM, bn) + triton.cdiv(CP, bn)),)
    return g
