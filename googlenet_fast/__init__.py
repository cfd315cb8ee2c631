"""googlenet_fast: GoogLeNet (Inception v1) with fused Inception-module kernels.

Public API:
    inception(x, w_1x1, b_1x1, ...)  the fused Inception op (see googlenet_fast.ops.inception)
    GoogLeNet, googlenet             the drop-in model (variant="torchvision" | "paper", fused=True)
    capture_cuda_graph(model, x)     a callable replaying model's forward from a CUDA graph
"""
__version__ = "0.1.0"

from .ops import inception, InceptionShape, check_inception_args  # noqa: F401
from .model import GoogLeNet, GoogLeNetOutputs, Inception, InceptionAux, BasicConv2d, googlenet  # noqa: F401,E402
from .cuda_graph import capture as capture_cuda_graph, CapturedForward  # noqa: F401,E402
