"""The GAN loop on Horovod — outputs, resume, Horovod correctness, errors."""

import json
import sys

import pytest
import torch

from conftest import HVDGAN, ROOT, flat_state, hvdgan, launch, opt_tensors
from hvdgan.run.runlog import read_metrics

WORKER = str(ROOT / "tests" / "gan_worker.py")
SMALL = ["--ngf", "16", "--ndf", "16", "--batch-size", "16", "--log-every", "1", "--no-tensorboard"]


def test_single_process_run_writes_everything(digits, tmp_path):
    out = tmp_path / "run"
    hvdgan("train", "--data", digits, "--out", out, *SMALL, "--max-steps", "6", "--sample-every", "3",
           "--checkpoint-every", "4", "--keep-checkpoints", "1", "--tensorboard")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["batch_size"] == 16 and cfg["world_size"] == 1 and cfg["lr_g"] == 2e-4 and cfg["beta1"] == 0.5
    records = read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in records if "loss_d" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    r = records[-2] if "fd8" in records[-1] else records[-1]
    for key in ("epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_s", "time_data", "time_compute",
                "time_allreduce_wait"):
        assert key in r, key
    assert [r["step"] for r in records if "fd8" in r] == [0, 3, 6]
    assert (out / "samples" / "step-000000.png").is_file() and (out / "samples" / "latest.png").is_file()
    assert (out / "losses.png").stat().st_size > 1000
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["ckpt-00000006.pt"]  # kept the last 1
    assert list((out / "tensorboard").iterdir()), "TensorBoard events"
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "done" and result["step"] == 6

    # a finished run is never overwritten by accident
    again = hvdgan("train", "--data", digits, "--out", out, *SMALL, "--max-steps", "6", check=False)
    assert again.returncode != 0 and "--resume auto" in again.stderr and "nothing was overwritten" in again.stderr

    # hvdgan sample: a grid and single images from the checkpoint
    grid = tmp_path / "grid.png"
    hvdgan("sample", out / "checkpoints" / "ckpt-00000006.pt", "--out", grid, "-n", "16")
    assert grid.stat().st_size > 500
    singles = tmp_path / "singles"
    hvdgan("sample", out / "checkpoints" / "ckpt-00000006.pt", "--out", singles, "-n", "5", "--single")
    assert len(list(singles.glob("*.png"))) == 5
    assert hvdgan("sample", out / "checkpoints" / "ckpt-00000006.pt", "--out", grid, check=False).returncode != 0


