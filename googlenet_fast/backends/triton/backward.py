"""The fused Inception backward (Triton kernels).  Host side: backends/triton/__init__.py
(``inception_backward_triton`` and the autograd of ``inception_triton``).

Forward, per pixel p (NHWC rows): m = x Wm^T (Wm = [W_1x1; W_3x3red; W_5x5red]) -> b1 | r3 | r5;
R3 = act(r3), R5 = act(r5); b2 = convK3(R3), b3 = convK5(R5); b4 = maxpool3x3(x) Wp^T;
y = act(b1 | b2 | b3 | b4).  dY = grad_out * (y > 0) when relu (torch's threshold_backward), read
from grad_out and the saved forward output by every loader that needs it (any strides: expanded
zero strides, NCHW, channels_last); no masked copy of grad_out exists.

Launches (each only when a requested gradient needs it):
  0. the reduce activations R = act(x [W_3x3red; W_5x5red]^T + b) into red[P, RR]: the forward's
     stage-1 kernel with no branch-1 and no pool-projection columns (recomputed, not saved: the
     autograd saves x, the weights and the output only);
  1. ``inception_bwd_dgrad_kernel`` MODE 0: dA[P, NM] = [dY1 | dR3 | dR5] in x's dtype: the dY1
     columns copied through the ReLU mask; dR3/dR5 as implicit GEMMs over dY2/dY3 with flipped
     taps (A = dY at pixel p - (ky - K//2, kx - K//2), B = W[co, ci, ky, kx]), both KxK branches
     in one code path (scalars picked per program, as stage 2), the reduce ReLU mask (R > 0)
     applied in the epilogue;
     MODE 1: the pool projection's dgrad dPooled = dY4 Wp [P, Cin] (fp32), and in the same
     epilogue the argmax of each 3x3 window (torch's scan: rows then columns, the first maximum
     wins ties, a NaN wins and the last NaN is kept; taps outside the image are not in the
     window), stored as a tap code 0..8 (int8) [P, Cin];
  2. ``inception_bwd_dx_kernel``: dx = [dY1 | dR3 | dR5] Wm (ONE GEMM for the three sibling 1x1s)
     + the max-pool backward as a gather in the epilogue: for each of the 9 windows q containing
     p, dPooled[q] is added where q's argmax code points at p.  No atomics, deterministic;
  3. ``inception_bwd_wgrad_kernel`` (split-K over pixels into fp32 partials [SPLIT, ...] summed by
     the host in split order, deterministic):
     MODE 0: the sibling 1x1 wgrads as ONE GEMM dA^T x ([NM, Cin]) and their bias gradients
             (column sums of dA, by the programs of the first Cin tile);
     MODE 1: the pool projection's wgrad dY4^T maxpool(x) (the A loader takes the 3x3 max as the
             forward's stage 1) and its bias gradient;
     MODE 2: the KxK wgrads, implicit GEMMs dY^T im2col(R) per tap (both branches, one code path)
             and their bias gradients.
float64 is supported under the interpreter only (gradcheck); float32, float16, bfloat16 with
fp32 accumulation.  As stage1.py, every @triton.jit function used here lives in this module or in
kernel_common.py and only triton.language builtins are used (the backend loads private copies
for the other interpreter mode).
"""
import triton
import triton.language as tl

from .kernel_common import _load, _load_or_ninf, _mma, _pixel_tile, _round_to, _wide


@triton.jit
def _grad(g_ptrs, o_ptrs, mask, RELU: tl.constexpr, UPCAST: tl.constexpr):
    """grad_out through the branch ReLU: 0 where the forward output is <= 0 (or NaN), as torch's
    threshold_backward."""
    v = _load(g_ptrs, mask, UPCAST)
    if RELU:
        o = tl.load(o_ptrs, mask=mask, other=0.0)
        if UPCAST:
            o = o.to(tl.float32)
        v = tl.where(o > 0.0, v, 0.0)
    return v


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _zeros(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, F64: tl.constexpr):
    if F64:
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float64)
    else:
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    return acc


# ----------------------------------------------------------------------------------------------
# 1. dA = [dY1 | dR3 | dR5] (MODE 0); dPooled and the window argmax codes (MODE 1)

