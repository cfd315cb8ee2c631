"""Tile configurations of the Triton Inception kernels, and why each is there.

Both stages are GEMMs over pixels: M = N*H*W pixels (NHWC rows), N = output channels, K = input
channels (stage 1: Cin; stage 2: K*K taps x reduce channels).  What varies across GoogLeNet's
nine Inception modules and the batch sizes that matter (1, 32, 256) is mostly M: from 49 pixels
(5a/5b at batch 1, a single row tile) to 200,704 (3a/3b at batch 256).  N is 80..624 per stage,
K is 192..832 (stage 1) and 9*16..9*192 (stage 2).  So the set is small and spans M:

half precision (fp16/bf16; tensor cores: wgmma on sm_90 when BLOCK_M >= 64 and num_warps is a
multiple of 4, mma.sync on sm_80), BLOCK_M x BLOCK_N x BLOCK_K, warps, pipeline stages:
  * 128x128x64, 8 warps, 3 stages: the large-M workhorse (batch 32/256), full wgmma tiles;
  * 128x64x64,  8 warps, 4 stages: large M with narrow column segments (pool_proj and ch5x5 are
    32..128 wide) that would waste half of a 128-wide tile;
  * 64x128x64,  4 warps, 3 stages: medium M (batch 1 at 28x28 = 784 pixels) with more row tiles;
  * 64x64x64,   4 warps, 3 stages: small M (14x14 maps at batch 1), twice the programs of the above;
  * 32x64x128 (stage 2: 32x64x64), 4 warps, 2 stages: tiny M (7x7 = 49 pixels at batch 1): more
    programs in flight (mma.sync; wgmma needs M >= 64), fewer K iterations.
Stage 1's pool projection loads its A tile as nine shifted tiles of x (the 3x3 max) held in
registers at once and is not software-pipelined; POOL_K narrows its K step (32 instead of 64)
for the tiles where nine [BLOCK_M, BLOCK_K] loads per thread would otherwise spill (128x128 and
64x128: 16 instead of 32 elements per thread per tap).
Shared memory is at most stages * (BM*BK + BK*BN) * 2 bytes = 96 KiB, inside both sm_80 (163
KiB) and sm_90 (227 KiB) limits.  tests/test_triton_compile.py compiles every configuration for
sm_90 and sm_80 and checks: no spills (STACK 0; 72..224 registers per thread), shared memory
within the limit, wgmma (HGMMA) on sm_90, pipelined GEMM loops.

Stage 1 with a max pool in its loaders (the pooled op, ``inception_pooled_triton``: maxpool2/3/4
fused into the next module) has configurations of its own, the same M x N shapes: both of its
loops load a window per element (KxK taps in the merged 1x1 tile, (2S+K)^2 in the pool
projection, one row of them at a time) and run unpipelined (num_stages 1, nothing to
multi-buffer), with K steps narrowed until the sm_90 and sm_80 builds are spill-free
(tests/test_triton_compile.py): half 128x128 (K 32, pool K 16, 8 warps), 128x64 (32/16, 8),
64x128 (16/16, 8 warps where 4 spilled on sm_80), 64x64 (32/32, 4), 32x64 (64/32, 4); fp32
64x64x16 (8 warps where 4 spilled on sm_80), 32x64x32 and 64x32x32 with a 16-wide pool K step.

float32: IEEE fp32 dots (``input_precision="ieee"``) run on the FMA units, with both operand
tiles in registers, so tiles are smaller to stay spill-free (64x64x16, 32x64x32, 64x32x32); the
same configurations serve TF32 (when torch.backends.cuda.matmul allows it).

Without autotuning ($GOOGLENET_FAST_TRITON_AUTOTUNE=0: no benchmarking on a shape's first call,
fewer compiles) heuristic_tile() picks by pixel count.

Under TRITON_INTERPRET=1 the interpreter pays ~2 ms of Python per program per loop iteration,
nearly whatever the tile size, so one fixed configuration with big tiles keeps the program count
and the iteration count low (CI runs small maps, where a single row tile covers the batch); its
BLOCK_M (and stage 2's BLOCK_K) shrink to the problem, as the interpreter's dots cost grows with
the tile.

Autotuning keys (the arguments whose change can change the best tile): stage 1 on P (pixels),
CIN, NM (ch1x1+ch3x3red+ch5x5red) and CP (pool_proj), the pooled stage 1 also on the pre-pool
map (XH, XW) and the pool (IN_POOL_K, IN_POOL_S); stage 2 on P, R3, R5, C3, C5, K3, K5.
Triton adds the tensors' dtypes to the key itself.
"""
from typing import Dict, List, NamedTuple


class Tile(NamedTuple):
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    POOL_K: int = 0  # stage 1's pool-projection K step (0: BLOCK_K); see the module docstring

    def meta(self, stage: int) -> Dict[str, int]:
        m = {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K}
        if stage == 1:
            m["POOL_BLOCK_K"] = self.POOL_K or self.BLOCK_K
        return m


