"""Tile configurations of the network kernels (network_kernels.py), one per kernel and precision.

No autotuning: these kernels are a small share of the network (the stem's 3x3 conv is the one
GEMM of size; conv1, conv2, the pools and the head are memory-bound or tiny), so one
configuration each, chosen so that it compiles spill-free on sm_90 and sm_80 and, in half
precision, runs wgmma on sm_90 (BLOCK_M >= 64, warps a multiple of 4); see
tests/test_triton_network_compile.py.

  conv1 (gather loader, K = 3*7*7 = 147):   half 128x64x32, 4 warps, 2 stages; fp32 64x64x16;
  conv3 (3x3, tap x 64-channel loop):       half 128x64x64, 4 warps, 3 stages; fp32 64x64x16;
  conv2 (1x1 with the 3x3/2 max pool in its loader: 9 loads per element, not pipelined):
        half 64x64x32, 4 warps; fp32 64x64x16;
  conv2 with the pool and the LRN (paper; 45 loads per element, one 9-tap window in flight at a
        time): 64x64x16, 8 warps (4 warps spill on sm_80);
  max pool: 64 pixels x 64 channels, 4 warps; with the LRN at every tap (paper's maxpool2):
        32 x 64 (64 x 64 spills);
  head (classes x images x channels):       half 128x32x64, 4 warps; fp32 64x32x32.

The interpreter (TRITON_INTERPRET=1) pays per program and loop step, not per element: big tiles
shrunk to the problem (pow2 >= the dimension, capped).
"""
from typing import NamedTuple


class Tile(NamedTuple):
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int = 4
    num_stages: int = 2


GPU_TILES = {
    # kind: (half tile, fp32 tile)
    "conv_gather": (Tile(128, 64, 32, 4, 2), Tile(64, 64, 16, 4, 2)),
    "conv": (Tile(128, 64, 64, 4, 3), Tile(64, 64, 16, 4, 2)),
    "conv_pool": (Tile(64, 64, 32, 4, 1), Tile(64, 64, 16, 8, 1)),
    "conv_pool_lrn": (Tile(64, 64, 16, 8, 1), Tile(64, 64, 16, 8, 1)),
    # pool: BLOCK_M pixels x BLOCK_N channels (BLOCK_K unused)
    "pool": (Tile(64, 64, 0, 4, 1), Tile(64, 64, 0, 4, 1)),
    "pool_lrn": (Tile(32, 64, 0, 4, 1), Tile(32, 64, 0, 4, 1)),
    # head: BLOCK_M classes x BLOCK_N images x BLOCK_K channels
    "head": (Tile(128, 32, 64, 4, 2), Tile(64, 32, 32, 8, 2)),
}

KINDS = tuple(GPU_TILES)


def gpu_tile(kind: str, half: bool) -> Tile:
    return GPU_TILES[kind][0 if half else 1]


def _pow2_between(v: int, lo: int, hi: int) -> int:
    p = lo
    while p < v and p < hi:
        p *= 2
    return p


def interpret_tile(kind: str, m: int, n: int, k: int) -> Tile:
    """Interpreter tile for a launch of ``m`` rows, ``n`` columns, ``k`` reduction (per step)."""
    if kind in ("pool", "pool_lrn"):
        return Tile(_pow2_between(m, 16, 128), _pow2_between(n, 16, 256), 0, 4, 1)
    return Tile(_pow2_between(m, 16, 128), _pow2_between(n, 16, 256), _pow2_between(k, 16, 256), 4, 1)
