"""``python -m googlenet_fast train`` (googlenet_fast.train, train_data): loaders, exact resume
(mid-epoch, across epochs, after a crash), checkpoint interval, --compare, bad input, torchrun.

Tiny settings throughout (16x16 inputs, batches of 4-8, a few steps): the tests check the
plumbing and the exactness of resume, not the accuracy (the accuracy on digits is measured in docs/training.md).
"""
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from googlenet_fast import cli, train, train_data

S = 16  # the smallest convenient size above the torchvision variant's minimum (15)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tiny steps are mostly overhead, and on a CPU shared with other
    jobs two OpenMP threads stall each other (10x slower here); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _args(*argv):
    return cli.build_parser().parse_args(["train", "--no-progress", *argv])


def _run(capsys, *argv):
    rc = cli.main(["train", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _write_folder(root, classes=("cat", "dog"), per_class=6, size=20, seed=0):
    """A tiny ImageFolder of PNGs: per class a distinct mean color plus noise."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    for k, c in enumerate(classes):
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            base = torch.tensor([60 + 90 * k, 200 - 70 * k, 40 + 50 * (k % 2)], dtype=torch.float32)
            img = (base.view(1, 1, 3) + 40 * torch.randn(size, size, 3, generator=g)).clamp(0, 255)
            Image.fromarray(img.to(torch.uint8).numpy()).save(os.path.join(root, c, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 12 images, --val-fraction 0.25 -> 9 train / 3 val; batch 4 -> 2 steps per epoch
    return _write_folder(tmp_path_factory.mktemp("imgs") / "data")


FOLDER_RUN = ("--image-size", str(S), "--batch-size", "4", "--val-fraction", "0.25", "--epochs", "3",
              "--warmup-steps", "2")


# ------------------------------------------------------------------------------------------------
# argument parsing


def test_parser_defaults_are_unset_for_resume():
    a = _args()
    for k in train.RUN_KEYS:
        assert getattr(a, k) is None, k  # None: the checkpoint's value on --resume, else DEFAULTS
    assert a.channels_last is None and a.checkpoint is None and a.resume is None and a.no_progress
    a = _args("--variant", "paper", "--epochs", "3", "--batch-size", "5", "--lr", "0.1", "--optimizer",
              "adamw", "--weight-decay", "0", "--warmup-steps", "0", "--label-smoothing", "0.1",
              "--amp", "--amp-dtype", "float16", "--no-channels-last", "--aux-weight", "0",
              "--checkpoint-interval", "7", "--max-steps", "2", "--compare", "--workers", "0")
    assert (a.variant, a.epochs, a.batch_size, a.lr, a.optimizer, a.weight_decay, a.warmup_steps) == \
        ("paper", 3, 5, 0.1, "adamw", 0.0, 0)
    assert (a.label_smoothing, a.amp, a.amp_dtype, a.channels_last, a.aux_weight) == (0.1, True, "float16", False, 0.0)
    assert (a.checkpoint_interval, a.max_steps, a.compare, a.workers) == (7, 2, True, 0)
    assert a.func is cli.run_train


@pytest.mark.parametrize("argv", [["--lr", "0"], ["--epochs", "0"], ["--optimizer", "adam"],
                                  ["--variant", "resnet"], ["--val-fraction", "1"],
                                  ["--label-smoothing", "1"], ["--batch-size", "x"], ["--weight-decay", "-1"]])
def test_parser_rejects(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _args(*argv)
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_cosine_schedule():
    f = train.cosine_lr_lambda(total_steps=10, warmup_steps=2)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(6) == pytest.approx(0.5) and 0 < f(9) < 0.05
    assert all(f(i) >= f(i + 1) for i in range(2, 9))


# ------------------------------------------------------------------------------------------------
# loaders


def test_digits_loader_shapes_labels_split():
    x, y = train_data.digits_tensors(S)
    assert x.shape == (1797, 3, S, S) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(x[:, 0], x[:, 2])
    # 8x8 "upscaled" to 8x8 is the raw data / 16
    from sklearn.datasets import load_digits
    x8, _ = train_data.digits_tensors(8)
    assert torch.allclose(x8[:, 0], torch.as_tensor(load_digits().images, dtype=torch.float32) / 16)

    d = train_data.load_digits_data(S, seed=0)
    assert (len(d.train), len(d.val), d.num_classes) == (1437, 360, 10)
    xi, yi = d.train[0]
    assert xi.shape == (3, S, S) and xi.dtype == torch.float32 and 0 <= int(yi) < 10
    xt = d.train.tensors[0]
    assert abs(xt.mean().item()) < 1e-4 and abs(xt.std().item() - 1) < 1e-3  # train-split normalization
    counts = torch.bincount(d.val.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    # seeded: same split for the same seed, another for another
    assert torch.equal(train_data.load_digits_data(S, seed=0).val.tensors[1], d.val.tensors[1])
    assert not torch.equal(train_data.load_digits_data(S, seed=1).val.tensors[0], d.val.tensors[0])


def test_folder_loader_random_split(folder):
    d = train_data.load_folder_data(folder, image_size=S, seed=0, val_fraction=0.25)
    assert d.classes == ["cat", "dog"] and (len(d.train), len(d.val)) == (9, 3)
    x, y = d.train[0]
    assert x.shape == (3, S, S) and x.dtype == torch.float32 and y in (0, 1)
    labels = train_data.dataset_labels(d.train)
    assert labels.tolist() == [d.train[i][1] for i in range(len(d.train))]
    d1 = train_data.load_folder_data(folder, image_size=S, seed=1, val_fraction=0.25)
    assert list(d1.val.indices) != list(d.val.indices) or list(d1.train.indices) != list(d.train.indices)


def test_folder_loader_train_val_subfolders(tmp_path):
    _write_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=2)
    _write_folder(tmp_path / "val", classes=("a", "c"), per_class=1)  # no "b": indices must not shift
    d = train_data.load_folder_data(str(tmp_path), image_size=S)
    assert d.classes == ["a", "b", "c"] and (len(d.train), len(d.val)) == (6, 2)
    assert sorted(y for _, y in d.val) == [0, 2]
    _write_folder(tmp_path / "val", classes=("zebra",), per_class=1)
    with pytest.raises(train_data.DataError, match="zebra"):
        train_data.load_folder_data(str(tmp_path), image_size=S)


# ------------------------------------------------------------------------------------------------
# resume, checkpoints, compare


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_across_epochs_same_losses(folder, tmp_path, capsys):
    """3 epochs of 2 steps uninterrupted vs stopped at step 3 (mid-epoch 2) and resumed."""
    full = train.train(_args("--data", folder, *FOLDER_RUN, "--checkpoint", str(tmp_path / "full.pt")))
    assert len(full.losses) == 6 and len(full.epochs) == 3
    ck = str(tmp_path / "part.pt")
    part = train.train(_args("--data", folder, *FOLDER_RUN, "--checkpoint", ck, "--max-steps", "3"))
    assert part.end_step == 3 and len(part.epochs) == 1
    assert torch.load(ck, weights_only=True)["step"] == 3
    rest = train.train(_args("--resume", ck))  # settings come from the checkpoint
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 3 (epoch 2, step 1 of 2)" in out
    assert rest.start_step == 3 and rest.end_step == 6
    assert part.losses + rest.losses == full.losses  # exactly the same losses
    assert [e["val_acc"] for e in rest.epochs] == [e["val_acc"] for e in full.epochs[1:]]
    assert [e["val_loss"] for e in rest.epochs] == [e["val_loss"] for e in full.epochs[1:]]
    a = torch.load(str(tmp_path / "full.pt"), weights_only=True)
    b = torch.load(ck, weights_only=True)  # --resume without --checkpoint keeps writing there
    assert b["step"] == 6 and _state_equal(a["runs"]["fused"]["model"], b["runs"]["fused"]["model"])


def test_crash_mid_epoch_loses_at_most_interval_and_resumes_exactly(tmp_path, monkeypatch):
    """Digits, 16x16, batch 8: checkpoint every 2 steps; a crash in step 5 leaves the step-4
    checkpoint (written atomically: no temp file left); resuming gives the uninterrupted losses."""
    common = ("--image-size", str(S), "--batch-size", "8", "--epochs", "1", "--warmup-steps", "2")
    full = train.train(_args(*common, "--max-steps", "7"))
    ck = tmp_path / "ck" / "run.pt"

    real_loss, calls = train._loss, []

    def crashing_loss(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real_loss(*a, **k)

    monkeypatch.setattr(train, "_loss", crashing_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train(_args(*common, "--checkpoint", str(ck), "--checkpoint-interval", "2"))
    monkeypatch.setattr(train, "_loss", real_loss)
    assert os.listdir(ck.parent) == ["run.pt"]
    saved = torch.load(str(ck), weights_only=True)
    assert saved["step"] == 4 and saved["steps_per_epoch"] == 1437 // 8
    rest = train.train(_args("--resume", str(ck), "--max-steps", "7"))
    assert rest.losses == full.losses[4:7]


def test_checkpoint_interval_writes(tmp_path, monkeypatch):
    ck = str(tmp_path / "c.pt")
    steps = []
    real_save = train.save_atomic
    monkeypatch.setattr(train, "save_atomic", lambda obj, path: (steps.append(obj["step"]), real_save(obj, path)))
    train.train(_args("--image-size", str(S), "--batch-size", "8", "--checkpoint", ck,
                      "--checkpoint-interval", "2", "--max-steps", "5"))
    assert steps == [2, 4, 5]  # every 2 steps mid-epoch, and where it stopped
    ckpt = torch.load(ck, weights_only=True)
    assert ckpt["step"] == 5 and set(ckpt["runs"]) == {"fused"}
    assert set(ckpt["runs"]["fused"]) == {"model", "optimizer", "scheduler", "scaler"}
    assert ckpt["runs"]["fused"]["scheduler"]["last_epoch"] == 5 and ckpt["rng"][0]["torch"].dtype == torch.uint8


def test_compare_reports_finite_difference(folder, capsys):
    r = train.train(_args("--data", folder, *FOLDER_RUN, "--compare", "--max-steps", "3"))
    out = capsys.readouterr().out
    assert len(r.losses) == len(r.ref_losses) == 3
    assert r.max_loss_diff is not None and r.max_loss_diff == r.max_loss_diff and r.max_loss_diff < float("inf")
    assert r.max_loss_diff == max(abs(a - b) for a, b in zip(r.losses, r.ref_losses))
    m = re.search(r"largest per-step loss difference fused vs reference (\S+) over 3 steps", out)
    assert m and float(m.group(1)) == pytest.approx(r.max_loss_diff, rel=1e-2, abs=1e-12)
    assert "training fused and reference" in out


def test_unfused_trains_reference_and_epoch_lines(folder, capsys):
    rc, out, err = _run(capsys, "--data", folder, *FOLDER_RUN, "--unfused", "--epochs", "1", "--no-channels-last")
    assert rc == 0, err
    assert "training reference (fused=False)" in out and "contiguous" in out
    assert re.search(r"epoch 1/1: train loss [\d.]+, val loss [\d.]+, val acc [\d.]+% \(\d+/3\)", out)
    assert re.search(r"^summary: .*val acc [\d.]+% after epoch 1.*wall", out, re.M)


def test_amp_bf16_cpu_runs(folder):
    r = train.train(_args("--data", folder, *FOLDER_RUN, "--amp", "--max-steps", "2"))
    assert len(r.losses) == 2 and all(l == l for l in r.losses)


# ------------------------------------------------------------------------------------------------
# bad input: one-line errors, exit code 2


def _error(capsys, *argv):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("googlenet-fast train: error: "), err
    return lines[0]


def test_error_more_classes_than_num_classes(capsys):
    msg = _error(capsys, "--image-size", str(S), "--num-classes", "5")
    assert "--num-classes 5" in msg and "10 classes" in msg


def test_error_label_out_of_range_in_dataset(capsys, monkeypatch):
    real = train_data.load_digits_data

    def bad(*a, **k):
        d = real(*a, **k)
        x, y = d.train.tensors
        y = y.clone()
        y[3] = 12
        d.train = TensorDataset(x, y)
        return d

    monkeypatch.setattr(train_data, "load_digits_data", bad)
    msg = _error(capsys, "--image-size", str(S))
    assert "label 12 is outside [0, 10)" in msg and "train split" in msg


class _NoLabelsDataset(Dataset):
    """Labels not known up front: the per-batch check catches them."""

    def __init__(self, n, bad_at):
        self.n, self.bad_at = n, bad_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.zeros(3, S, S), (-1 if i == self.bad_at else i % 2)


def test_error_label_out_of_range_in_batch(capsys, monkeypatch):
    ds = _NoLabelsDataset(16, bad_at=5)
    monkeypatch.setattr(train_data, "load_digits_data", lambda *a, **k: train_data.TrainData(
        ds, _NoLabelsDataset(4, bad_at=-1), ["a", "b"], "test", "test"))
    msg = _error(capsys, "--image-size", str(S), "--batch-size", "4")
    assert "label -1 is outside [0, 2)" in msg and re.search(r"batch \d+ of epoch 1", msg)


def test_check_labels():
    train.check_labels(torch.tensor([0, 9]), 10, "x")
    with pytest.raises(cli.CommandError, match=r"src: label 10 is outside \[0, 10\)"):
        train.check_labels(torch.tensor([0, 10]), 10, "src")
    with pytest.raises(cli.CommandError, match="integers"):
        train.check_labels(torch.tensor([0.0]), 10, "src")


def test_error_empty_or_missing_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _error(capsys, "--data", str(empty), "--image-size", str(S))
    assert str(empty) in msg and "class folder" in msg.lower()
    (empty / "cls").mkdir()
    msg = _error(capsys, "--data", str(empty), "--image-size", str(S))
    assert str(empty) in msg and "no valid file" in msg.lower()
    msg = _error(capsys, "--data", str(tmp_path / "nope"), "--image-size", str(S))
    assert "nope: no such folder" in msg


@pytest.mark.parametrize("workers", ["0", "1"])
def test_error_unreadable_image(tmp_path, capsys, workers):
    root = _write_folder(tmp_path / "d", per_class=4)
    bad = os.path.join(root, "cat", "broken.png")
    with open(bad, "wb") as f:
        f.write(b"not a png at all")
    msg = _error(capsys, "--data", root, "--image-size", str(S), "--batch-size", "8", "--val-fraction", "0.1",
                 "--workers", workers)
    assert bad in msg and "cannot read the image" in msg


def test_error_image_size_too_small(capsys):
    msg = _error(capsys, "--image-size", "12")
    assert "--image-size 12" in msg and "at least 15" in msg and "torchvision" in msg
    msg = _error(capsys, "--image-size", "24", "--variant", "paper")
    assert "--image-size 24" in msg and "at least 31" in msg and "paper" in msg


@pytest.fixture(scope="module")
def small_ckpt(folder, tmp_path_factory):
    ck = str(tmp_path_factory.mktemp("ck") / "tv.pt")
    train.train(_args("--data", folder, *FOLDER_RUN, "--num-classes", "3", "--checkpoint", ck, "--max-steps", "1"))
    return ck


def test_error_checkpoint_other_variant_or_classes(small_ckpt, capsys):
    msg = _error(capsys, "--resume", small_ckpt, "--variant", "paper")
    assert small_ckpt in msg and "'torchvision'" in msg and "'paper'" in msg and "variant" in msg
    msg = _error(capsys, "--resume", small_ckpt, "--num-classes", "4")
    assert small_ckpt in msg and "class count" in msg and "3" in msg and "4" in msg
    msg = _error(capsys, "--resume", small_ckpt, "--batch-size", "2")
    assert small_ckpt in msg and "--batch-size" in msg


def test_error_bad_checkpoint_file(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    msg = _error(capsys, "--resume", str(junk))
    assert str(junk) in msg and "cannot read" in msg
    torch.save({"hello": 1}, str(tmp_path / "other.pt"))
    msg = _error(capsys, "--resume", str(tmp_path / "other.pt"))
    assert "not a googlenet_fast train checkpoint" in msg
    msg = _error(capsys, "--resume", str(tmp_path / "missing.pt"))
    assert "missing.pt: no such file" in msg


def test_error_options_exclude(capsys):
    msg = _error(capsys, "--image-size", str(S), "--compare", "--unfused")
    assert "--compare" in msg and "--unfused" in msg
    msg = _error(capsys, "--image-size", str(S), "--amp", "--amp-dtype", "float16", "--device", "cpu")
    assert "--amp-dtype float16" in msg


# ------------------------------------------------------------------------------------------------
# torchrun


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*argv):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(train.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "googlenet_fast", "train", "--no-progress", "--device", "cpu", *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=repo)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_torchrun_two_processes_cpu(folder, tmp_path):
    """2 processes, gloo, DistributedSampler: rank 0 alone prints and saves; the checkpoint has
    both ranks' RNG states; a DDP run stopped mid-epoch and resumed ends with the same weights."""
    ck = str(tmp_path / "ddp.pt")
    run = ("--data", folder, "--image-size", str(S), "--batch-size", "2", "--val-fraction", "0.25", "--epochs", "2")
    p = _torchrun(*run, "--checkpoint", ck)
    assert p.stdout.count("summary:") == 1 and "x 2 processes (DDP)" in p.stdout
    assert len(re.findall(r"^epoch \d/2: ", p.stdout, re.M)) == 2
    assert re.search(r"val acc [\d.]+% \(\d+/3\)", p.stdout)  # both ranks' halves, all-reduced
    c = torch.load(ck, weights_only=True)
    assert c["world_size"] == 2 and len(c["rng"]) == 2 and c["step"] == 4  # 9 images -> 5 per rank -> 2 steps
    assert not torch.equal(c["rng"][0]["torch"], c["rng"][1]["torch"])
    ck2 = str(tmp_path / "ddp_part.pt")
    _torchrun(*run, "--checkpoint", ck2, "--max-steps", "3")
    p = _torchrun("--resume", ck2)
    assert "resumed from" in p.stdout and p.stdout.count("summary:") == 1
    c2 = torch.load(ck2, weights_only=True)
    assert c2["step"] == 4 and _state_equal(c["runs"]["fused"]["model"], c2["runs"]["fused"]["model"])


# ------------------------------------------------------------------------------------------------
# new-user findings: bad images mid-run, extending and finishing runs, --compare's numbers, workers


def _write_png(path, seed=0, size=20):
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    img = (128 + 40 * torch.randn(size, size, 3, generator=g)).clamp(0, 255).to(torch.uint8)
    Image.fromarray(img.numpy()).save(path)


def _train_val_folder(root):
    """train/ (2 classes x 4) and val/ (2 x 2): batch 4 -> 2 steps per epoch, val never split."""
    _write_folder(os.path.join(root, "train"), per_class=4)
    _write_folder(os.path.join(root, "val"), per_class=2, seed=1)
    return str(root)


TV_RUN = ("--image-size", str(S), "--batch-size", "4", "--epochs", "2", "--warmup-steps", "1")


def test_corrupt_val_image_keeps_the_epoch_and_resume_validates_it(tmp_path, capsys):
    """A corrupt file in val/: one-line error naming it, exit 2, the epoch's training saved
    (validation pending); with the file fixed, --resume validates epoch 1 and goes on, ending with
    the uninterrupted run's losses and validation numbers."""
    root = _train_val_folder(tmp_path / "d")
    bad = os.path.join(root, "val", "dog", "1.png")
    good = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(b"\x89PNG garbage, not an image")
    ck = str(tmp_path / "run.pt")
    msg = _error(capsys, "--data", root, *TV_RUN, "--checkpoint", ck)
    assert bad in msg and "cannot read the image" in msg
    assert f"2 of 4 training steps done (epoch 1 trained, not validated), saved in {ck}" in msg
    saved = torch.load(ck, weights_only=True)
    assert saved["step"] == 2 and saved["history"]["epochs"] == []
    assert len(saved["epoch_losses"]["losses"][0]) == 2

    with open(bad, "wb") as f:
        f.write(good)
    full = train.train(_args("--data", root, *TV_RUN))
    rest = train.train(_args("--resume", ck))
    out = capsys.readouterr().out
    assert "epoch 1 was trained but not validated: validating it first" in out
    assert "epoch 1/2: train loss" in out and "trained before the resume" in out
    assert rest.losses == full.losses[2:]
    assert [e["epoch"] for e in rest.epochs] == [1, 2]
    for a, b in zip(rest.epochs, full.epochs):
        assert (a["train_loss"], a["val_loss"], a["correct"]) == (b["train_loss"], b["val_loss"], b["correct"])


def test_corrupt_train_image_saves_the_steps_done(tmp_path, capsys):
    """A corrupt training image met in the 2nd batch: exit 2 naming it, step 1 saved; with the
    file fixed --resume gives the uninterrupted losses, epoch 1's train loss over both steps."""
    root = _train_val_folder(tmp_path / "d")
    ds = train_data.load_folder_data(root, image_size=S).train
    sampler = train.ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(0)
    bad = ds.samples[list(sampler)[5]][0]  # position 5: the second batch of 4
    good = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(b"garbage")
    ck = str(tmp_path / "run.pt")
    msg = _error(capsys, "--data", root, *TV_RUN, "--checkpoint", ck)
    assert bad in msg and f"1 of 4 training steps done, saved in {ck}" in msg and f"--resume {ck}" in msg
    assert torch.load(ck, weights_only=True)["step"] == 1
    msg = _error(capsys, "--data", root, *TV_RUN)  # no checkpoint: says so
    assert bad in msg and "1 of 4 training steps done, not saved (no --checkpoint PATH)" in msg

    with open(bad, "wb") as f:
        f.write(good)
    full = train.train(_args("--data", root, *TV_RUN))
    rest = train.train(_args("--resume", ck))
    out = capsys.readouterr().out
    assert rest.losses == full.losses[1:]
    assert rest.epochs[0]["train_loss"] == full.epochs[0]["train_loss"] and "since resume" not in out


def test_resume_mid_epoch_train_loss_covers_the_whole_epoch(folder, tmp_path, capsys):
    """Stopped at step 3 (epoch 2, step 1 of 2): the resumed epoch-2 train loss averages both
    steps (the checkpoint carries the epoch's losses), as the uninterrupted run's does; giving the
    checkpoint's --epochs again changes nothing.  A checkpoint without those losses says that
    its train loss covers only the steps since the resume."""
    full = train.train(_args("--data", folder, *FOLDER_RUN))
    ck = str(tmp_path / "part.pt")
    train.train(_args("--data", folder, *FOLDER_RUN, "--checkpoint", ck, "--max-steps", "3"))
    old = torch.load(ck, weights_only=True)
    rest = train.train(_args("--resume", ck, "--epochs", "3"))
    out = capsys.readouterr().out
    assert rest.losses == full.losses[3:]
    assert [e["train_loss"] for e in rest.epochs] == [e["train_loss"] for e in full.epochs[1:]]
    assert "since resume" not in out and "schedule" not in out

    del old["epoch_losses"]  # as an older checkpoint
    torch.save(old, ck)
    rest = train.train(_args("--resume", ck))
    out = capsys.readouterr().out
    assert rest.losses == full.losses[3:]
    assert rest.epochs[0]["train_loss"] == full.losses[3]  # step 4 alone
    assert re.search(rf"epoch 2/3: train loss {full.losses[3]:.4f} \(step 2 of 2, since resume\), val loss", out)


def test_resume_finished_run_extend_epochs(folder, tmp_path, capsys):
    """A finished 1-epoch run: --resume says it is complete and does nothing; --epochs 2 extends
    it with the cosine schedule recomputed over the new total (the LR jumps at the resume)."""
    ck = str(tmp_path / "run.pt")
    base = ("--data", folder, "--image-size", str(S), "--batch-size", "4", "--val-fraction", "0.25",
            "--warmup-steps", "1")
    first = train.train(_args(*base, "--epochs", "1", "--checkpoint", ck))
    assert first.end_step == 2 and first.lrs == [0.05 * train.cosine_lr_lambda(2, 1)(s) for s in (0, 1)]
    capsys.readouterr()

    rc, out, err = _run(capsys, "--resume", ck)
    assert rc == 0, err
    assert out.strip() == f"{ck} is already complete: epoch 1 of 1; nothing to do; pass --epochs N (more than 1) to extend it"
    rc, out, err = _run(capsys, "--resume", ck, "--max-steps", "2", "--epochs", "2")
    assert rc == 0 and out.strip() == f"{ck} is already at step 2, --max-steps 2; nothing to do"

    more = train.train(_args("--resume", ck, "--epochs", "2"))
    out = capsys.readouterr().out
    new = train.cosine_lr_lambda(4, 1)
    assert (more.start_step, more.end_step) == (2, 4)
    assert more.lrs == [0.05 * new(2), 0.05 * new(3)]  # 0.0375, 0.0125: the 2-epoch schedule's
    assert "recomputed over the new total of 4 steps" in out
    assert f"the LR of step 3 goes from 0 (the 1-epoch schedule) to {0.05 * new(2):.4g}" in out
    assert re.search(r"^epoch 2/2: train loss [\d.]+, val loss", out, re.M)
    c = torch.load(ck, weights_only=True)
    assert c["step"] == 4 and c["settings"]["epochs"] == 2
    assert c["history"]["schedule_changes"] == [{"step": 2, "epochs_from": 1, "epochs_to": 2}]
    rc, out, _ = _run(capsys, "--resume", ck)
    assert rc == 0 and "is already complete: epoch 2 of 2; nothing to do" in out
    rc, out, _ = _run(capsys, "--resume", ck, "--epochs", "1")
    assert rc == 0 and "has already trained 2 epoch(s) (step 4), --epochs 1 asks for no more; nothing to do" in out


def test_resume_file_that_is_not_a_checkpoint(tmp_path, capsys):
    model = str(tmp_path / "model.pt")
    torch.save(torch.nn.Linear(2, 2), model)  # a whole pickled model
    msgs = []
    msg = _error(capsys, "--resume", model)
    msgs.append(msg)
    assert msg == (f"googlenet-fast train: error: --resume {model}: cannot read it as a googlenet_fast train "
                   "checkpoint: it holds pickled Python objects (torch.nn.modules.linear.Linear), e.g. a whole "
                   "model saved with torch.save(model); a train checkpoint holds only tensors and settings")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    msgs.append(_error(capsys, "--resume", str(text)))
    assert str(text) in msgs[-1] and "not a torch.save archive" in msgs[-1]
    sd = str(tmp_path / "sd.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), sd)
    msgs.append(_error(capsys, "--resume", sd))
    assert sd in msgs[-1] and "not a googlenet_fast train checkpoint" in msgs[-1] and "load_state_dict" in msgs[-1]
    msgs.append(_error(capsys, "--resume", str(tmp_path)))
    assert f"{tmp_path}: is a folder" in msgs[-1]
    for m in msgs:  # never torch's weights_only advice
        assert "weights" not in m.lower() and "trust" not in m


def test_compare_explains_step1_bound_and_drift(folder, tmp_path, capsys, monkeypatch):
    ck = str(tmp_path / "cmp.pt")
    r = train.train(_args("--data", folder, *FOLDER_RUN, "--compare", "--max-steps", "3", "--checkpoint", ck))
    out = capsys.readouterr().out
    d1 = abs(r.losses[0] - r.ref_losses[0])
    rel = d1 / abs(r.ref_losses[0])
    assert r.first_step_rel_diff == rel and rel <= 1e-4 and r.compare_ok is True
    m = re.search(r"compare: step 1 \(both networks in the same state\): loss difference fused vs reference "
                  r"(\S+), (\S+) relative; bound 0.0001 relative \(one float32 training step, as "
                  r"tests/test_train_parity.py holds it\): OK", out)
    assert m and float(m.group(1)) == pytest.approx(d1, rel=1e-2, abs=1e-12)
    assert float(m.group(2)) == pytest.approx(rel, rel=1e-2, abs=1e-12)
    worst = max(range(3), key=lambda i: abs(r.losses[i] - r.ref_losses[i])) + 1
    assert f"over 3 steps (at step {worst}): float32 drift, not a kernel error" in out
    assert "in float64 the two paths agree to 1e-10" in out
    rest = train.train(_args("--resume", ck, "--max-steps", "4"))
    out = capsys.readouterr().out
    assert rest.compare_ok is None and "resumed at step 3" in out and "no step-1 check" in out

    monkeypatch.setattr(train, "COMPARE_STEP1_RTOL", -1.0)  # a check that cannot pass: exit code 1
    rc, out, _ = _run(capsys, "--data", folder, *FOLDER_RUN, "--compare", "--max-steps", "1")
    assert rc == 1 and "FAILED: the fused and reference paths disagree" in out


def test_default_workers_zero_on_two_cores(folder, monkeypatch):
    """Default DataLoader workers: 0 for digits (in memory) and on <= 2 cores (a worker halves
    the training speed there, docs/training.md); min(4, cores // 2) on larger machines."""
    seen = []
    real = train.DataLoader
    monkeypatch.setattr(train, "DataLoader", lambda *a, **k: (seen.append(k["num_workers"]), real(*a, **k))[1])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    train.train(_args("--data", folder, *FOLDER_RUN, "--max-steps", "2"))
    assert seen and set(seen) == {0}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert train.default_workers(train_data.load_folder_data(folder, S).train) == 4
    assert train.default_workers(train_data.load_digits_data(S).train) == 0


def test_checkpoint_path_checked_before_training(tmp_path, capsys, monkeypatch):
    """--checkpoint where no file can be written: one line naming it, exit 2, before the first
    step (not after an epoch's work)."""
    def no_training(*a, **k):
        raise AssertionError("trained before the checkpoint path was checked")

    monkeypatch.setattr(train, "_make_optimizer", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for path, why in [(str(blocker / "run.pt"), "is a file, not a folder"), (str(tmp_path), "is a folder")]:
        rc = cli.main(["train", "--no-progress", "--epochs", "1", "--checkpoint", path])
        err = capsys.readouterr().err
        assert rc == 2 and f"error: --checkpoint {path}: " in err and why in err, err
        assert "Traceback" not in err


def test_one_class_folder_warns(tmp_path, capsys):
    """--data with a single class folder trains to 100% (every prediction is right): the command
    says so instead of reporting a perfect run silently; two classes: no warning."""
    one = _write_folder(tmp_path / "one", classes=("cat",), per_class=8)
    rc = cli.main(["train", "--no-progress", "--data", one, "--num-classes", "2", *FOLDER_RUN[:6], "--max-steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "warning: the data has one class ('cat')" in out, out
    two = _write_folder(tmp_path / "two", per_class=4)
    rc = cli.main(["train", "--no-progress", "--data", two, "--num-classes", "2", *FOLDER_RUN[:6], "--max-steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "warning: the data has one class" not in out, out
