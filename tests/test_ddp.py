"""DistributedDataParallel on the CPU (issue #5, item 4): two processes (gloo), each with half of
a global batch of 4 images of 64x64, DDP(GoogLeNet(fused=True)), one forward + backward; the
allreduced (averaged) gradients against single-process runs in this process.

* plain DDP: BatchNorm statistics are per process, so the reference is a single-process run that
  emulates it: the model on each half separately, gradients averaged; each rank's running
  statistics equal those of its own half.  float32 and float64.
* SyncBatchNorm (convert_sync_batchnorm): statistics span both processes, so the reference is ONE
  single-process run over the whole global batch (float64: the two computations sum in different
  orders, see tests/test_train_parity.py on float32 kink flips).  torch 2.14 refuses SyncBatchNorm
  on the CPU twice: DDP's constructor raises "SyncBatchNorm layers only work with GPU modules",
  and SyncBatchNorm.forward raises ValueError for CPU tensors under a process group (the workers
  try both and record the errors; where a torch accepts CPU, its own code runs instead of the
  patches below).  The workers then skip DDP's check (DistributedDataParallel._passing_sync_batchnorm_handle, a no-op patch in the
  worker process only) and replace SyncBatchNorm.forward with a CPU stand-in of the same math:
  batch mean and biased variance from autograd-aware all_reduces
  (torch.distributed.nn.functional.all_reduce, whose backward all-reduces the gradient: what
  SyncBatchNorm's backward does), running statistics with the unbiased global variance.  The
  fused train path must defer to SyncBatchNorm modules (if it normalized with local statistics
  the gradients would equal the per-half reference instead, and the test fails).
"""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from googlenet_fast import GoogLeNet

WORLD = 2
GLOBAL_BATCH = 4
SIZE = 64
NUM_CLASSES = 10
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(dtype):
    torch.manual_seed(0)
    m = GoogLeNet(num_classes=NUM_CLASSES, aux_logits=True, init_weights=True, fused=True,
                  dropout=0.0, dropout_aux=0.0)
    return m.to(dtype).train()


def _data(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, 3, SIZE, SIZE, generator=g).to(dtype)
    y = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=g)
    return x, y


def _loss(out, y):
    return F.cross_entropy(out.logits, y) + 0.3 * (F.cross_entropy(out.aux_logits1, y)
                                                  + F.cross_entropy(out.aux_logits2, y))


def _bn_state(model):
    return [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _all_reduce(t, group):
    """Differentiable all_reduce (sum); torch.distributed.nn.functional.all_reduce warns that it
    is deprecated (in favour of torch.distributed._functional_collectives): muted."""
    import warnings
    from torch.distributed.nn.functional import all_reduce
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t, group=group)