STAGE1_HALF: List[Tile] = [
    Tile(128, 128, 64, 8, 3, POOL_K=32),
    Tile(128, 64, 64, 8, 4),
    Tile(64, 128, 64, 4, 3, POOL_K=32),
    Tile(64, 64, 64, 4, 3),
    Tile(32, 64, 128, 4, 2),
]

# Stage 2's K loop runs over (tap, 32- or 64-channel chunk); reduce widths are 16..192, so a
# 64-wide chunk wastes little on ch3x3red and a 32-wide one less on ch5x5red (16..48).
STAGE2_HALF: List[Tile] = [
    Tile(128, 128, 64, 8, 3),
    Tile(128, 64, 32, 4, 4),
    Tile(64, 128, 32, 4, 3),
    Tile(64, 64, 64, 4, 3),
    Tile(32, 64, 64, 4, 2),
]

STAGE1_FP32: List[Tile] = [
    Tile(64, 64, 16, 4, 2),
    Tile(32, 64, 32, 4, 2),
    Tile(64, 32, 32, 4, 2),
]

STAGE2_FP32: List[Tile] = [
    Tile(64, 64, 16, 4, 3),  # 3 stages: 2 spilled on sm_80 under Triton 3.6
    Tile(32, 64, 32, 4, 2),
    Tile(64, 32, 32, 4, 2),
]

# Stage 1 over a max-pooled input (IN_POOL_K > 0); see the module docstring.
STAGE1_POOLED_HALF: List[Tile] = [
    Tile(128, 128, 32, 8, 1, POOL_K=16),
    Tile(128, 64, 32, 8, 1, POOL_K=16),
    Tile(64, 128, 16, 8, 1, POOL_K=16),  # K 16: 32 spilled on sm_80 (4a) under Triton 3.6
    Tile(64, 64, 32, 4, 1, POOL_K=32),
    Tile(32, 64, 64, 4, 1, POOL_K=32),
]

STAGE1_POOLED_FP32: List[Tile] = [
    Tile(64, 64, 16, 8, 1, POOL_K=16),
    Tile(32, 64, 32, 4, 1, POOL_K=16),
    Tile(64, 32, 32, 4, 1, POOL_K=16),
]

# Under the interpreter: one program covers up to 64 pixels and 256 channels, and stage 2 takes
# up to 256 reduce channels per tap in one step (ch3x3red <= 192 in Table 1).  The tiles shrink
# to the problem (the interpreter's dot costs grow with the tile, its loop steps do not).
INTERPRET_STAGE1 = Tile(64, 256, 256, 4, 1)
INTERPRET_STAGE2 = Tile(64, 256, 256, 4, 1)


def _pow2_between(v: int, lo: int, hi: int) -> int:
    p = lo
    while p < v and p < hi:
        p *= 2
    return p


def interpret_tile(stage: int, P: int, r3: int, r5: int) -> Tile:
    """The fixed interpreter tile, shrunk to the problem: BLOCK_M to the pixel count (>= 16, the
    smallest dot), stage 2's BLOCK_K to the wider reduce branch."""
    t = INTERPRET_STAGE1 if stage == 1 else INTERPRET_STAGE2
    bm = _pow2_between(P, 16, t.BLOCK_M)
    bk = t.BLOCK_K if stage == 1 else _pow2_between(max(r3, r5), 16, t.BLOCK_K)
    return t._replace(BLOCK_M=bm, BLOCK_K=bk)

STAGE1_KEY = ["P", "CIN", "NM", "CP"]
STAGE1_POOLED_KEY = STAGE1_KEY + ["XH", "XW", "IN_POOL_K", "IN_POOL_S"]
STAGE2_KEY = ["P", "R3", "R5", "C3", "C5", "K3", "K5"]

# Shared-memory capacity per block (bytes) of the architectures we compile for.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def tiles(stage: int, half: bool, pooled: bool = False) -> List[Tile]:
    """The autotuned configurations of stage 1 or 2 for half precision or float32 (``pooled``:
    stage 1 with a max pool in its loaders; stage 2 does not change)."""
    if stage == 1:
        if pooled:
            return STAGE1_POOLED_HALF if half else STAGE1_POOLED_FP32
        return STAGE1_HALF if half else STAGE1_FP32
    return STAGE2_HALF if half else STAGE2_FP32


def heuristic_tile(stage: int, P: int, half: bool, pooled: bool = False) -> Tile:
    """One configuration by pixel count, for runs without autotuning: the largest tile whose
    row-tile count still fills an H100/H200 (132 SMs) a few times over (P: pixels of the
    module's output, the pooled grid for a pooled stage 1)."""
    t = tiles(stage, half, pooled)
    if not half:
        return t[0] if P >= 4096 else t[1]
    if P >= 16384:
        return t[0]   # 128x128
    if P >= 2048:
        return t[2]   # 64x128
    if P >= 256:
        return t[3]   # 64x64
    return t[4]       # 32x64


