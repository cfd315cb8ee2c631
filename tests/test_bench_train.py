"""``googlenet-fast bench --mode train`` (train-step timing) and its helpers in googlenet_fast.bench,
run in-process with tiny batches and images (the hidden --image-size option)."""
import json
import re

import pytest
import torch

from googlenet_fast import bench, cli
from cli_helpers import table_rows

FAST = ["--device", "cpu", "--min-run-time", "0.05", "--rounds", "1", "--warmup", "1", "--quiet",
        "--image-size", "32"]


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_default_mode_is_eval():
    args = cli.build_parser().parse_args(["bench"])
    assert args.mode == "eval"
    assert args.image_size is None
    assert "--image-size" not in cli.build_parser()._subparsers._group_actions[0].choices["bench"].format_help()


def test_bench_train_mode(capsys, tmp_path):
    out_json = tmp_path / "train.json"
    # b=8: the check's shape (the 8 photos), whose kernels are then warm; b=3 a second size.
    rc, out, err = _run(capsys, "bench", "--mode", "train", "--batch-sizes", "8", "3", "--json", str(out_json),
                        *FAST)
    assert rc == 0, out + err
    assert "mode train" in out
    assert "-> (8, 3, 32, 32)" in out and "resized to 32" in out
    # The numerical check: one train-mode forward + backward, fused vs torchvision, same dropout.
    for head in ("logits", "aux_logits2", "aux_logits1"):
        m = re.search(rf"check: fused train step {head} vs torchvision eager on (\d+) photos .*?max rel err (\S+) ",
                      out)
        assert m, out
        assert int(m.group(1)) == 8
        assert float(m.group(2)) <= 1e-4
    assert "check: OK" in out
    rows = table_rows(out)
    assert {(b, p) for b, p, *_ in rows} == {(b, p) for b in (8, 3)
                                             for p in ("fused", "fused=False", "torchvision eager")}, out
    for b, p, median, ips, speedup in rows:
        assert median > 0
        assert ips == pytest.approx(b / (median / 1e3), rel=0.01, abs=0.06)
        if p == "torchvision eager":
            assert speedup == "1.00x"
    assert "ms per step" in out and "train step" in out and "SGD lr 0 momentum 0.9" in out
    assert "warning" not in out
    report = json.loads(out_json.read_text())
    assert report["args"]["mode"] == "train"
    assert report["check"]["ok"] is True
    assert report["check"]["fused"]["logits"]["max_rel_err"] <= 1e-4
    assert len(report["rows"]) == 6


def test_bench_train_mode_paper_baseline_is_unfused(capsys):
    rc, out, err = _run(capsys, "bench", "--mode", "train", "--variant", "paper", "--batch-sizes", "8",
                        "--providers", "fused", *FAST)
    assert rc == 0, out + err
    assert "vs fused=False" in out
    rows = table_rows(out)
    assert {p for _, p, *_ in rows} == {"fused", "fused=False"}
    assert [s for _, p, _, _, s in rows if p == "fused=False"] == ["1.00x"]


def test_bench_train_mode_rejects_other_dtypes(capsys):
    rc, out, err = _run(capsys, "bench", "--mode", "train", "--dtype", "bfloat16", *FAST)
    assert rc == 2
    assert "--mode train" in err and "float32" in err and "bfloat16" in err


def test_bench_mode_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--mode", "inference"])
    assert "invalid choice" in capsys.readouterr().err


def test_train_step_is_one_sgd_momentum_step():
    """TrainStep: gradients of loss main + 0.3 aux, the SGD momentum buffer, and the parameter
    update, against the same step written out by hand."""
    torch.manual_seed(0)
    nets = bench.build_train_networks(num_classes=10)
    model = nets.fused
    assert model.training and model.aux_logits
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = bench.TrainStep(model, num_classes=10, lr=0.1, momentum=0.9)
    y = step.labels(x)
    assert y.shape == (2,) and torch.equal(y, bench.train_labels(2, 10))

    ref = bench.build_train_networks(num_classes=10).fused  # the same seeded state
    torch.manual_seed(3)
    loss = step(x)
    torch.manual_seed(3)  # the same dropout masks
    out = ref(x)
    ce = torch.nn.functional.cross_entropy
    ref_loss = ce(out.logits, y) + 0.3 * (ce(out.aux_logits1, y) + ce(out.aux_logits2, y))
    ref_loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert step.last_loss is loss
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        g = ref_params[n].grad
        # First SGD step with momentum: buf = grad, p -= lr * buf.
        torch.testing.assert_close(step.opt.state[p]["momentum_buffer"], p.grad)
        torch.testing.assert_close(before[n] - p.detach(), 0.1 * p.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-9)  # the same computation


def test_train_providers():
    nets = bench.build_train_networks(num_classes=10)
    ps = bench.train_providers(nets, num_classes=10)
    assert [p.name for p in ps] == [bench.FUSED, bench.UNFUSED, bench.TORCHVISION]
    assert all(isinstance(p.fn, bench.TrainStep) for p in ps)
    assert len({id(p.fn.model) for p in ps}) == 3  # each provider trains its own network
    only = bench.train_providers(nets, only=["fused"], num_classes=10)
    assert [p.name for p in only] == [bench.FUSED, bench.TORCHVISION]  # the baseline always stays
    compiled = bench.train_providers(nets, compile=True, only=["fused"], num_classes=10)
    assert compiled[-1].name == bench.COMPILE and compiled[-1].compiles
    assert compiled[-1].fn.model is not nets.torchvision  # a copy: its steps do not touch the eager one


def test_bench_train_amp(capsys):
    """--amp: every step under bfloat16 autocast; the check holds fused to 2x the baseline's own
    bfloat16 error (both against the baseline in float32)."""
    rc, out, err = _run(capsys, "bench", "--mode", "train", "--amp", "--batch-sizes", "2", *FAST)
    assert rc == 0, out + err
    assert "under bfloat16 autocast" in out and "forward under torch.autocast(bfloat16)" in out
    assert "check: torchvision eager train step under bfloat16 autocast logits vs torchvision eager float32" in out
    assert "check: OK (logits, aux logits and loss: max rel err <= 2x torchvision eager's own bfloat16 error" in out
    rc, out, err = _run(capsys, "bench", "--amp", *FAST)
    assert rc == 2 and "--amp: only with --mode train" in out + err
