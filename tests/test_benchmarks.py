"""Every benchmark runs in its smallest mode, so that a crash cannot hide until someone measures.

The figures of these runs mean nothing (tiny models, one short round, a loaded machine); what is checked is
that each script gets through every configuration it times, hands its results back and prints its summary.
bench_train.py's workers hand their results back as files: the test runs its horovodrun --mpi and --gloo
configurations, whose output tags used to break the parsing of stdout.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_env
from hvdgan.dist.launch import run

BENCH = ROOT / "benchmarks"


def bench(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / script), *args]
    try:
        return run(cmd, timeout=timeout, capture_output=True, text=True, env=run_env(), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s\n{exc.output}\n{exc.stderr}")


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                                  f"stderr:\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.mark.mp
def test_bench_train_smoke_runs_each_way_of_starting_workers():
    """--smoke: a plain process, hvdgan under horovodrun --mpi (the output tags that broke json.loads),
    the plain Horovod loop under horovodrun --gloo, and two independent processes; then the summary."""
    out = ok(bench("bench_train.py", "--smoke", timeout=600))
    for name in ("plain@np1", "hvdgan@np2/mpi", "plain-horovod@np2/gloo", "plain-pair@np2"):
        assert re.search(rf"{re.escape(name)} \d+ ms/step", out), f"no time for {name}:\n{out}"
    assert "hvdgan np=1 vs plain PyTorch loop (throughput ratio):" in out, out
    assert len(re.findall(r"weak scaling np=2 vs np=1, .*:\s+(\d+\.\d{3}|n/a)", out)) == 4, out
    assert re.search(r"the machine's ceiling\): \d+\.\d{3}$", out, re.M), out


def test_bench_startup_smoke_times_both_checks():
    out = ok(bench("bench_startup.py", "--rounds", "1", "--only", "check"))
    assert re.search(r"framework imported \(upstream\) [\d.]+ s, library alone \(patches/\) [\d.]+ s: [\d.]+x",
                     out), out


def test_bench_data_smoke_times_every_method():
    out = ok(bench("bench_data.py", "--smoke", "--no-pin"))
    for name in ("ceiling", "slice-copy", "h5-none", "h5-none-mem", "h5-none-h5py", "h5-gzip", "h5-gzip-mem",
                 "h5-lzf", "h5-lzf-mem", "imagefolder"):
        assert re.search(rf"^{re.escape(name)}\s+[\d,]+\s+[\d.]+x\s+\d+%$", out, re.M), f"no row for {name}:\n{out}"
    assert "not judged (--smoke)" in out


def test_bench_placement_cpu_smoke_is_bit_identical(tmp_path):
    result = tmp_path / "placement.json"
    out = ok(bench("bench_placement.py", "--device", "cpu", "--rounds", "1", "--steps", "1", "--warmup", "0",
                   "--check-steps", "2", "--ngf", "8", "--ndf", "8", "--nz", "16", "--batch-size", "4",
                   "--json", str(result)))
    assert re.search(r"^G=cpu,D=cpu\s+[\d.]+\s+\d+\s+[\d.]+x", out, re.M), out
    assert "G=cpu,D=cpu" in out and ": OK" in out, out
    assert result.is_file()


def test_bench_placement_on_cuda_without_a_gpu_says_so_and_exits_2(capsys):
    if torch.cuda.is_available():  # a GPU machine: the smallest real GPU run instead
        out = ok(bench("bench_placement.py", "--rounds", "1", "--steps", "1", "--warmup", "1", "--ngf", "8",
                       "--ndf", "8", "--batch-size", "4"))
        assert "all-on-GPU" in out and "MISMATCH" not in out
        return
    # in this process (it stops before Horovod starts): loading the script is its import check as well
    spec = importlib.util.spec_from_file_location("bench_placement", BENCH / "bench_placement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible here" in err and "--device cpu" in err


@pytest.mark.mp
def test_bench_quality_smoke_scores_every_setting():
    """Two settings (the old demo; the demo job, which is the dcgan-cond-b8-ms-g3 candidate, trained once) for
    2 CPU-seconds each on 2 ranks, stopped by USR1 as on a preemption, then scored."""
    out = ok(bench("bench_quality.py", "--budget", "2", "--clock", "cpu", "--samples", "128", "--candidate",
                   "dcgan-cond-b8-ms-g3"))
    assert "dcgan-cond-b8-ms-g3: the same setting as demo" in out, out
    rows = re.findall(r"^\| (\S+) \| (\d+) \| ([\d.]+) \|", out, re.M)
    assert len(rows) >= 2 and all(int(steps) > 0 for _, steps, _ in rows), out
    assert re.search(r"fd8 at the same budget: [\d.]+ +target <= 0.5", out), out


@pytest.mark.mp
def test_bench_conditional_smoke_classifies_the_samples():
    out = ok(bench("bench_conditional.py", "--steps", "4", "--per-class", "4"))
    assert re.search(r"classifier accuracy on held-out real digits: 0\.9\d", out), out
    assert re.search(r"accuracy on generated digits .*: [\d.]+ +chance 0.100", out), out
    assert re.search(r"variety within a class .*: [\d.]+$", out, re.M), out


def load_bench(name: str):
    """A benchmark script as a module (benchmarks/ on sys.path, as when it runs: they import each other)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_sets_mnist_is_5000_real_padded_digits():
    sets = load_bench("quality_sets")
    d = sets.mnist()
    images, labels = d["images"], d["labels"]
    assert images.shape == (5000, 1, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [500] * 10
    assert not images[:, :, :2].any() and not images[:, :, :, -2:].any()  # the padding is black
    ink = (images > 127).mean(axis=(1, 2, 3))
    assert ink.min() > 0.02 and images.std(axis=(1, 2, 3)).min() > 20  # every image has strokes


def test_quality_sets_photos_are_rgb_patches_of_two_photographs_split_by_region(tmp_path):
    sets = load_bench("quality_sets")
    train, held = sets.photos()
    for d, n in ((train, 1070), (held, 700)):
        images, labels = d["images"], d["labels"]
        assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [n // 2] * 2
        assert d["label_names"].tolist() == ["china", "flower"]
        assert np.median(images.std(axis=(1, 2, 3))) > 10  # texture, not flat colour
        assert (images[:, 0] != images[:, 2]).mean() > 0.5  # colour, not grey in three channels
    both = np.concatenate([train["images"], held["images"]]).reshape(1770, -1)
    assert len(np.unique(both, axis=0)) == 1770  # no two patches alike, none in both halves
    # the 2x2 block mean, the patch grid, and the stripes: no pixel in both halves
    assert sets.downscale(np.arange(16, dtype=np.uint8).reshape(4, 4, 1), 2)[..., 0].tolist() == [[2, 4], [10, 12]]
    assert sets.patches_of(np.zeros((40, 48, 3), np.uint8), 8).shape == (2 * 3, 3, 32, 32)
    columns = np.broadcast_to(np.arange(256, dtype=np.uint8), (32, 256))[..., None]  # pixel value = its column
    t, h = sets.split_patches([[columns]], ["x"], 8)
    assert len(t["images"]) == len(h["images"]) == 2 * 5  # two stripes of 64 columns each, 5 patches per stripe
    assert not set(np.unique(t["images"])) & set(np.unique(h["images"]))

    from hvdgan.data import open_source

    src = open_source(sets.source("photos", tmp_path), size=32)  # what `hvdgan prepare` reads
    assert (src.count, src.channels, src.label_names) == (1070, 3, ["china", "flower"])
    assert open_source(sets.holdout_source("photos", tmp_path), size=32).count == 700
    assert sets.source("digits", tmp_path) == "digits" and sets.holdout_source("digits", tmp_path) is None


def test_quality_sets_textures_are_grey_patches_of_three_photographs(tmp_path):
    sets = load_bench("quality_sets")
    train, held = sets.textures()
    for d in (train, held):
        assert d["images"].shape == (1386, 1, 32, 32) and d["images"].dtype == np.uint8
        assert np.bincount(d["labels"]).tolist() == [462] * 3
        assert d["label_names"].tolist() == ["brick", "grass", "gravel"]
        assert np.median(d["images"].std(axis=(1, 2, 3))) > 5


def test_collapse_check_photographs_is_a_folder_a_user_would_prepare(tmp_path):
    """The set beyond the sweep: one folder of RGB 32x32 PNGs per photograph, which `hvdgan prepare` labels."""
    from hvdgan.data.sources import open_source

    collapse_check = load_bench("collapse_check")
    collapse_check.main(["photographs", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(collapse_check.PHOTOGRAPHS)
    src = open_source(str(tmp_path), size=32)
    assert (src.count, src.channels, src.label_names) == (896, 3, sorted(collapse_check.PHOTOGRAPHS))


def test_bench_defaults_judges_each_setting_by_its_worst_data_set():
    bench_defaults = load_bench("bench_defaults")
    floor = dict(setting="floor", k=1000, fid=10.0, precision=0.8, recall=0.8)
    done = {("a", "floor"): floor, ("b", "floor"): dict(floor, fid=5.0)}
    z = "z=batch_size: 8"  # a setting named on the command line: NAME in the tables
    for s, fa, ra, fb, rb in (("x", 20, 0.8, 40, 0.7), ("y", 12, 0.6, 25, 0.2), (z, 11, 0.8, 16, 0.6)):
        done[("a", s)] = dict(steps=100, fid=fa, precision=0.5, recall=ra)
        done[("b", s)] = dict(steps=100, fid=fb, precision=0.5, recall=rb)
    done[("b", z)].update(budget=250.0, clock="cpu")  # (older results.jsonl rows have no budget)
    lines, winner = bench_defaults.summarise(done, ["a", "b"], ["x", "y", z])
    # y's worst FID (5.0x) beats x's (8.0x), but its recall fails on b; z: 3.2x, recall 0.75x
    assert winner == z and lines[-1].endswith("recall >= 0.6x floor first: z"), lines
    assert "| y | 2 | 5.00 (b) | 0.25 (b) | no | missed |" in lines, lines
    assert "| a | y |  | 100 | 12.00 | 0.500 | 0.600 | 1.20 | 0.75 |" in lines, lines
    assert "| z | 2 | 3.20 (b) | 0.75 (b) | yes | missed |" in lines, lines
    assert "| b | z | 250 cpu s | 100 | 16.00 | 0.500 | 0.600 | 3.20 | 0.75 |" in lines, lines
    # a sweep cut short (y did not run on b): all three are compared on a alone, where z is best
    del done[("b", "y")]
    lines, winner = bench_defaults.summarise(done, ["a", "b"], ["x", "y", z])
    assert winner == z and "| y | 1 | 1.20 (a) | 0.75 (a) | yes | met |" in lines, lines
    assert lines[-1].endswith("(over a only: the sweep was cut short)"), lines


def test_bench_defaults_report_names_a_setting_by_its_name(tmp_path, capsys):
    """--report runs nothing, and a setting run as NAME="key: value" is named by NAME alone."""
    bench_defaults = load_bench("bench_defaults")
    rows = [dict(set="digits", setting="floor", k=500, fid=10.0, precision=0.8, recall=0.8),
            dict(set="digits", setting="z=batch_size: 8", k=500, budget=250.0, clock="cpu", steps=100, fid=20.0,
                 precision=0.5, recall=0.6)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench_defaults.main(["--work", str(tmp_path), "--report", "--set", "digits", "--setting", "z"])
    out = capsys.readouterr().out
    assert "| digits | z | 250 cpu s | 100 | 20.00 | 0.500 | 0.600 | 2.00 | 0.75 |" in out, out
    assert "sweep wall time" not in out and not (tmp_path / "runs").exists(), out
