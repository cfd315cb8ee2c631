"""ONNX export of GoogLeNet(fused=True) with plain torch.onnx.export, both exporters, run in ONNX
Runtime and OpenVINO against the export of torchvision's googlenet with the same weights.

Real values: BatchNorm statistics calibrated on scikit-image's photos (the logits then depend on
the image), batch 1 at 64x64 (the network's minimum is 15).
"""
import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch
import torchvision

from googlenet_fast import data, ops
from googlenet_fast.bench import calibrate_batchnorm
from googlenet_fast.model import GoogLeNet, InputTooSmallError, _exporting_to_onnx
from googlenet_fast.onnx_export import export_onnx

SIZE = 64
EXPORTERS = {"legacy": False, "dynamo": True}  # torch.onnx.export(..., dynamo=...)


@pytest.fixture(scope="module")
def photos():
    return data.preprocess(data.sample_photos()[:4], resize=SIZE + SIZE // 8, crop=SIZE)  # (4, 3, 64, 64)


@pytest.fixture(scope="module")
def nets(photos):
    torch.manual_seed(0)
    fused = GoogLeNet(aux_logits=False, init_weights=True, fused=True)
    assert calibrate_batchnorm(fused, photos) == 57
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    tv.load_state_dict(fused.state_dict())
    tv.eval()
    with torch.no_grad():
        ref = tv(photos)
    # Not vacuous: the logits depend on the image (not just fc's bias).
    assert (ref - ref.mean(0)).abs().max() > 0.05 * ref.abs().max()
    assert len(set(ref.argmax(1).tolist())) > 1
    return fused, tv, ref


def _ort(path):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x.numpy()})[0]


def _openvino(path):
    # f32 explicitly: on a CPU with bf16 instructions OpenVINO's default precision is bf16.
    c = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: c({0: x.numpy()})[0]


ENGINES = {"onnxruntime": _ort, "openvino": _openvino}


def _run_each(run, images):
    """The file is traced at batch 1: run the images one by one."""
    return torch.from_numpy(np.concatenate([run(images[i:i + 1]) for i in range(images.shape[0])]))


def _assert_close(out, ref, rel=1e-4):
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= rel * ref.abs().max().item(), (err, ref.abs().max().item())
    assert torch.equal(out.argmax(1), ref.argmax(1))


def _op_types(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    for node in model.graph.node:
        assert node.domain in ("", "ai.onnx"), f"non-standard operator {node.domain}::{node.op_type}"
    return sorted(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_fused_export_equals_torchvision_export(nets, photos, tmp_path, exporter, monkeypatch):
    fused, tv, ref = nets
    x = photos[:1]
    calls = []
    real_inception = ops.inception
    monkeypatch.setattr(ops, "inception", lambda *a, **k: calls.append(1) or real_inception(*a, **k))
    files = {}
    for name, model in (("fused", fused), ("torchvision", tv)):
        files[name] = tmp_path / f"{name}.onnx"
        # what a user writes: no tables, no flags
        torch.onnx.export(model, (x,), str(files[name]), dynamo=EXPORTERS[exporter])
    assert calls == []  # the fused op stepped aside while exporting...
    assert not _exporting_to_onnx()
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fused(photos)
    # ...and runs again afterwards (nine Inception modules; from the modules or a replayed CPU program)
    assert sum(e.name == "googlenet_fast::inception" for e in prof.events()) >= 9
    _assert_close(out, ref)

    # Standard operators only, the same graph as torchvision's (BatchNorm folded into Conv).
    ops_fused = _op_types(files["fused"])
    assert ops_fused == _op_types(files["torchvision"])
    assert {"Conv", "Relu", "MaxPool", "Concat", "Gemm"} <= set(ops_fused)

    for engine, load in ENGINES.items():
        got = _run_each(load(files["fused"]), photos)
        want = _run_each(load(files["torchvision"]), photos)
        _assert_close(got, want)  # the fused model's export vs torchvision's, in the same engine
        _assert_close(got, ref)  # and vs torchvision in PyTorch


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_paper_variant_exports(photos, tmp_path, exporter):
    torch.manual_seed(0)
    model = GoogLeNet(aux_logits=False, variant="paper", fused=True).eval()
    plain = GoogLeNet(aux_logits=False, variant="paper", fused=False).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = plain(photos)
    assert (ref - ref.mean(0)).abs().max() > 1e-3 * ref.abs().max()
    path = tmp_path / "paper.onnx"
    torch.onnx.export(model, (photos[:1],), str(path), dynamo=EXPORTERS[exporter])
    op_types = set(_op_types(path))
    assert {"Pow", "AveragePool"} <= op_types  # LocalResponseNorm, as its functional form computes it
    for engine, load in ENGINES.items():
        _assert_close(_run_each(load(path), photos), ref)


def test_torch_export_keeps_the_fused_op(nets, photos):
    fused, _, ref = nets
    ep = torch.export.export(fused, (photos[:1],))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "googlenet_fast.inception.default" in targets  # not stepped aside: only ONNX export does
    with torch.no_grad():
        _assert_close(ep.module()(photos[:1]), ref[:1])


def test_export_errors_are_clear(nets, tmp_path):
    fused, _, _ = nets
    small = torch.randn(1, 3, 8, 8)
    with pytest.raises(InputTooSmallError, match=r"x: expected a spatial size of at least 15x15"):
        torch.onnx.export(fused, (small,), str(tmp_path / "a.onnx"), dynamo=False)
    with pytest.raises(Exception) as info:
        torch.onnx.export(fused, (small,), str(tmp_path / "b.onnx"), dynamo=True, verbose=False)
    assert isinstance(info.value.__cause__, InputTooSmallError)
    # the helper's own argument checks name the argument
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        export_onnx("googlenet", tmp_path / "c.onnx", small)
    with pytest.raises(ValueError, match=r"model: expected eval mode"):
        export_onnx(GoogLeNet(aux_logits=False, init_weights=True).train(), tmp_path / "c.onnx", small)
    with pytest.raises(TypeError, match="example: expected a float32 tensor"):
        export_onnx(fused, tmp_path / "c.onnx", small.double())
    with pytest.raises(ValueError, match=r"example: expected a 4-D tensor"):
        export_onnx(fused, tmp_path / "c.onnx", small[0])
