"""Triton kernels for the rest of GoogLeNet in eval mode (network.py registers and launches them).

All outputs are NHWC in memory (written with the output tensor's own strides; network.py allocates
channels_last tensors).  fp32 accumulation; fp32/fp16/bf16 operands.

  * conv_gather_kernel: conv1 (7x7/2 pad 3) as an implicit GEMM whose reduction index runs over
    k = (ci * KS + ky) * KS + kx (the OIHW weight's own order), so Cin = 3 costs 147 reduction
    steps rather than 49 taps x a 16-wide padded channel chunk.  The A loader gathers
    x[n, ci, oh*S - PAD + ky, ow*S - PAD + kx] with x's own strides: an NCHW (or any-stride) input
    is read in place, no layout copy.  Epilogue: bias + ReLU, NHWC store.
  * conv_nhwc_kernel: a stride-1 KxK "same" convolution (conv2 1x1, conv3 3x3) as an implicit
    GEMM over (tap, channel chunk) like stage 2 of the Inception op, with an optional input
    transform computed in the A loader (POOL_K > 0): the ceil-mode POOL_K x POOL_K / POOL_S max
    pool of the tensor x that precedes it (conv2 reads conv1's output and pools it on the fly:
    maxpool1 has no tensor of its own), then, if LRN_SIZE > 0, the cross-channel local response
    normalization of the pooled values (the paper's lrn1), using the channel neighbours'
    pooled values (recomputed: 5 windows per element).  Epilogue: bias + ReLU, NHWC store.
  * max_pool_nhwc_kernel: a standalone ceil-mode max pool over an NHWC (any-stride) tensor, with an
    optional LRN applied to every tap before the max (the paper's lrn2 -> maxpool2 pair in one
    pass).  The whole-network forward uses it for that pair only: the other stage-transition
    pools (maxpool2 in torchvision, maxpool3, maxpool4) are computed by the next Inception
    module's stage-1 loaders (the pooled op, stage1.py's IN_POOL_K).
  * head_kernel: global average pool + flatten + linear in one launch (dropout is the identity
    in eval): out^T[j, n] = sum_c W[j, c] * mean_hw x[n, c, h, w] + b[j], computed as the GEMM
    W [classes, C] x pooled^T [C, batch] so that the class dimension (1000) is the MMA's M (wgmma
    on sm_90 for tiles of 64+ rows); the pooled operand is summed over the map in its loader
    (fp32), scaled by 1/HW and rounded to the operand dtype as torch's own avg pool output is.

LRN (nn.LocalResponseNorm): y[c] = x[c] / (k + alpha / size * sum_{c' in window(c)} x[c']^2)^beta,
window(c) = [c - size // 2, c + (size - 1) // 2] with zeros outside the channels; computed in
fp32 as x * exp2(-beta * log2(k + alpha / size * s)).

Max pools: no padding, ceil mode (the last window may hang over the edge; its taps past the edge
are excluded, -inf); NaN propagates as in torch.

As in stage1.py: every @triton.jit function these kernels call lives in this module or in
kernel_common.py (the backend loads private copies of both for the other interpreter mode), none
comes from triton.language's @jit standard library.
"""
import triton
import triton.language as tl

from .kernel_common import _epilogue, _load, _mma, _pixel_tile, _round_to, _wide


@triton.jit
def _lrn_scale(s, lrn_alpha_n, lrn_beta, lrn_k):
    """(k + alpha / size * s) ** -beta, fp32.  The scalars are cast to fp32 first: torch.compile's
    launcher declares Python floats as fp64 arguments, which would otherwise promote the LRN (and
    the loop-carried max of pool(lrn(x))) to fp64."""
    a = tl.cast(lrn_alpha_n, tl.float32)
    b = tl.cast(lrn_beta, tl.float32)
    k = tl.cast(lrn_k, tl.float32)
    return tl.exp2(-b * tl.log2(k + a * s))


@triton.jit
def _window_max(x_ptr, x_img, ph, pw, m_mask, cc, C, XH, XW, sxc, sxh, sxw,
                POOL_K: tl.constexpr, POOL_S: tl.constexpr, INT64: tl.constexpr):
    """[BM, BK] fp32: max over the POOL_K x POOL_K window at stride POOL_S of pooled pixel
    (ph, pw) (rows) for channels cc (columns) of x (XH x XW); ceil mode: taps past the edge are
    excluded.  -inf where the row is masked or the channel outside [0, C)."""
    c_ok = (cc >= 0) & (cc < C)
    cw = _wide(cc, INT64)
    h0 = ph * POOL_S
    w0 = pw * POOL_S
    best = tl.full((ph.shape[0], cc.shape[0]), float("-inf"), tl.float32)
    for t in tl.static_range(POOL_K * POOL_K):
        hh = h0 + t // POOL_K
        ww = w0 + t % POOL_K
        ok = m_mask & (hh < XH) & (ww < XW)
        mk = ok[:, None] & c_ok[None, :]
        v = tl.load(x_ptr + (x_img + hh * sxh + ww * sxw)[:, None] + cw[None, :] * sxc, mask=mk, other=0.0)
        v = tl.where(mk, v.to(tl.float32), float("-inf"))
        best = tl.maximum(best, v, propagate_nan=tl.PropagateNan.ALL)
    return best


