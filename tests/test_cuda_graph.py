"""googlenet_fast.capture_cuda_graph: argument errors (CPU) and capture/replay parity (GPU)."""
import pytest
import torch

from googlenet_fast import GoogLeNet, capture_cuda_graph
from googlenet_fast.cuda_graph import CapturedForward, _check_replay_input


def test_cpu_input_is_a_clear_error():
    model = GoogLeNet(aux_logits=False, init_weights=True).eval()
    with pytest.raises(ValueError, match="example_input: CUDA graphs need a CUDA tensor, got one on cpu"):
        capture_cuda_graph(model, torch.randn(1, 3, 64, 64))


def test_non_tensor_and_bad_warmup():
    with pytest.raises(TypeError, match="example_input: expected a Tensor"):
        capture_cuda_graph(lambda x: x, [1, 2, 3])
    meta = torch.empty(1, 3, 32, 32, device="meta")
    with pytest.raises(ValueError, match="example_input: CUDA graphs need a CUDA tensor"):
        capture_cuda_graph(lambda x: x, meta)


@pytest.mark.parametrize("x,match", [
    (torch.randn(2, 3, 32, 32), r"captured for input shape \(1, 3, 32, 32\), got \(2, 3, 32, 32\)"),
    (torch.randn(1, 3, 32, 32, dtype=torch.float64), "captured for dtype torch.float32, got torch.float64"),
    (torch.randn(1, 3, 32, 32, device="meta"), "captured for inputs on cpu, got a tensor on meta"),
    ("not a tensor", "x: expected a Tensor"),
])
def test_replay_rejects_mismatched_inputs(x, match):
    # The replay check itself (a CPU tensor stands in for the graph's static buffer).
    static = torch.empty(1, 3, 32, 32)
    with pytest.raises((ValueError, TypeError), match=match):
        _check_replay_input(x, static)


def test_captured_forward_rejects_before_replaying():
    class NoGraph:
        def replay(self):
            raise AssertionError("replayed with a mismatched input")

    cf = CapturedForward(NoGraph(), torch.zeros(1, 3, 8, 8), torch.zeros(1, 10), clone=False)
    with pytest.raises(ValueError, match="input shape"):
        cf(torch.zeros(1, 3, 9, 9))
    assert cf.input_shape == (1, 3, 8, 8) and cf.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 8])
def test_gpu_graph_replay_equals_eager(dtype, batch):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, init_weights=True).eval().cuda().to(dtype)
    x0 = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    graphed = capture_cuda_graph(model, x0, clone=True)
    for seed in (1, 2):
        x = torch.randn(x0.shape, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(seed))
        with torch.no_grad():
            ref = model(x)
        got = graphed(x)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max().item())
    with pytest.raises(ValueError, match="input shape"):
        graphed(torch.randn(batch + 1, 3, 224, 224, device="cuda", dtype=dtype))
    with pytest.raises(ValueError, match="captured for inputs on cuda"):
        graphed(torch.randn(x0.shape, dtype=dtype))


@pytest.mark.gpu
def test_gpu_compile_reduce_overhead_equals_eager():
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, init_weights=True).eval().cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    compiled = torch.compile(model, mode="reduce-overhead")
    with torch.no_grad():
        ref = model(x)
        for _ in range(3):
            got = compiled(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
