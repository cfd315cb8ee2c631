import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def interp(monkeypatch):
    """Triton's interpreter (CPU tensors) and backend "auto" (no forced backend)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("GOOGLENET_FAST_BACKEND", raising=False)
    yield