@triton.jit
def _pool_lrn_tile(x_ptr, x_img, ph, pw, m_mask, cc, C, XH, XW, sxc, sxh, sxw,
                   lrn_alpha_n, lrn_beta, lrn_k,
                   POOL_K: tl.constexpr, POOL_S: tl.constexpr, LRN_SIZE: tl.constexpr,
                   LRN_FIRST: tl.constexpr, INT64: tl.constexpr):
    """[BM, BK] fp32 tile of pool(x) (no LRN), lrn(pool(x)) (LRN_FIRST False) or pool(lrn(x))
    (LRN_FIRST True) at pooled pixels (ph, pw), channels cc.  Masked rows/channels give 0."""
    c_ok = (cc >= 0) & (cc < C)
    mk = m_mask[:, None] & c_ok[None, :]
    if LRN_SIZE == 0:
        v = _window_max(x_ptr, x_img, ph, pw, m_mask, cc, C, XH, XW, sxc, sxh, sxw, POOL_K, POOL_S, INT64)
    elif not LRN_FIRST:
        # lrn(pool(x)): the pooled values of the channel neighbours, recomputed.  Runtime loops
        # (here and below) keep one window's loads in flight at a time (no spills).
        v = tl.full(mk.shape, 0.0, tl.float32)
        s = tl.full(mk.shape, 0.0, tl.float32)
        for d in range(0, LRN_SIZE):
            c2 = cc + (d - LRN_SIZE // 2)
            u = _window_max(x_ptr, x_img, ph, pw, m_mask, c2, C, XH, XW, sxc, sxh, sxw, POOL_K, POOL_S, INT64)
            # channels outside [0, C) count as zeros
            u = tl.where(m_mask[:, None] & ((c2 >= 0) & (c2 < C))[None, :], u, 0.0)
            s += u * u
            v = tl.where(d == LRN_SIZE // 2, u, v)
        v = v * _lrn_scale(s, lrn_alpha_n, lrn_beta, lrn_k)
    else:
        # pool(lrn(x)): LRN at every tap, then the max
        h0 = ph * POOL_S
        w0 = pw * POOL_S
        v = tl.full(mk.shape, float("-inf"), tl.float32)
        for t in range(0, POOL_K * POOL_K):
            hh = h0 + t // POOL_K
            ww = w0 + t % POOL_K
            ok = m_mask & (hh < XH) & (ww < XW)
            row = x_ptr + (x_img + hh * sxh + ww * sxw)[:, None]
            s = tl.full(mk.shape, 0.0, tl.float32)
            centre = tl.full(mk.shape, 0.0, tl.float32)
            for d in tl.static_range(LRN_SIZE):
                c2 = cc + (d - LRN_SIZE // 2)
                m2 = ok[:, None] & ((c2 >= 0) & (c2 < C))[None, :]
                u = tl.load(row + _wide(c2, INT64)[None, :] * sxc, mask=m2, other=0.0).to(tl.float32)
                s += u * u
                if d - LRN_SIZE // 2 == 0:
                    centre = u
            lv = centre * _lrn_scale(s, lrn_alpha_n, lrn_beta, lrn_k)
            lv = tl.where(ok[:, None] & c_ok[None, :], lv, float("-inf"))
            v = tl.maximum(v, lv, propagate_nan=tl.PropagateNan.ALL)
    return tl.where(mk, v, 0.0)


@triton.jit
def _conv_epilogue_store(acc, b_ptr, out_ptr, offs_n, n_mask, m_mask, o_row, soc,
                         HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr,
                         UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """The convolutions' epilogue: + bias (HAS_BIAS), ReLU, cast, and the masked NHWC store of
    the [BLOCK_M, BLOCK_N] tile at output rows o_row, channels offs_n (channel stride soc)."""
    bias = tl.full((BLOCK_N,), 0.0, tl.float32)
    if HAS_BIAS:
        bias += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    y = _epilogue(acc, bias, RELU, out_ptr.dtype.element_ty, UPCAST)
    tl.store(out_ptr + o_row[:, None] + _wide(offs_n, INT64)[None, :] * soc, y,
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def conv_gather_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    P, OH, OW, CIN, COUT, IH, IW, KTOT,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    son, soc, soh, sow,
    KS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[n, co, oh, ow] = relu(b[co] + sum_{ci,ky,kx} w[co, ci, ky, kx] *
    x[n, ci, oh*STRIDE - PAD + ky, ow*STRIDE - PAD + kx]) (zero padding); KTOT = CIN*KS*KS.
    Grid: 1-D over (row tile, column tile), column tiles fastest."""
    num_n = (COUT + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n
    offs_m, m_mask, img, oh, ow = _pixel_tile(pid_m, P, OH, OW, BLOCK_M, INT64)
    x_img = img * sxn
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < COUT
    w_col = w_ptr + _wide(offs_n, INT64) * swo
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, KTOT, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < KTOT
        ci = kk // (KS * KS)
        r = kk - ci * (KS * KS)
        ky = r // KS
        kx = r - ky * KS
        ih = ih0[:, None] + ky[None, :]
        iw = iw0[:, None] + kx[None, :]
        ok = (m_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW))
        a = _load(x_ptr + x_img[:, None] + _wide(ci, INT64)[None, :] * sxc + ih * sxh + iw * sxw, ok, UPCAST)
        b = _load(w_col[None, :] + (ci * swi + ky * swh + kx * sww)[:, None],
                  k_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    _conv_epilogue_store(acc, b_ptr, out_ptr, offs_n, n_mask, m_mask, img * son + oh * soh + ow * sow, soc,
                         HAS_BIAS, RELU, INT64, UPCAST, BLOCK_N)


@triton.jit
def conv_nhwc_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    P, OH, OW, CIN, COUT, XH, XW,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    son, soc, soh, sow,
    lrn_alpha_n, lrn_beta, lrn_k,
    KS: tl.constexpr, POOL_K: tl.constexpr, POOL_S: tl.constexpr, LRN_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Stride-1 KSxKS convolution with padding KS // 2 over the OH x OW map u, where
    u = x (POOL_K == 0; XH, XW = OH, OW) or u = lrn?(maxpool_{POOL_K}/{POOL_S}(x)) computed in the
    A loader from x (XH x XW) (LRN_SIZE > 0: the LRN after the pool; POOL_K = POOL_S = 1 gives the
    LRN alone).  w is [COUT, CIN, KS, KS] with its own strides.  Bias + ReLU epilogue."""
    num_n = (COUT + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n
    offs_m, m_mask, img, oh, ow = _pixel_tile(pid_m, P, OH, OW, BLOCK_M, INT64)
    x_img = img * sxn
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < COUT
    w_col = w_ptr + _wide(offs_n, INT64) * swo
    offs_k = tl.arange(0, BLOCK_K)
    n_cc = (CIN + BLOCK_K - 1) // BLOCK_K
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    if POOL_K == 0:
        x_row = x_img + oh * sxh + ow * sxw
        for it in range(0, KS * KS * n_cc):
            tap = it // n_cc
            c0 = (it - tap * n_cc) * BLOCK_K
            ky = tap // KS
            kx = tap - ky * KS
            hh = oh + (ky - KS // 2)
            ww = ow + (kx - KS // 2)
            ok = m_mask & (hh >= 0) & (hh < OH) & (ww >= 0) & (ww < OW)
            cc = c0 + offs_k
            c_mask = cc < CIN
            a = _load(x_ptr + (x_row + ((ky - KS // 2) * sxh + (kx - KS // 2) * sxw))[:, None]
                      + _wide(cc, INT64)[None, :] * sxc, ok[:, None] & c_mask[None, :], UPCAST)
            b = _load(w_col[None, :] + cc[:, None] * swi + (ky * swh + kx * sww),
                      c_mask[:, None] & n_mask[None, :], UPCAST)
            acc = _mma(a, b, acc, ALLOW_TF32)
    else:
        # Not software-pipelined: the window loads are in flight together in registers.
        for it in tl.range(0, KS * KS * n_cc, num_stages=1):
            tap = it // n_cc
            c0 = (it - tap * n_cc) * BLOCK_K
            ky = tap // KS
            kx = tap - ky * KS
            hh = oh + (ky - KS // 2)
            ww = ow + (kx - KS // 2)
            ok = m_mask & (hh >= 0) & (hh < OH) & (ww >= 0) & (ww < OW)
            cc = c0 + offs_k
            c_mask = cc < CIN
            v = _pool_lrn_tile(x_ptr, x_img, hh, ww, ok, cc, CIN, XH, XW, sxc, sxh, sxw,
                               lrn_alpha_n, lrn_beta, lrn_k, POOL_K, POOL_S, LRN_SIZE, False, INT64)
            if UPCAST:
                a = v
            else:
                a = v.to(x_ptr.dtype.element_ty)
            b = _load(w_col[None, :] + cc[:, None] * swi + (ky * swh + kx * sww),
                      c_mask[:, None] & n_mask[None, :], UPCAST)
            acc = _mma(a, b, acc, ALLOW_TF32)
    _conv_epilogue_store(acc, b_ptr, out_ptr, offs_n, n_mask, m_mask, img * son + oh * soh + ow * sow, soc,
                         HAS_BIAS, RELU, INT64, UPCAST, BLOCK_N)


@triton.jit
def max_pool_nhwc_kernel(
    x_ptr, out_ptr,
    P, OH, OW, C, XH, XW,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    lrn_alpha_n, lrn_beta, lrn_k,
    POOL_K: tl.constexpr, POOL_S: tl.constexpr, LRN_SIZE: tl.constexpr,
    INT64: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out = maxpool_{POOL_K}/{POOL_S}(lrn?(x)), ceil mode, no padding (LRN_SIZE > 0: the LRN at
    every tap before the max).  Grid: 1-D over (pixel tile, channel tile), channels fastest."""
    num_c = (C + BLOCK_C - 1) // BLOCK_C
    pid = tl.program_id(0)
    pid_m = pid // num_c
    pid_c = pid - pid_m * num_c
    offs_m, m_mask, img, oh, ow = _pixel_tile(pid_m, P, OH, OW, BLOCK_M, INT64)
    cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    v = _pool_lrn_tile(x_ptr, img * sxn, oh, ow, m_mask, cc, C, XH, XW, sxc, sxh, sxw,
                       lrn_alpha_n, lrn_beta, lrn_k, POOL_K, POOL_S, LRN_SIZE, True, INT64)
    y = _round_to(v, out_ptr.dtype.element_ty, UPCAST)
    o_row = img * son + oh * soh + ow * sow
    tl.store(out_ptr + o_row[:, None] + _wide(cc, INT64)[None, :] * soc, y,
             mask=m_mask[:, None] & (cc < C)[None, :])


@triton.jit
def head_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    NB, HW, W, C, NCLS, inv_hw,
    sxn, sxc, sxh, sxw,
    swj, swc, son, soj,
    HAS_BIAS: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[n, j] = b[j] + sum_c w[j, c] * mean_{h,w} x[n, c, h, w], as out^T = W x pooled^T:
    rows = classes (BLOCK_J), columns = images (BLOCK_B), reduction over channels (BLOCK_K); the
    pooled^T [BLOCK_K, BLOCK_B] operand is the fp32 sum over the map, times inv_hw, rounded to
    x's dtype.  Grid: 1-D over (image tile, class tile), class tiles fastest."""
    num_j = (NCLS + BLOCK_J - 1) // BLOCK_J
    pid = tl.program_id(0)
    pid_b = pid // num_j
    pid_j = pid - pid_b * num_j
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    j_mask = offs_j < NCLS
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = offs_b < NB
    x_col = x_ptr + _wide(offs_b, INT64) * sxn
    w_row = w_ptr + _wide(offs_j, INT64) * swj
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_J, BLOCK_B), 0.0, tl.float32)
    for k0 in range(0, C, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < C
        mk = k_mask[:, None] & b_mask[None, :]
        ptrs = x_col[None, :] + _wide(kk, INT64)[:, None] * sxc
        s = tl.full((BLOCK_K, BLOCK_B), 0.0, tl.float32)
        for p in range(0, HW):
            hh = p // W
            ww = p - hh * W
            s += tl.load(ptrs + (hh * sxh + ww * sxw), mask=mk, other=0.0).to(tl.float32)
        s = s * tl.cast(inv_hw, tl.float32)  # fp64 under torch.compile's launcher
        if UPCAST:
            pooled = _round_to(s, x_ptr.dtype.element_ty, UPCAST).to(tl.float32)
        else:
            pooled = s.to(x_ptr.dtype.element_ty)
        wt = _load(w_row[:, None] + kk[None, :] * swc, j_mask[:, None] & k_mask[None, :], UPCAST)
        acc = _mma(wt, pooled, acc, ALLOW_TF32)
    bias = tl.full((BLOCK_J,), 0.0, tl.float32)
    if HAS_BIAS:
        bias += tl.load(b_ptr + offs_j, mask=j_mask, other=0.0).to(tl.float32)
    acc = acc + bias[:, None]
    y = _round_to(acc, out_ptr.dtype.element_ty, UPCAST)
    tl.store(out_ptr + _wide(offs_b, INT64)[None, :] * son + _wide(offs_j, INT64)[:, None] * soj, y,
             mask=j_mask[:, None] & b_mask[None, :])
