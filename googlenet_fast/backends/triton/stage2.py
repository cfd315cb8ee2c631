"""Stage 2 of the fused Inception forward (Triton): one launch for the KxK convolutions of both
reduce branches, as implicit GEMMs over the scratch matrix red[P, ch3x3red + ch5x5red] that
stage 1 wrote (NHWC rows; branch 2 reads columns [0, ch3x3red), branch 3 the rest).

Column tiles cover [ ch3x3 | ch5x5 ]; the tile index picks the branch (kernel size K3 or K5, both
odd, padding K//2).  The K loop of a tile runs over (tap, channel chunk) pairs, flattened into
one loop so that it pipelines: for tap (ky, kx) the A tile is the reduce output of the pixel
shifted by (ky - K//2, kx - K//2), i.e. row p + dy*W + dx of red, masked to zero outside the
image (zero padding, as the convolution's); no im2col buffer exists.  The B tile is
w[co, ci, ky, kx] read with the weight's own strides (channels_last weights, OHWI in memory,
give unit stride along ci: the fast layout).  Epilogue as in stage 1, writing each branch into
its channel slice of the output.

Every @triton.jit function this kernel calls lives in this module or in kernel_common.py, and
none comes from triton.language's @jit standard library (see stage1.py).
"""
import triton
import triton.language as tl

from .kernel_common import _epilogue, _load, _mma, _pixel_tile, _wide


@triton.jit
def inception_stage2_kernel(
    red_ptr, w3_ptr, w5_ptr, b3_ptr, b5_ptr, out_ptr, ss_ptr,
    P, H, W, R3, R5, RR, C3, C5, OFF_3, OFF_5,
    sw3o, sw3h, sw3w,
    sw5o, sw5h, sw5w, swi,
    son, soc, soh, sow,
    K3: tl.constexpr, K5: tl.constexpr, HAS_B3: tl.constexpr, HAS_B5: tl.constexpr,
    W_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr, BN: tl.constexpr,
    RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """red is [P, RR] row-major (RR >= R3 + R5); w3 is [C3, R3, K3, K3], w5 [C5, R5, K5, K5]
    (any strides, one stride swi along the input channels for both).  W_ALIGN divides their
    o/h/w strides and C_ALIGN both reduce widths: facts that let Triton vectorize (and so
    pipeline) the loads of 4b/4c, whose ch5x5red = 24 defeats its divisible-by-16
    specialization.  Branch 2 goes to output channels OFF_3.., branch 3 to OFF_5..

    One code path for both branches: the branch's scalars (weight, strides, kernel size, reduce
    slice, output slice) are picked per program, so there is a single K loop, software-pipelined
    with one set of shared-memory buffers (two inlined loops would each get their own).

    BN (train-mode BatchNorm, bn_train.py): red holds the PRE-BatchNorm reduce outputs and the A
    loader applies relu(v * scale[c] + shift[c]) (ss is fp32 [2, RR]: scale row then shift row,
    per reduce channel), taps outside the image staying 0 (the convolution pads the activation);
    the caller then passes no bias and RELU off for the epilogue."""
    num_n3 = (C3 + BLOCK_N - 1) // BLOCK_N
    num_n = num_n3 + (C5 + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n
    # The branch's scalars, picked per program.  tl.where on scalars (not an if/else that
    # assigns them) so that constexpr operands (K3, HAS_B3, ...) become runtime values the same
    # way on every Triton version; pointers, always runtime values, go through one if/else.
    is3 = pid_n < num_n3
    tile_n = tl.where(is3, pid_n, pid_n - num_n3)
    KS = tl.where(is3, K3, K5)
    has_bias = tl.where(is3, HAS_B3, HAS_B5)
    ROFF = tl.where(is3, 0, R3)
    RC = tl.where(is3, R3, R5)
    OFF = tl.where(is3, OFF_3, OFF_5)
    COUT = tl.where(is3, C3, C5)
    swo = tl.where(is3, sw3o, sw5o)
    swh = tl.where(is3, sw3h, sw5h)
    sww = tl.where(is3, sw3w, sw5w)
    if is3:
        w_ptr = w3_ptr
        b_ptr = b3_ptr
    else:
        w_ptr = w5_ptr
        b_ptr = b5_ptr
    PAD = KS // 2
    # Alignment facts Triton loses when the two branches' values are merged above, restated as
    # arithmetic it can read (v // A * A == v: the host computed A to divide v): the channel mask
    # stays constant over a vector of A channels and the weight rows start A-aligned, so loads
    # vectorize and the loop pipelines.
    RC = RC // C_ALIGN * C_ALIGN
    swo = swo // W_ALIGN * W_ALIGN
    swh = swh // W_ALIGN * W_ALIGN
    sww = sww // W_ALIGN * W_ALIGN

    offs_m, m_mask, img, h, w = _pixel_tile(pid_m, P, H, W, BLOCK_M, INT64)
    o_row = img * son + h * soh + w * sow

    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < COUT
    offs_k = tl.arange(0, BLOCK_K)
    a_row = red_ptr + offs_m * RR + ROFF      # [BLOCK_M] pointers: this pixel's reduce channels
    w_col = w_ptr + offs_n * swo              # [BLOCK_N] pointers: this output channel's filter
    n_cc = (RC + BLOCK_K - 1) // BLOCK_K
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for it in range(0, KS * KS * n_cc):
        tap = it // n_cc
        c0 = (it - tap * n_cc) * BLOCK_K
        ky = tap // KS
        kx = tap - ky * KS
        dy = ky - PAD
        dx = kx - PAD
        hh = h + dy
        ww = w + dx
        ok = m_mask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        cc = c0 + offs_k
        c_mask = cc < RC
        a_mask = ok[:, None] & c_mask[None, :]
        a = _load(a_row[:, None] + (dy * W + dx) * RR + cc[None, :], a_mask, UPCAST)
        if BN:
            scale = tl.load(ss_ptr + ROFF + cc, mask=c_mask, other=0.0)
            shift = tl.load(ss_ptr + RR + ROFF + cc, mask=c_mask, other=0.0)
            v = a.to(tl.float32) * scale[None, :] + shift[None, :]
            v = tl.where(v < 0.0, 0.0, v)  # (NaN kept, as torch.relu)
            a = tl.where(a_mask, v, 0.0).to(a.dtype)
        b = _load(w_col[None, :] + cc[:, None] * swi + (ky * swh + kx * sww),
                  c_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    bias = tl.full((BLOCK_N,), 0.0, tl.float32)
    if has_bias:
        bias += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    y = _epilogue(acc, bias, RELU, out_ptr.dtype.element_ty, UPCAST)
    tl.store(out_ptr + o_row[:, None] + _wide(OFF + offs_n, INT64)[None, :] * soc, y,
             mask=m_mask[:, None] & n_mask[None, :])


def grid(P, C3, C5):
    """Launch grid for a configuration's META dict."""
    def g(META):
        bn = META["BLOCK_N"]
        return (triton.cdiv(P, META["BLOCK_M"]) * (triton.cdiv(C3, bn) + triton.cdiv(C5, bn)),)
    return g
