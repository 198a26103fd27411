"""Every benchmark runs in its smallest mode, so that a crash cannot hide until someone measures.

The figures of these runs mean nothing (tiny models, one short round, a loaded machine); what is checked is
that each script gets through every configuration it times, hands its results back and prints its summary.
bench_train.py's workers hand their results back as files: the test runs its horovodrun --mpi and --gloo
configurations, whose output tags used to break the parsing of stdout.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

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
    """Two settings (the old demo; the demo job, which is the dcgan-cond-b8-g6 candidate, trained once) for 2
    CPU-seconds each on 2 ranks, stopped by USR1 as on a preemption, then scored."""
    out = ok(bench("bench_quality.py", "--budget", "2", "--clock", "cpu", "--samples", "128", "--candidate",
                   "dcgan-cond-b8-g6"))
    assert "dcgan-cond-b8-g6: the same setting as demo" in out, out
    rows = re.findall(r"^\| (\S+) \| (\d+) \| ([\d.]+) \|", out, re.M)
    assert len(rows) >= 2 and all(int(steps) > 0 for _, steps, _ in rows), out
    assert re.search(r"fd8 at the same budget: [\d.]+ +target <= 0.5", out), out


@pytest.mark.mp
def test_bench_conditional_smoke_classifies_the_samples():
    out = ok(bench("bench_conditional.py", "--steps", "4", "--per-class", "4"))
    assert re.search(r"classifier accuracy on held-out real digits: 0\.9\d", out), out
    assert re.search(r"accuracy on generated digits .*: [\d.]+ +chance 0.100", out), out
    assert re.search(r"variety within a class .*: [\d.]+$", out, re.M), out