def smem_estimate(t: Tile, elem_bytes: int) -> int:
    """Pipelined operand buffers: num_stages copies of the A and B tiles."""
    return max(t.num_stages, 1) * (t.BLOCK_M * t.BLOCK_K + t.BLOCK_K * t.BLOCK_N) * elem_bytes


def triton_configs(stage: int, half: bool, pooled: bool = False):
    import triton
    return [triton.Config(t.meta(stage), num_warps=t.num_warps, num_stages=t.num_stages)
            for t in tiles(stage, half, pooled)]


# ----------------------------------------------------------------------------------------------
# Backward kernels (backward.py).  One configuration per kernel and precision for now (no
# autotuning): 64x64 tiles with 64-wide K steps on tensor cores for half precision (wgmma on sm_90:
# BLOCK_M = 64, 4 warps), 64x64x16 on the FMA units for fp32 (as the forward's fp32 tiles).
#   reduce: the recomputed reduce activations (GEMM over Cin);
#   dgrad:  dA = [dY1 | dR3 | dR5] (KxK dgrad, K loop over taps x output-channel chunks);
#   dpool:  the pool projection's dgrad + window argmax (K loop over pool_proj);
#   dx:     [dY1 | dR3 | dR5] Wm + the pool gather (K loop over ch1x1+ch3x3red+ch5x5red);
#   wgrad:  the weight gradients, rows = output channels, K loop over pixels (split-K); the pool
#           projection's ("wgrad_pool": its B loader takes the 3x3 max, nine loads in flight)
#           runs unpipelined with a 32-pixel K step (64 reached 255 registers on sm_90);
#   dpool takes 8 warps (its argmax epilogue spilled on sm_80 with 4).
BWD_HALF: Dict[str, Tile] = {
    "reduce": Tile(64, 64, 64, 4, 3),
    "dgrad": Tile(64, 64, 64, 4, 3),
    "dpool": Tile(64, 64, 64, 8, 3),
    "dx": Tile(64, 64, 64, 4, 3),
    "wgrad": Tile(64, 64, 64, 4, 3),
    "wgrad_pool": Tile(64, 64, 32, 4, 1),
    "wgrad_kxk": Tile(64, 64, 64, 4, 3),
}
BWD_FP32: Dict[str, Tile] = {k: Tile(64, 64, 16, 4, 2) for k in BWD_HALF}
BWD_FP32["wgrad_pool"] = Tile(64, 64, 16, 4, 1)
# 8 warps where 4 spilled on sm_90 (dx: the pool gather's nine loads next to the accumulator;
# wgrad: the pixel decomposition of the K step); the KxK wgrad stays at 4 (8 spilled there) with
# 3 stages (2 spilled on sm_80 under Triton 3.6).
BWD_FP32["dx"] = Tile(64, 64, 16, 8, 2)
BWD_FP32["wgrad"] = Tile(64, 64, 16, 8, 2)
BWD_FP32["wgrad_kxk"] = Tile(64, 64, 16, 4, 3)
BWD_KINDS = tuple(BWD_HALF)
# Split-K of the weight gradients: enough (tiles x splits) programs to fill ~2 waves of an
# H100/H200 (132 SMs), each split at least BWD_MIN_SPLIT_PIXELS pixels.
BWD_TARGET_PROGRAMS = 264
BWD_MIN_SPLIT_PIXELS = 1024


def bwd_tile(kind: str, half: bool) -> Tile:
    return (BWD_HALF if half else BWD_FP32)[kind]


def bwd_interpret_tile(kind: str, P: int, rows: int, cols: int, k: int) -> Tile:
    """Under the interpreter: one big tile shrunk to the problem (>= 16, the smallest dot; rows
    and K steps along pixels at most 64, channel dimensions at most 256)."""
    pix = lambda v: _pow2_between(v, 16, 64)  # noqa: E731
    ch = lambda v: _pow2_between(v, 16, 256)  # noqa: E731
    if kind.startswith("wgrad"):
        return Tile(ch(rows), ch(cols), pix(P), 4, 1)
    return Tile(pix(P), ch(cols), ch(k), 4, 1)


def bwd_split(P: int, tiles: int, block_k: int, interpret: bool) -> int:
    """Number of pixel splits of a weight-gradient launch with ``tiles`` output tiles."""
    if interpret or P <= BWD_MIN_SPLIT_PIXELS:
        return 1
    want = -(-BWD_TARGET_PROGRAMS // max(tiles, 1))
    return max(1, min(want, P // BWD_MIN_SPLIT_PIXELS))
