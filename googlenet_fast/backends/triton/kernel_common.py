"""@triton.jit helpers shared by the Triton kernel modules (stage1.py, stage2.py, backward.py,
network_kernels.py).

The kernel modules import these by name with a relative import (``from .kernel_common import
...``).  The backend loads private copies of the kernel modules for the mode (interpreted or
compiled) that the package's own copy was not built for (triton.jit reads TRITON_INTERPRET when
it decorates), as modules of a private package per mode (backends/triton/__init__.py,
``_load_private``): their relative import then finds that package's own copy of this module,
built in the same mode, so a kernel never calls a helper of the other mode.

Only triton.language builtins are used (tl.full, tl.where, tl.dot, ...), none of its @jit
standard library (tl.cdiv, tl.zeros, ...): those are built once, when triton is imported, for one
mode only, so they would break switching to the interpreter after import.
"""
import triton
import triton.language as tl


@triton.jit
def _mma(a, b, acc, ALLOW_TF32: tl.constexpr):
    """acc += a @ b (fp32 accumulation; fp64 for fp64 operands); fp32 operands: IEEE products
    unless TF32 is allowed."""
    if a.dtype == tl.float64:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        if ALLOW_TF32:
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _load(ptrs, mask, UPCAST: tl.constexpr):
    """Masked load, 0 where masked.  UPCAST (interpreter + bf16 only): return float32; Triton's
    interpreter keeps bf16 as raw 16-bit integers, so its max, dot and rounding are wrong on them."""
    v = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        v = v.to(tl.float32)
    return v


@triton.jit
def _load_or_ninf(ptrs, mask, UPCAST: tl.constexpr):
    """Masked load, -inf where masked (max-pool padding)."""
    if UPCAST:
        v = tl.where(mask, tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), float("-inf"))
    else:
        v = tl.load(ptrs, mask=mask, other=float("-inf"))
    return v


@triton.jit
def _wide(v, INT64: tl.constexpr):
    """v as int64 in the 64-bit offset variant (so products with strides cannot overflow)."""
    if INT64:
        v = v.to(tl.int64)
    return v


@triton.jit
def _round_to(acc, out_dtype: tl.constexpr, UPCAST: tl.constexpr):
    """acc cast to the output dtype, rounding to nearest even (by hand under UPCAST, where the
    interpreter would truncate fp32 -> bf16)."""
    if UPCAST:
        bits = acc.to(tl.uint32, bitcast=True)
        bits = tl.where(acc != acc, 0x7FC00000, bits + 0x7FFF + ((bits >> 16) & 1))
        y = (bits >> 16).to(tl.uint16).to(out_dtype, bitcast=True)
    else:
        y = acc.to(out_dtype)
    return y


@triton.jit
def _epilogue(acc, bias, RELU: tl.constexpr, out_dtype: tl.constexpr, UPCAST: tl.constexpr):
    """acc + bias (per column), ReLU (NaN kept, as torch.relu), cast to the output dtype."""
    acc = acc + bias[None, :]
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)
    return _round_to(acc, out_dtype, UPCAST)


@triton.jit
def _pixel_tile(pid_m, P, H, W, BLOCK_M: tl.constexpr, INT64: tl.constexpr):
    """Row tile pid_m of the NHWC pixels p = (n*H + h)*W + w: (offs_m, offs_m < P, n, h, w), the
    offsets int64 in the 64-bit offset variant."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if INT64:
        offs_m = offs_m.to(tl.int64)
    m_mask = offs_m < P
    HW = H * W
    img = offs_m // HW
    rem = offs_m - img * HW
    h = rem // W
    w = rem - h * W
    return offs_m, m_mask, img, h, w
