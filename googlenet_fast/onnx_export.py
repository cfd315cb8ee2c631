"""ONNX export of GoogLeNet (fused or not) as standard ONNX operators.

Plain ``torch.onnx.export(model, (x,), path)`` works on ``GoogLeNet(fused=True)`` with either
exporter: while ``torch.onnx.export`` traces, the model's fused paths step aside and the plain
modules run (see ``googlenet_fast.model._exporting_to_onnx``), so the file holds Conv, Relu,
MaxPool, Concat, Gemm, ... (BatchNorm folded into Conv by the exporters): the graph torchvision's
googlenet exports for the same weights.  The paper variant exports too (its LocalResponseNorm
becomes Pow/AveragePool/Div).  An ``ExportedProgram`` from ``torch.export.export`` keeps the
fused op ``googlenet_fast::inception`` (for torch.compile / AOTInductor) and has no ONNX
translation: export the module, or set ``model.fused = False`` before ``torch.export.export``.

:func:`export_onnx` wraps that call for the bench's engine providers: float32, a dynamic batch
dimension, the input named ``x`` and the output ``logits``.
"""
import os
from typing import Union

import torch
from torch import Tensor

from .arg_checks import check_4d_tensor

INSTALL_HINT = "pip install onnxruntime openvino onnx onnxscript"
INPUT_NAME = "x"
OUTPUT_NAME = "logits"


def export_onnx(model: torch.nn.Module, path: Union[str, os.PathLike], example: Tensor, *,
                dynamo: bool = True, dynamic_batch: bool = True) -> str:
    """Write ``model`` (eval mode, float32) to ``path`` as an ONNX file; returns the path.

    Args:
        model: an eval-mode module mapping (N, 3, H, W) float32 images to (N, classes) logits:
            ``GoogLeNet`` (fused or not, either variant) or torchvision's googlenet.
        path: the .onnx file to write (its folder must exist).
        example: (N, 3, H, W) float32 CPU tensor, the traced input; H and W are fixed in the
            file (the size the file will be run at).
        dynamo: True (default): the torch.export-based exporter (needs onnxscript); False: the
            TorchScript one.
        dynamic_batch: leave the batch dimension free (named "batch"); else N is fixed.

    Returns:
        ``str(path)``.  The graph's input is ``x`` (batch, 3, H, W) float32, its output
        ``logits`` (batch, classes) float32.

    Raises:
        TypeError: ``model`` is not an nn.Module, ``example`` not a float32 tensor.
        ValueError: ``model`` in train mode, ``example`` not 4-D or not on the CPU.
        ImportError: onnx / onnxscript missing (the message says how to install them).
        torch.onnx.OnnxExporterError (or the model's own error, e.g. an input too small): the
            export failed.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model: expected eval mode (call model.eval() first): the exported graph "
                         "is the inference graph")
    check_4d_tensor(example, "example")
    if example.dtype != torch.float32:
        raise TypeError(f"example: expected a float32 tensor (the ONNX file is float32), got {example.dtype}")
    if example.device.type != "cpu":
        raise ValueError(f"example: expected a CPU tensor, got one on {example.device}")
    example = example.contiguous()
    kwargs = {}
    if dynamic_batch and dynamo:
        if example.shape[0] == 1:
            # torch.export specializes a dimension of size 1: trace a batch of two.
            example = example.expand(2, -1, -1, -1).contiguous()
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    if dynamo:
        kwargs["verbose"] = False
    try:
        import onnx  # noqa: F401  (both exporters write the file through it)
        if dynamo:
            import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"export_onnx: {e.name or e} is not installed; install with: {INSTALL_HINT}") from e
    with torch.no_grad():
        torch.onnx.export(model, (example,), os.fspath(path), dynamo=dynamo, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], **kwargs)
    return os.fspath(path)
