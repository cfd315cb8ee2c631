"""Backends of the fused Inception op: ``reference`` (plain PyTorch), ``native`` (the compiled
``googlenet_fast._C``: C++ CPU kernels and, when built, CUDA kernels) and ``triton``.

A backend never imports the model or the CLI; ``googlenet_fast.ops`` chooses between them.
"""