def _cpu_sync_batch_norm_forward(self, x):
    """SyncBatchNorm.forward for CPU tensors (see the module docstring)."""
    if not self.training:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                            0.0, self.eps)
    group = self.process_group or dist.group.WORLD
    c = x.shape[1]
    shape = (1, c, 1, 1)
    count = torch.tensor([x.numel() // c], dtype=x.dtype)
    sums = _all_reduce(torch.cat([x.sum((0, 2, 3)), count]), group)
    n = sums[c].detach()
    mean = sums[:c] / n
    d = x - mean.view(shape)
    var = _all_reduce((d * d).sum((0, 2, 3)), group) / n
    y = d * torch.rsqrt(var + self.eps).view(shape) * self.weight.view(shape) + self.bias.view(shape)
    with torch.no_grad():
        self.num_batches_tracked.add_(1)
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
    return y


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        shard = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        for name, dtype, sync in (("plain32", torch.float32, False), ("plain64", torch.float64, False),
                                  ("sync64", torch.float64, True)):
            model = _model(dtype)
            if sync:
                bn_group = dist.new_group(list(range(WORLD)))
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=bn_group)
                # What torch does with SyncBatchNorm on CPU: DDP refuses the module, and the
                # layer's own forward refuses CPU tensors under a process group.  Recorded.
                try:
                    nn.parallel.DistributedDataParallel(model)
                    results["torch_ddp_sync_bn_cpu_error"] = None
                except ValueError as e:
                    results["torch_ddp_sync_bn_cpu_error"] = str(e)
                try:
                    model(_data(dtype)[0][shard])
                    results["torch_sync_bn_cpu_error"] = None
                except ValueError as e:
                    results["torch_sync_bn_cpu_error"] = str(e)
                model = nn.SyncBatchNorm.convert_sync_batchnorm(_model(dtype), process_group=bn_group)
                if results["torch_ddp_sync_bn_cpu_error"] is not None:
                    nn.parallel.DistributedDataParallel._passing_sync_batchnorm_handle = lambda self, m: None
                if results["torch_sync_bn_cpu_error"] is not None:
                    for m in model.modules():
                        if isinstance(m, nn.SyncBatchNorm):
                            m.forward = _cpu_sync_batch_norm_forward.__get__(m)
            ddp = nn.parallel.DistributedDataParallel(model)
            x, y = _data(dtype)
            loss = _loss(ddp(x[shard]), y[shard])
            loss.backward()
            results[name] = {"grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()},
                             "bn": _bn_state(model), "loss": loss.detach()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(_free_port(), d), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(WORLD)]


def _single(dtype, xs, ys):
    """One model, forward + backward on (xs, ys): (grads, bn state, loss).  One thread, as the
    workers: the same kernels sum in the same order, so the float32 per-half run is the workers'
    computation (with another thread count a float32 ReLU kink can flip, see the docstring of
    tests/test_train_parity.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model(dtype)
        loss = _loss(model(xs), ys)
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, _bn_state(model), loss.detach()


def _max_rel(a, b):
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    assert scale > 0
    return (a - b).abs().max().item() / scale


def _check_grads(grads, ref, rtol):
    assert grads.keys() == ref.keys()
    bad = {n: _max_rel(grads[n], ref[n]) for n in ref if _max_rel(grads[n], ref[n]) > rtol}
    assert not bad, f"gradients off by more than {rtol:g} of max|grad|: {bad}"


def _check_bn(state, ref, rtol):
    assert len(state) == len(ref) == 3 + 9 * 6 + 2
    for (m, v, k), (rm, rv, rk) in zip(state, ref):
        assert k == rk == 1
        torch.testing.assert_close(m, rm, rtol=rtol, atol=rtol)
        torch.testing.assert_close(v, rv, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_ddp_plain_equals_per_shard_batchnorm(ddp_results, dtype):
    name = "plain32" if dtype == torch.float32 else "plain64"
    x, y = _data(dtype)
    half = GLOBAL_BATCH // WORLD
    shards = [_single(dtype, x[r * half:(r + 1) * half], y[r * half:(r + 1) * half]) for r in range(WORLD)]
    # DDP averages the ranks' gradients: the per-half emulation's mean.
    ref = {n: sum(s[0][n] for s in shards) / WORLD for n in shards[0][0]}
    rtol = RTOL[dtype]
    for r, res in enumerate(ddp_results):
        _check_grads(res[name]["grads"], ref, rtol)
        _check_bn(res[name]["bn"], shards[r][1], rtol)  # each rank: its own half's statistics
        assert abs(res[name]["loss"].item() - shards[r][2].item()) <= rtol * abs(shards[r][2].item())
    # The ranks saw different data: the averaged gradient is not one half's gradient.
    assert max(_max_rel(shards[0][0][n], ref[n]) for n in ref) > 1e-2


def test_ddp_sync_batchnorm_equals_full_batch(ddp_results):
    dtype = torch.float64
    x, y = _data(dtype)
    ref_grads, ref_bn, _ = _single(dtype, x, y)
    for res in ddp_results:
        for key in ("torch_ddp_sync_bn_cpu_error", "torch_sync_bn_cpu_error"):
            assert res[key] is None or "GPU" in res[key], res[key]
        _check_grads(res["sync64"]["grads"], ref_grads, RTOL[dtype])
        _check_bn(res["sync64"]["bn"], ref_bn, RTOL[dtype])
    # Synchronized statistics are not the per-process ones: plain DDP's gradients differ.
    assert max(_max_rel(ddp_results[0]["plain64"]["grads"][n], ref_grads[n]) for n in ref_grads) > 1e-3
