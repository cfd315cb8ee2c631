"""float32 convolutions on the CPU as three bfloat16 products (bf16x3), behind PyTorch's own switch.

``torch.set_float32_matmul_precision("high")`` (or ``"medium"``; with torch 2.14's per-backend API:
``torch.backends.mkldnn.matmul`` or ``.conv.fp32_precision = "tf32"`` or ``"bf16"``) lets the
fused model's CPU eval path run each float32 convolution and inner product whose weight it keeps
packed as ONE bfloat16 oneDNN primitive over three times the input channels, accumulated in float32:
``x * w ~= hi(x) hi(w) + lo(x) hi(w) + hi(x) lo(w)``, where hi is the bfloat16 nearest a value and
lo the bfloat16 nearest the rest.  That is the "sum of two bfloat16 numbers" PyTorch's
documentation of "high" names (torch.set_float32_matmul_precision).  Inputs, outputs and every
element pass (bias, ReLU, pools, concatenation) stay float32.

Where it runs: by default ("auto") where oneDNN's ISA has AMX, whose bfloat16 tiles run ~16x the
float32 FMA rate; with AVX512-BF16 alone three bfloat16 products cost more than one float32 pass,
so the mode leaves float32 there.  The default precision ("highest") is never affected, nor are
training, eval with gradients to the parameters (weights folded per call, not packed), float64,
bfloat16 and the GPU.

Accuracy: ~2^-17 per product instead of float32's 2^-24, 15-22x float32's error on the logits
(relative to the largest logit, against float64): 1.0e-5 for the randomized test model
(tests/test_bf16x3.py), 7.2e-5 for the bench's network on its photos at 224x224, 1.9e-4 to 3.2e-4
for README's example network on ``torch.rand`` images (4 seeds), where IEEE float32 has 6e-7, 4e-6
and 1.1e-5 to 1.5e-5.  So it is not IEEE float32: ``bench --matmul-precision high`` checks it against 1e-3
(TF32 class; "high" also allows TF32), not float32's 1e-4.  Subnormal values count as zero (as in
AMX's products).  A non-finite input stays non-finite, but an inf may come out as NaN
(inf * lo(w) = NaN where w is exactly a bfloat16).  Source: csrc/cpu/bf16x3.h.
"""
from .backends import native

MODES = ("auto", "on", "off")


def bf16x3_status() -> str:
    """Whether a float32 eval convolution of the fused CPU path runs as bf16x3 right now:
    ``"active"``, or ``"inactive: <why>"`` (the precision is IEEE, no AMX under mode "auto",
    mode "off", no AVX512-BF16 for the split, the direct oneDNN path off or unavailable, or no
    extension).  Reads the current precision setting (see :func:`_mkldnn_precision`)."""
    if not native.available():
        return "inactive: googlenet_fast's extension is not built"
    active, amx, split, precision, mode = native._C._bf16x3_status()
    if active:
        return "active"
    if not precision:
        return ("inactive: oneDNN's float32 precision is IEEE (matmul "
                f"{_mkldnn_precision('matmul')!r}, conv {_mkldnn_precision('conv')!r}); "
                "torch.set_float32_matmul_precision('high') allows bf16x3")
    if mode == "off":
        return "inactive: mode 'off'"
    if native._C._direct_onednn_status() != "enabled":
        return "inactive: direct oneDNN path " + native._C._direct_onednn_status()
    if not split:
        return "inactive: no AVX-512 with AVX512-BF16 for the split (or GOOGLENET_FAST_PORTABLE_LOOPS set)"
    return "inactive: oneDNN has no AMX here (mode 'auto'; 'on' forces bf16x3)"


def _mkldnn_precision(op: str) -> str:
    """``torch.backends.mkldnn.<op>.fp32_precision`` (op "matmul" or "conv"; torch 2.14's
    per-backend API, which set_float32_matmul_precision sets for matmul: "ieee" after "highest",
    "tf32" after "high", "bf16" after "medium"; "none": inherited); torch without that API: the
    legacy getter's value.  bf16x3 runs where either resolves to "tf32" or "bf16"."""
    import torch

    try:
        return getattr(torch.backends.mkldnn, op).fp32_precision
    except AttributeError:
        return torch.get_float32_matmul_precision()


def set_bf16x3_mode(mode: str) -> str:
    """Where bf16x3 may run under precision "high"/"medium", for the whole process: ``"auto"``
    (default: where oneDNN runs AMX), ``"on"`` (wherever the AVX512-BF16 split runs: slower than
    float32 without AMX; for tests and other CPUs) or ``"off"``.  Returns the previous mode.

    Raises:
        ValueError: ``mode`` is not one of ``"auto"``, ``"on"``, ``"off"``.
        RuntimeError: the extension is not built.
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"set_bf16x3_mode: mode: expected one of {MODES}, got {mode!r}")
    if not native.available():
        raise RuntimeError("set_bf16x3_mode: googlenet_fast's extension is not built")
    return native._C._set_bf16x3_mode(mode)