@triton.jit
def _dy1_tile(g_ptr, o_ptr, da_ptr, tile_n, offs_m, m_mask, g_row, o_row, C1, NM, sgc, soc,
              RELU: tl.constexpr, INT64: tl.constexpr, UPCAST: tl.constexpr,
              BLOCK_N: tl.constexpr):
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C1
    cn = _wide(offs_n, INT64)
    mk = m_mask[:, None] & n_mask[None, :]
    v = _grad(g_ptr + g_row[:, None] + cn[None, :] * sgc, o_ptr + o_row[:, None] + cn[None, :] * soc,
              mk, RELU, UPCAST)
    tl.store(da_ptr + offs_m[:, None] * NM + cn[None, :], _round_to(v, da_ptr.dtype.element_ty, UPCAST),
             mask=mk)


@triton.jit
def _dred_tile(g_ptr, o_ptr, w3_ptr, w5_ptr, red_ptr, da_ptr, tile, NT3, offs_m, m_mask, h, w,
               g_row, o_row, H, W, C1, NM, RR, R3, R5, C3, C5, OFF_3, OFF_5,
               sgc, sgh, sgw, soc, soh, sow,
               sw3o, sw3i, sw3h, sw3w, sw5o, sw5i, sw5h, sw5w,
               K3: tl.constexpr, K5: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr,
               ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dR[q, ci] = sum_{ky,kx,co} dY[q - (ky-PAD, kx-PAD), co] W[co, ci, ky, kx], then * (R > 0)."""
    is3 = tile < NT3
    tile_n = tl.where(is3, tile, tile - NT3)
    KS = tl.where(is3, K3, K5)
    ROFF = tl.where(is3, 0, R3)
    RC = tl.where(is3, R3, R5)
    OFFO = tl.where(is3, OFF_3, OFF_5)
    COUT = tl.where(is3, C3, C5)
    swo = tl.where(is3, sw3o, sw5o)
    swi = tl.where(is3, sw3i, sw5i)
    swh = tl.where(is3, sw3h, sw5h)
    sww = tl.where(is3, sw3w, sw5w)
    if is3:
        w_ptr = w3_ptr
    else:
        w_ptr = w5_ptr
    PAD = KS // 2
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)   # reduce channel ci
    n_mask = offs_n < RC
    offs_k = tl.arange(0, BLOCK_K)
    w_row = w_ptr + offs_n * swi                        # [BLOCK_N] pointers (transposed filter)
    n_cc = (COUT + BLOCK_K - 1) // BLOCK_K
    acc = _zeros(BLOCK_M, BLOCK_N, F64)
    for it in range(0, KS * KS * n_cc):
        tap = it // n_cc
        c0 = (it - tap * n_cc) * BLOCK_K
        ky = tap // KS
        kx = tap - ky * KS
        dy = ky - PAD
        dx = kx - PAD
        hh = h - dy
        ww = w - dx
        ok = m_mask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        co = c0 + offs_k
        c_mask = co < COUT
        cg = _wide(OFFO + co, INT64)
        mk = ok[:, None] & c_mask[None, :]
        a = _grad(g_ptr + (g_row - dy * sgh - dx * sgw)[:, None] + cg[None, :] * sgc,
                  o_ptr + (o_row - dy * soh - dx * sow)[:, None] + cg[None, :] * soc, mk, RELU, UPCAST)
        b = _load(w_row[None, :] + co[:, None] * swo + (ky * swh + kx * sww),
                  c_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    mk = m_mask[:, None] & n_mask[None, :]
    cr = _wide(ROFF + offs_n, INT64)
    if RELU:
        r = tl.load(red_ptr + offs_m[:, None] * RR + cr[None, :], mask=mk, other=0.0)
        if UPCAST:
            r = r.to(tl.float32)
        acc = tl.where(r > 0.0, acc, 0.0)
    tl.store(da_ptr + offs_m[:, None] * NM + (C1 + cr)[None, :],
             _round_to(acc, da_ptr.dtype.element_ty, UPCAST), mask=mk)


@triton.jit
def _dpool_tile(g_ptr, o_ptr, wp_ptr, x_ptr, dpool_ptr, code_ptr, tile_n, offs_m, m_mask, h, w,
                g_row, o_row, x_row, H, W, CIN, CP, OFF_P, sgc, soc, sxc, sxh, sxw, swp,
                RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr,
                UPCAST: tl.constexpr, F64: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dPooled[q, ci] = sum_c dY4[q, c] Wp[c, ci]; code[q, ci] = the argmax tap of window q."""
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)   # input channel ci
    n_mask = offs_n < CIN
    cn = _wide(offs_n, INT64)
    offs_k = tl.arange(0, BLOCK_K)
    acc = _zeros(BLOCK_M, BLOCK_N, F64)
    for c0 in range(0, CP, BLOCK_K):
        c = c0 + offs_k
        c_mask = c < CP
        cg = _wide(OFF_P + c, INT64)
        a = _grad(g_ptr + g_row[:, None] + cg[None, :] * sgc, o_ptr + o_row[:, None] + cg[None, :] * soc,
                  m_mask[:, None] & c_mask[None, :], RELU, UPCAST)
        b = _load(wp_ptr + _wide(c, INT64)[:, None] * swp + cn[None, :],
                  c_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    # The window's argmax, scanned as torch's max_pool2d does (rows, then columns).
    mk = m_mask[:, None] & n_mask[None, :]
    centre = x_ptr + x_row[:, None] + cn[None, :] * sxc
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
    code = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)
    for t in tl.static_range(9):
        dh = t // 3 - 1
        dw = t % 3 - 1
        inwin = m_mask & (h + dh >= 0) & (h + dh < H) & (w + dw >= 0) & (w + dw < W)
        iw = inwin[:, None] & n_mask[None, :]
        v = tl.load(centre + (dh * sxh + dw * sxw), mask=iw, other=0.0).to(tl.float32)
        take = iw & ((v > best) | (v != v))
        code = tl.where(take | (iw & (code < 0)), t, code)
        best = tl.where(take, v, best)
    out_off = offs_m[:, None] * CIN + cn[None, :]
    tl.store(dpool_ptr + out_off, acc, mask=mk)
    tl.store(code_ptr + out_off, code.to(tl.int8), mask=mk)


