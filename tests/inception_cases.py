"""Shared test helpers: the paper's nine Inception configurations and weight/input factories."""
import torch

from googlenet_fast.backends.reference import inception_reference

from googlenet_fast.table1 import TABLE1  # noqa: E402  (the paper's Table 1, one copy)


def make_weights(cfg, k3=3, k5=3, bias=True, dtype=torch.float32, device="cpu", seed=0):
    """The 12 weight/bias arguments of the op, He-scaled so activations stay O(1)."""
    cin, c1, r3, c3, r5, c5, cp = cfg[:7]
    g = torch.Generator().manual_seed(seed)
    out = []
    for o, i, k in ((c1, cin, 1), (r3, cin, 1), (c3, r3, k3), (r5, cin, 1), (c5, r5, k5), (cp, cin, 1)):
        w = torch.randn(o, i, k, k, generator=g, dtype=torch.float64) * (2.0 / (i * k * k)) ** 0.5
        b = torch.randn(o, generator=g, dtype=torch.float64) * 0.1 if bias else None
        out += [w.to(dtype=dtype, device=device), None if b is None else b.to(dtype=dtype, device=device)]
    return out


def make_input(n, c, h, w, dtype=torch.float32, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def as64(ts):
    return [None if t is None else t.detach().to(torch.float64) for t in ts]


def reference64(x, ws, relu=True):
    """The oracle: the unfused module in float64."""
    return inception_reference(x.detach().to(torch.float64), *as64(ws), relu=relu)


def rel_err(y, ref):
    """max |y - ref| / max |ref| (never on zeros: callers assert ref is non-trivial)."""
    ref = ref.to(torch.float64)
    scale = ref.abs().max().item()
    assert scale > 0, "reference is all zeros: the comparison would prove nothing"
    return (y.to(torch.float64) - ref).abs().max().item() / scale


def make_module_args(n, cin, h, w, c1, r3, c3, k3, r5, c5, k5, cp, bias=True, dtype=torch.float64, seed=0,
         ties=False):
    """x and the 12 weight/bias arguments (He-scaled weights, O(1) activations).  ``ties``: x takes
    a few integer values, so that max-pool windows hold equal maxima."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        x = torch.randint(-1, 2, (n, cin, h, w), generator=g).to(torch.float64)
    else:
        x = torch.randn(n, cin, h, w, generator=g, dtype=torch.float64)
    ws = []
    for o, i, k in ((c1, cin, 1), (r3, cin, 1), (c3, r3, k3), (r5, cin, 1), (c5, r5, k5), (cp, cin, 1)):
        ws.append(torch.randn(o, i, k, k, generator=g, dtype=torch.float64) * (2.0 / (i * k * k)) ** 0.5)
        ws.append(torch.randn(o, generator=g, dtype=torch.float64) * 0.1 if bias else None)
    return x.to(dtype), [None if t is None else t.to(dtype) for t in ws]