def _resume_matches(run, tmp_path, digits, n=8, batch=64):
    """A run of n steps, and one stopped at n // 2 and resumed: the same state and log at step n. Returns the
    straight run's last checkpoint."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--data", str(digits), *SMALL, "--checkpoint-every", "100", "--sample-every", "100",
              "--batch-size", str(batch)]  # 1797 digits / 64 = 28 batches: 8 steps stay inside an epoch...
    run([*common, "--out", str(straight), "--max-steps", str(n)])
    run([*common, "--out", str(split), "--max-steps", str(n // 2)])
    run([*common, "--out", str(split), "--max-steps", str(n), "--resume", "auto"])
    a = torch.load(straight / "checkpoints" / f"ckpt-{n:08d}.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / f"ckpt-{n:08d}.pt", weights_only=False)
    for key in ("G", "D", "G_ema"):
        assert torch.equal(flat_state(a[key]), flat_state(b[key])), key
    for key in ("opt_g", "opt_d"):
        assert torch.equal(opt_tensors(a[key]), opt_tensors(b[key])), key
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"])
    steps = [r["step"] for r in read_metrics(split / "metrics.jsonl") if "loss_d" in r]
    assert steps == list(range(1, n + 1))  # nothing lost, nothing repeated
    return a


def test_resume_continues_exactly_single_process_and_across_an_epoch_boundary(digits, tmp_path):
    # batch 256: 7 batches per epoch, so the stop at step 5 is inside the first epoch and the 10 steps cross
    # into the second (new shard deal); every check of the 2-rank test below (one test: a run costs more
    # than its checks)
    a = _resume_matches(lambda args: hvdgan("train", *args), tmp_path, digits, n=10, batch=256)
    assert a["epoch"] == 1


@pytest.mark.mp
def test_resume_continues_exactly_two_ranks(digits, tmp_path):
    _resume_matches(lambda args: launch("gloo", [HVDGAN, "train", *args], timeout=240), tmp_path, digits)


@pytest.mark.mp
@pytest.mark.parametrize("launcher", ["gloo", "mpirun"])
def test_parameters_identical_on_both_ranks(digits, tmp_path, launcher):
    out = launch(launcher, [sys.executable, WORKER, "train", str(digits), str(tmp_path / "run")], timeout=240).stdout
    assert out.count("parameters IDENTICAL on 2 ranks") == 2, out


@pytest.mark.mp
def test_sync_batchnorm_two_ranks_equal_one_rank_with_double_batch(tmp_path):
    one, two, local = tmp_path / "np1.pt", tmp_path / "np2.pt", tmp_path / "np2-local.pt"
    launch("gloo", [sys.executable, WORKER, "syncbn", str(one), "8"], np=1, timeout=180)
    # the 2-rank run and its control (per-rank BatchNorm) in one launch
    launch("gloo", [sys.executable, WORKER, "syncbn-pair", str(two), str(local), "8"], np=2, timeout=180)
    a, b = torch.load(one), torch.load(two)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the control: with per-rank BatchNorm the two runs part ways
    assert (torch.load(local) - a).abs().max() > 1e-4


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """One launch counts the all-reduce traffic of one iteration without and with fp16 compression."""
    out = tmp_path_factory.mktemp("traffic")
    launch("gloo", [sys.executable, WORKER, "traffic-pair", str(out)], timeout=180)
    return out


@pytest.mark.mp
@pytest.mark.parametrize("fp16", [False, True])
def test_one_iteration_allreduces_exactly_G_and_D(traffic, fp16):
    c = json.loads((traffic / f"traffic-{int(fp16)}.json").read_text())
    params = c["params_G"] + c["params_D"]
    assert c["tensors"] == c["tensors_G_D"]  # each parameter once: D's in the D step, G's in the G step
    assert c["elements"] == params
    assert c["bytes"] == params * (2 if fp16 else 4)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    out = tmp_path / "nan"
    hvdgan("train", "--data", digits, "--out", out, *SMALL, "--max-steps", "4")
    # continue with absurd learning rates (the configured rate wins over the checkpoint's): the losses blow up
    proc = hvdgan("train", "--data", digits, "--out", out, *SMALL, "--max-steps", "40", "--checkpoint-every", "2",
                  "--lr-d", "1e30", "--lr-g", "1e30", "--resume", "auto", check=False)
    assert proc.returncode != 0
    assert "loss became NaN or infinite at step" in proc.stderr, proc.stderr
    step = int(proc.stderr.split("loss became NaN or infinite at step ")[1].split(":")[0])
    ckpts = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts, "a good checkpoint was kept"
    last = torch.load(ckpts[-1], weights_only=False)
    assert 4 <= last["step"] < step
    assert torch.isfinite(flat_state(last["G"])).all() and torch.isfinite(flat_state(last["D"])).all()


def test_errors_a_user_can_act_on(digits, tmp_path):
    bad = hvdgan("train", "--data", digits, "--out", tmp_path / "a", "--image-size", "64", check=False)
    assert bad.returncode != 0 and "--image-size 64" in bad.stderr and "32x32" in bad.stderr
    run = tmp_path / "b"
    hvdgan("train", "--data", digits, "--out", run, *SMALL, "--max-steps", "2")
    other = hvdgan("train", "--data", digits, "--out", run, *SMALL, "--ngf", "32", "--max-steps", "4",
                   "--resume", "auto", check=False)
    assert other.returncode != 0 and "another G architecture" in other.stderr and "ngf" in other.stderr
    neg = hvdgan("train", "--data", digits, "--batch-size", "0", check=False)
    assert neg.returncode != 0 and "--batch-size: must be >= 1" in neg.stderr
    missing = hvdgan("train", "--data", tmp_path / "nowhere", check=False)
    assert missing.returncode != 0 and "nowhere" in missing.stderr


@pytest.mark.mp
@pytest.mark.slow
def test_the_gan_learns_digits_on_two_ranks(digits, tmp_path):
    """A short 2-rank CPU run of the demo job at batch 32: the Frechet distance of 8x8 thumbnails of G's
    samples to the real digits falls well below its value at step 0 (measured with the demo's G lr 6e-4:
    37.7 -> 1.9 at step 200; at the demo's own batch 8, 2.8; at batch 8 with G's lr 2e-4, 16.1)."""
    out = tmp_path / "learn"
    launch("gloo", [HVDGAN, "train", "--job", str(ROOT / "jobs" / "digits-demo.yaml"), "--data", str(digits),
                    "--out", str(out), "--max-steps", "200", "--batch-size", "32", "--sample-every", "100",
                    "--log-every", "50", "--no-tensorboard"], timeout=600)
    samples = [r for r in read_metrics(out / "metrics.jsonl") if "fd8" in r]
    fd = {r["step"]: r["fd8"] for r in samples}
    assert set(fd) == {0, 100, 200}
    assert fd[200] < 0.4 * fd[0], fd
    # the samples' diversity (hvdgan.run.collapse), its worst class named, the last in result.json
    assert all(0 <= r["diversity"] and r["diversity_class"] in range(10) for r in samples), samples
    quality = json.loads((out / "result.json").read_text())["quality"]
    assert quality == {k: samples[-1][k] for k in ("step", "fd8", "diversity", "diversity_class")}


def test_loss_plot_legend_names_every_line():
    from hvdgan.run.runlog import loss_figure

    records = [{"step": s, "loss_d": 1.0, "loss_g": 2.0, "d_real": 0.6, "d_fake": 0.4} for s in (1, 2)]
    fig = loss_figure([*records, {"step": 2, "fd8": 30.0, "diversity": 0.8},
                       {"step": 2, "fid": 90.0, "precision": 0.5, "recall": 0.4}])
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()]
    assert sorted(legends) == sorted([["D loss", "G loss", "FD (8x8)"], ["D(x)", "D(G(z))"],
                                      ["FID (Inception)", "precision", "recall", "diversity / real",
                                       "collapse warning"]])
    plain = loss_figure(records)  # no second axis on the losses: the legend on the panel itself
    assert [t.get_text() for t in plain.axes[0].get_legend().get_texts()] == ["D loss", "G loss"]
    assert loss_figure([{"step": 0, "fd8": 1.0}]) is None