@triton.jit
def inception_bwd_dgrad_kernel(
    g_ptr, o_ptr, x_ptr, red_ptr, w3_ptr, w5_ptr, wp_ptr, da_ptr, dpool_ptr, code_ptr,
    P, H, W, CIN, C1, R3, R5, C3, C5, CP, NM, RR, OFF_3, OFF_5, OFF_P,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw,
    sw3o, sw3i, sw3h, sw3w, sw5o, sw5i, sw5h, sw5w, swp,
    NT1, NT3, NT5,
    MODE: tl.constexpr, K3: tl.constexpr, K5: tl.constexpr, RELU: tl.constexpr,
    INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """MODE 0: column tiles [NT1 of dY1 | NT3 of dR3 | NT5 of dR5] (a count of 0 skips a part);
    MODE 1: column tiles over Cin of dPooled / code.  da is [P, NM] row-major, dpool and code
    [P, CIN]; red [P, RR] holds R (read for the reduce ReLU masks only)."""
    if MODE == 0:
        num_n = NT1 + NT3 + NT5
    else:
        num_n = (CIN + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n
    offs_m, m_mask, img, h, w = _pixel_tile(pid_m, P, H, W, BLOCK_M, INT64)
    g_row = img * sgn + h * sgh + w * sgw
    o_row = img * son + h * soh + w * sow
    if MODE == 0:
        if pid_n < NT1:
            _dy1_tile(g_ptr, o_ptr, da_ptr, pid_n, offs_m, m_mask, g_row, o_row, C1, NM, sgc, soc,
                      RELU, INT64, UPCAST, BLOCK_N)
        else:
            _dred_tile(g_ptr, o_ptr, w3_ptr, w5_ptr, red_ptr, da_ptr, pid_n - NT1, NT3, offs_m, m_mask,
                       h, w, g_row, o_row, H, W, C1, NM, RR, R3, R5, C3, C5, OFF_3, OFF_5,
                       sgc, sgh, sgw, soc, soh, sow,
                       sw3o, sw3i, sw3h, sw3w, sw5o, sw5i, sw5h, sw5w,
                       K3, K5, RELU, INT64, ALLOW_TF32, UPCAST, F64, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        x_row = img * sxn + h * sxh + w * sxw
        _dpool_tile(g_ptr, o_ptr, wp_ptr, x_ptr, dpool_ptr, code_ptr, pid_n, offs_m, m_mask, h, w,
                    g_row, o_row, x_row, H, W, CIN, CP, OFF_P, sgc, soc, sxc, sxh, sxw, swp,
                    RELU, INT64, ALLOW_TF32, UPCAST, F64, BLOCK_M, BLOCK_N, BLOCK_K)


# ----------------------------------------------------------------------------------------------
# 2. dx = dA Wm + the max-pool backward (gather)

@triton.jit
def inception_bwd_dx_kernel(
    da_ptr, wm_ptr, dpool_ptr, code_ptr, dx_ptr,
    P, H, W, CIN, NM, swm, sdn, sdc, sdh, sdw,
    HAS_POOL: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """da [P, NM] row-major, wm [NM, CIN] (unit stride along CIN), dpool/code [P, CIN]."""
    num_n = (CIN + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n
    offs_m, m_mask, img, h, w = _pixel_tile(pid_m, P, H, W, BLOCK_M, INT64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CIN
    cn = _wide(offs_n, INT64)
    offs_k = tl.arange(0, BLOCK_K)
    acc = _zeros(BLOCK_M, BLOCK_N, F64)
    for k0 in range(0, NM, BLOCK_K):
        kk = _wide(k0 + offs_k, INT64)
        k_mask = kk < NM
        a = _load(da_ptr + offs_m[:, None] * NM + kk[None, :], m_mask[:, None] & k_mask[None, :], UPCAST)
        b = _load(wm_ptr + kk[:, None] * swm + cn[None, :], k_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    if HAS_POOL:
        # Window q = p - (dh, dw) holds p at its tap t = (dh + 1) * 3 + (dw + 1).
        for t in tl.static_range(9):
            dh = t // 3 - 1
            dw = t % 3 - 1
            ok = m_mask & (h - dh >= 0) & (h - dh < H) & (w - dw >= 0) & (w - dw < W)
            mk = ok[:, None] & n_mask[None, :]
            q = (offs_m - (dh * W + dw))[:, None] * CIN + cn[None, :]
            c = tl.load(code_ptr + q, mask=mk, other=-1).to(tl.int32)
            v = tl.load(dpool_ptr + q, mask=mk & (c == t), other=0.0)
            acc += v
    d_row = img * sdn + h * sdh + w * sdw
    tl.store(dx_ptr + d_row[:, None] + cn[None, :] * sdc,
             _round_to(acc, dx_ptr.dtype.element_ty, UPCAST),
             mask=m_mask[:, None] & n_mask[None, :])


# ----------------------------------------------------------------------------------------------
# 3. Weight and bias gradients (split-K over pixels into partials ws[SPLIT, WS_STRIDE])

@triton.jit
def _pixels(k0, offs_k, k_hi, H, W, INT64: tl.constexpr):
    p = _wide(k0 + offs_k, INT64)
    HW = H * W
    img = p // HW
    rem = p - img * HW
    h = rem // W
    w = rem - h * W
    return p, p < k_hi, img, h, w


@triton.jit
def _wgrad_1x1_tile(da_ptr, x_ptr, ws, tile, NT_N, k_lo, k_hi, H, W, CIN, NM,
                    sxn, sxc, sxh, sxw, OW, OB, BIAS_ONLY: tl.constexpr,
                    INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
                    F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """dWm[j, ci] = sum_p dA[p, j] x[p, ci]; bias: sum_p dA[p, j] (tile column 0)."""
    tile_m = tile // NT_N
    tile_n = tile - tile_m * NT_N
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < NM
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CIN
    cn = _wide(offs_n, INT64)
    offs_k = tl.arange(0, BLOCK_K)
    acc = _zeros(BLOCK_M, BLOCK_N, F64)
    bsum = _zeros(BLOCK_M, 1, F64)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        p, k_mask, img, h, w = _pixels(k0, offs_k, k_hi, H, W, INT64)
        a = _load(da_ptr + p[None, :] * NM + offs_m[:, None], m_mask[:, None] & k_mask[None, :], UPCAST)
        if not BIAS_ONLY:
            b = _load(x_ptr + (img * sxn + h * sxh + w * sxw)[:, None] + cn[None, :] * sxc,
                      k_mask[:, None] & n_mask[None, :], UPCAST)
            acc = _mma(a, b, acc, ALLOW_TF32)
        if tile_n == 0:
            bsum += tl.reduce(a.to(bsum.dtype), 1, _add, keep_dims=True)
    if not BIAS_ONLY:
        tl.store(ws + OW + offs_m[:, None] * CIN + cn[None, :], acc, mask=m_mask[:, None] & n_mask[None, :])
    if tile_n == 0:
        tl.store(ws + OB + offs_m[:, None], bsum, mask=m_mask[:, None])


@triton.jit
def _wgrad_pool_tile(g_ptr, o_ptr, x_ptr, ws, tile, NT_N, k_lo, k_hi, H, W, CIN, CP, OFF_P,
                     sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw, OW, OB,
                     BIAS_ONLY: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr,
                     UPCAST: tl.constexpr, F64: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dWp[c, ci] = sum_p dY4[p, c] maxpool(x)[p, ci]; bias: sum_p dY4[p, c]."""
    tile_m = tile // NT_N
    tile_n = tile - tile_m * NT_N
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < CP
    cg = _wide(OFF_P + offs_m, INT64)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < CIN
    cn = _wide(offs_n, INT64)
    offs_k = tl.arange(0, BLOCK_K)
    acc = _zeros(BLOCK_M, BLOCK_N, F64)
    bsum = _zeros(BLOCK_M, 1, F64)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=1):
        p, k_mask, img, h, w = _pixels(k0, offs_k, k_hi, H, W, INT64)
        a = _grad(g_ptr + (img * sgn + h * sgh + w * sgw)[None, :] + cg[:, None] * sgc,
                  o_ptr + (img * son + h * soh + w * sow)[None, :] + cg[:, None] * soc,
                  m_mask[:, None] & k_mask[None, :], RELU, UPCAST)
        if not BIAS_ONLY:
            mk = k_mask[:, None] & n_mask[None, :]
            centre = x_ptr + (img * sxn + h * sxh + w * sxw)[:, None] + cn[None, :] * sxc
            b = _load_or_ninf(centre, mk, UPCAST)
            for t in tl.static_range(9):
                if t != 4:
                    dh = t // 3 - 1
                    dw = t % 3 - 1
                    ok = k_mask & (h + dh >= 0) & (h + dh < H) & (w + dw >= 0) & (w + dw < W)
                    v = _load_or_ninf(centre + (dh * sxh + dw * sxw), ok[:, None] & n_mask[None, :], UPCAST)
                    b = tl.maximum(b, v, propagate_nan=tl.PropagateNan.ALL).to(v.dtype)
            b = tl.where(mk, b, tl.full(b.shape, 0.0, b.dtype))
            acc = _mma(a, b, acc, ALLOW_TF32)
        if tile_n == 0:
            bsum += tl.reduce(a.to(bsum.dtype), 1, _add, keep_dims=True)
    if not BIAS_ONLY:
        tl.store(ws + OW + offs_m[:, None] * CIN + cn[None, :], acc, mask=m_mask[:, None] & n_mask[None, :])
    if tile_n == 0:
        tl.store(ws + OB + offs_m[:, None], bsum, mask=m_mask[:, None])


@triton.jit
def _wgrad_kxk_tile(g_ptr, o_ptr, red_ptr, ws, tile, NT3, k_lo, k_hi, H, W, RR, R3, R5, C3, C5,
                    OFF_3, OFF_5, sgn, sgc, sgh, sgw, son, soc, soh, sow, OW_3, OW_5, OB_3, OB_5,
                    BIAS_ONLY: tl.constexpr, K3: tl.constexpr, K5: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr,
                    ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW[co, ci, ky, kx] = sum_p dY[p, co] R[p + (ky-PAD, kx-PAD), ci] (0 outside the image);
    bias: sum_p dY[p, co] (tap 0, tile column 0).  Partials stored dense [COUT, RC, KS, KS]."""
    # tiles of branch b: KS*KS taps x MT row tiles x NT column tiles; NT3 = that count for K3
    MT3 = (C3 + BLOCK_M - 1) // BLOCK_M
    NN3 = (R3 + BLOCK_N - 1) // BLOCK_N
    MT5 = (C5 + BLOCK_M - 1) // BLOCK_M
    NN5 = (R5 + BLOCK_N - 1) // BLOCK_N
    is3 = tile < NT3
    t = tl.where(is3, tile, tile - NT3)
    KS = tl.where(is3, K3, K5)
    MT = tl.where(is3, MT3, MT5)
    NN = tl.where(is3, NN3, NN5)
    ROFF = tl.where(is3, 0, R3)
    RC = tl.where(is3, R3, R5)
    OFFO = tl.where(is3, OFF_3, OFF_5)
    COUT = tl.where(is3, C3, C5)
    OW = tl.where(is3, OW_3, OW_5)
    OB = tl.where(is3, OB_3, OB_5)
    PAD = KS // 2
    per_tap = MT * NN
    tap = t // per_tap
    t2 = t - tap * per_tap
    tile_m = t2 // NN
    tile_n = t2 - tile_m * NN
    ky = tap // KS
    kx = tap - ky * KS
    dy = ky - PAD
    dx = kx - PAD
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)   # output channel co
    m_mask = offs_m < COUT
    cg = _wide(OFFO + offs_m, INT64)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)   # reduce channel ci
    n_mask = offs_n < RC
    cr = _wide(ROFF + offs_n, INT64)
    offs_k = tl.arange(0, BLOCK_K)
    acc = _zeros(BLOCK_M, BLOCK_N, F64)
    bsum = _zeros(BLOCK_M, 1, F64)
    first = (tap == 0) & (tile_n == 0)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        p, k_mask, img, h, w = _pixels(k0, offs_k, k_hi, H, W, INT64)
        a = _grad(g_ptr + (img * sgn + h * sgh + w * sgw)[None, :] + cg[:, None] * sgc,
                  o_ptr + (img * son + h * soh + w * sow)[None, :] + cg[:, None] * soc,
                  m_mask[:, None] & k_mask[None, :], RELU, UPCAST)
        if not BIAS_ONLY:
            hh = h + dy
            ww = w + dx
            ok = k_mask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            b = _load(red_ptr + (p + (dy * W + dx))[:, None] * RR + cr[None, :],
                      ok[:, None] & n_mask[None, :], UPCAST)
            acc = _mma(a, b, acc, ALLOW_TF32)
        if first:
            bsum += tl.reduce(a.to(bsum.dtype), 1, _add, keep_dims=True)
    if not BIAS_ONLY:
        KK = KS * KS
        tl.store(ws + OW + (offs_m[:, None] * RC + offs_n[None, :]) * KK + tap, acc,
                 mask=m_mask[:, None] & n_mask[None, :])
    if first:
        tl.store(ws + OB + offs_m[:, None], bsum, mask=m_mask[:, None])


@triton.jit
def inception_bwd_wgrad_kernel(
    g_ptr, o_ptr, x_ptr, da_ptr, red_ptr, ws_ptr,
    P, H, W, CIN, NM, RR, CP, R3, R5, C3, C5, OFF_3, OFF_5, OFF_P,
    sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw,
    NT_N, NT3, OW_A, OB_A, OW_3, OW_5, OB_3, OB_5, WS_STRIDE, K_CHUNK,
    MODE: tl.constexpr, BIAS_ONLY: tl.constexpr, K3: tl.constexpr, K5: tl.constexpr,
    RELU: tl.constexpr, INT64: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid (tiles, SPLIT); split s sums pixels [s*K_CHUNK, (s+1)*K_CHUNK) into ws[s].
    MODE 0 (sibling 1x1s) and 1 (pool projection): tiles = row tiles x NT_N column tiles over Cin
    (NT_N = 1 when only the bias gradients are wanted); weights at OW_A, biases at OB_A.
    MODE 2 (KxK): tiles = [K3*K3*... of branch 2 (NT3 of them) | branch 3].
    BIAS_ONLY: only the bias gradients (the B operand, e.g. R or x, is not read; the host then
    launches the first tap's / first column's tiles only)."""
    tile = tl.program_id(0)
    split = tl.program_id(1)
    k_lo = split * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, P)
    ws = ws_ptr + _wide(split, INT64) * WS_STRIDE
    if MODE == 0:
        _wgrad_1x1_tile(da_ptr, x_ptr, ws, tile, NT_N, k_lo, k_hi, H, W, CIN, NM,
                        sxn, sxc, sxh, sxw, OW_A, OB_A, BIAS_ONLY,
                        INT64, ALLOW_TF32, UPCAST, F64, BLOCK_M, BLOCK_N, BLOCK_K)
    elif MODE == 1:
        _wgrad_pool_tile(g_ptr, o_ptr, x_ptr, ws, tile, NT_N, k_lo, k_hi, H, W, CIN, CP, OFF_P,
                         sgn, sgc, sgh, sgw, son, soc, soh, sow, sxn, sxc, sxh, sxw, OW_A, OB_A,
                         BIAS_ONLY, RELU, INT64, ALLOW_TF32, UPCAST, F64, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        _wgrad_kxk_tile(g_ptr, o_ptr, red_ptr, ws, tile, NT3, k_lo, k_hi, H, W, RR, R3, R5, C3, C5,
                        OFF_3, OFF_5, sgn, sgc, sgh, sgw, son, soc, soh, sow, OW_3, OW_5, OB_3, OB_5,
                        BIAS_ONLY, K3, K5, RELU, INT64, ALLOW_TF32, UPCAST, F64, BLOCK_M, BLOCK_N, BLOCK_K)


# ----------------------------------------------------------------------------------------------
# 0. The reduce activations R = act(x Wr^T + b) (recomputed for the ReLU masks and KxK wgrads)

@triton.jit
def inception_bwd_reduce_kernel(
    x_ptr, wr_ptr, b3r_ptr, b5r_ptr, red_ptr,
    P, H, W, CIN, R3, NR, RR, sxn, sxc, sxh, sxw, swr,
    HAS_B3R: tl.constexpr, HAS_B5R: tl.constexpr, RELU: tl.constexpr, INT64: tl.constexpr,
    ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr, F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """red[p, j] = act(x[p] . wr[j] + b[j]) for j < NR = R3 + R5; wr is [NR, CIN] (unit stride
    along CIN, row stride swr), red [P, RR] row-major.  (The forward's stage 1 without its
    branch-1 and pool columns; a kernel of its own so that float64 accumulates in float64.)"""
    num_n = (NR + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n
    offs_m, m_mask, img, h, w = _pixel_tile(pid_m, P, H, W, BLOCK_M, INT64)
    x_row = img * sxn + h * sxh + w * sxw
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < NR
    offs_k = tl.arange(0, BLOCK_K)
    acc = _zeros(BLOCK_M, BLOCK_N, F64)
    for k0 in range(0, CIN, BLOCK_K):
        kk = _wide(k0 + offs_k, INT64)
        k_mask = kk < CIN
        a = _load(x_ptr + x_row[:, None] + kk[None, :] * sxc, m_mask[:, None] & k_mask[None, :], UPCAST)
        b = _load(wr_ptr + _wide(offs_n, INT64)[None, :] * swr + kk[:, None],
                  k_mask[:, None] & n_mask[None, :], UPCAST)
        acc = _mma(a, b, acc, ALLOW_TF32)
    if HAS_B3R:
        acc += tl.load(b3r_ptr + offs_n, mask=offs_n < R3, other=0.0).to(acc.dtype)[None, :]
    if HAS_B5R:
        acc += tl.load(b5r_ptr + (offs_n - R3), mask=(offs_n >= R3) & n_mask, other=0.0).to(acc.dtype)[None, :]
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)
    tl.store(red_ptr + offs_m[:, None] * RR + offs_n[None, :],
             _round_to(acc, red_ptr.dtype.element_ty, UPCAST),
             mask=m_mask[:, None] & n_mask[None, :])
