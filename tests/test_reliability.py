"""Long runs a user can trust: linear history on rollback, torn metrics lines, unreadable and
non-finite checkpoints, safe loading and permissions, threads and memory from the allocation, and a
numerically stable CPU SyncBatchNorm."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HVDGAN as HVDGAN_EXE
from conftest import ROOT, hvdgan, launch, run_env
from hvdgan.run import checkpoint as ckpt
from hvdgan.dist import resources
from hvdgan.errors import HvdganError
from hvdgan.run.runlog import read_metrics

SMALL = ["--ngf", "8", "--ndf", "8", "--batch-size", "16", "--log-every", "1", "--no-tensorboard",
         "--sample-every", "1000"]


def steps_of(out):
    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss_d" in r]


def names(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


# ------------------------------------------------------------------------------ 2. rollback, linear history
def test_rollback_moves_later_history_aside_and_auto_follows_it(digits, tmp_path):
    out = tmp_path / "run"
    common = ["--data", digits, "--out", out, *SMALL, "--checkpoint-every", "2", "--keep-checkpoints", "2"]
    hvdgan("train", *common, "--max-steps", "8")
    assert names(out / "checkpoints") == ["ckpt-00000006.pt", "ckpt-00000008.pt"]
    # roll back to step 6 (the oldest kept), then train on to 10 with keep-last-2
    hvdgan("train", *common, "--max-steps", "10", "--resume", out / "checkpoints" / "ckpt-00000006.pt")
    aside = [p for p in out.iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1 and aside[0].name.endswith("-from-6")
    assert names(aside[0] / "checkpoints") == ["ckpt-00000008.pt"]  # moved, not deleted
    assert [r["step"] for r in read_metrics(aside[0] / "metrics.jsonl") if "loss_d" in r] == [7, 8]
    # keep-last-2 never removed the checkpoint the run resumed from
    assert names(out / "checkpoints") == ["ckpt-00000006.pt", "ckpt-00000008.pt", "ckpt-00000010.pt"]
    assert steps_of(out) == list(range(1, 11))  # one linear history
    # --resume auto follows the new history: step 10, not the abandoned step 8
    hvdgan("train", *common, "--max-steps", "12", "--resume", "auto")
    assert steps_of(out) == list(range(1, 13))
    assert len([p for p in out.iterdir() if p.name.startswith("abandoned-")]) == 1


# ------------------------------------------------------------------ 3. torn metrics line, 4. unreadable newest
def test_torn_metrics_line_and_corrupt_newest_checkpoint(digits, tmp_path):
    out = tmp_path / "run"
    common = ["--data", digits, "--out", out, *SMALL, "--checkpoint-every", "3", "--keep-checkpoints", "3"]
    hvdgan("train", *common, "--max-steps", "6")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "epoch": 0, "loss_d": 1.2')  # a SIGKILL in the middle of a write
    newest = out / "checkpoints" / "ckpt-00000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # torn checkpoint
    (out / "checkpoints" / ".ckpt-00000009.pt.abc.tmp").write_bytes(b"partial")  # an interrupted write
    proc = hvdgan("train", *common, "--max-steps", "8", "--resume", "auto")
    err = proc.stderr
    assert "dropped a torn or unreadable record" in err and "metrics.jsonl" in err
    assert "ckpt-00000003.pt" in err and "ckpt-00000006.pt" in err  # the warning names both
    assert json.loads((out / "result.json").read_text())["step"] == 8
    assert steps_of(out) == list(range(1, 9))
    assert not list((out / "checkpoints").glob(".*.tmp"))  # the leftover temporary file is gone
    aside = [p for p in out.iterdir() if p.name.startswith("abandoned-")]
    assert aside and "ckpt-00000006.pt" in names(aside[0] / "checkpoints")


def test_newest_readable_with_none_readable_is_a_clear_error(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "ckpt-00000002.pt").write_bytes(b"junk")
    with pytest.raises(HvdganError, match="no readable checkpoint"):
        ckpt.newest_readable(d)


INF_AFTER_STEP = """
import sys, torch
from hvdgan import gan
step = gan.GAN.step
def bad_step(self, *args, **kwargs):  # the fault: G's weights turn infinite after the update; the losses
    result = step(self, *args, **kwargs)  # of the step (computed before it) stay finite
    with torch.no_grad():
        next(self.G.parameters()).view(-1)[0] = float("inf")
    return result
gan.GAN.step = bad_step
from hvdgan.cli import main
sys.argv[0] = "hvdgan"
main()
"""


def test_no_checkpoint_with_non_finite_parameters(digits, tmp_path):
    """Weights that turn infinite while the losses are finite: the parameter check, not the loss check,
    must stop the run, and no checkpoint is written."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", INF_AFTER_STEP, "train", "--data", str(digits), "--out", str(out),
                           *SMALL, "--max-steps", "3", "--checkpoint-every", "1"],
                          capture_output=True, text=True, timeout=300, env=run_env())
    assert proc.returncode != 0
    assert "step 1: G." in proc.stderr and "NaN or infinite: no checkpoint written" in proc.stderr, proc.stderr[-2000:]
    assert ckpt.list_checkpoints(out / "checkpoints") == []


def test_first_non_finite_names_the_tensor():
    assert ckpt.first_non_finite({"G": {"w": torch.ones(2)}, "opt": {"state": {0: {"exp_avg": torch.tensor(
        [1.0, float("nan")])}}}}) == "opt.state.0.exp_avg"
    assert ckpt.first_non_finite({"G": {"w": torch.ones(2), "n": torch.tensor(3)}}) is None


# ------------------------------------------------------------------ 5. weights_only and the umask
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_holds_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt-00000001.pt"
    torch.save({"G": {}, "arch": {}, "x": Payload(marker)}, evil)
    with pytest.raises(HvdganError, match="weights_only=True"):
        ckpt.load(evil)
    proc = hvdgan("sample", evil, "--out", tmp_path / "grid.png", check=False)
    assert proc.returncode != 0 and "refused" in proc.stderr
    assert not marker.exists()


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        path = ckpt.save({"G": {"w": torch.ones(1)}, "arch": {}}, tmp_path / "c", 1, keep=1)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664
    assert ckpt.load(path)["G"]["w"].item() == 1.0


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the write fails, the error names the file and the cause,
    the previous checkpoint is intact and no temporary file is left."""
    code = f"""
import resource, signal, sys, torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
sys.path.insert(0, {str(ROOT)!r})
from hvdgan.run import checkpoint as ckpt
from hvdgan.errors import HvdganError
d = {str(tmp_path / 'c')!r}
ckpt.save({{"G": {{"w": torch.ones(10)}}, "arch": {{}}}}, d, 1, keep=3)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    ckpt.save({{"G": {{"w": torch.ones(100000)}}, "arch": {{}}}}, d, 2, keep=3)
except HvdganError as e:
    print(e.message); sys.exit(3)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "ckpt-00000002.pt: could not write the checkpoint (File too large)" in proc.stdout
    assert names(tmp_path / "c") == ["ckpt-00000001.pt"]
    assert ckpt.load(tmp_path / "c" / "ckpt-00000001.pt")["G"]["w"].sum() == 10


# ------------------------------------------------------------------ 6. threads and memory from the allocation
def test_threads_follow_affinity_and_omp(digits, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    env = {k: v for k, v in run_env().items() if k != "OMP_NUM_THREADS"}
    cases = [(["taskset", "-c", "0"], {}, 1), ([], {"OMP_NUM_THREADS": "1"}, 1), ([], {}, 2)]
    for i, (prefix, extra, expected) in enumerate(cases):
        out = tmp_path / f"run{i}"
        cmd = [*prefix, HVDGAN_EXE, "train", "--data", str(digits), "--out", str(out), *SMALL, "--max-steps", "1"]
        subprocess.run(cmd, env={**env, **extra}, check=True, capture_output=True, timeout=300)
        assert json.loads((out / "config.json").read_text())["threads"] == expected, (prefix, extra)


def test_threads_are_shared_among_ranks_with_overlapping_cpus():
    assert resources.threads_for({0, 1, 2, 3}, [{0, 1, 2, 3}, {0, 1, 2, 3}], env={}) == 2
    assert resources.threads_for({0, 1}, [{0, 1}, {2, 3}], env={}) == 2  # bound ranks: each its own CPUs
    assert resources.threads_for({0}, [{0}, {0}], env={}) == 1
    assert resources.threads_for({0, 1}, [{0, 1}], env={"OMP_NUM_THREADS": "3"}) == 3


def test_memory_limit_takes_slurm_mem():
    assert resources.memory_limit({"SLURM_MEM_PER_NODE": "1024"}) <= 1 << 30
    assert resources.memory_limit({"SLURM_MEM_PER_CPU": "100", "SLURM_CPUS_ON_NODE": "2"}) <= 200 << 20
    assert resources.memory_budget(4, env={"SLURM_MEM_PER_NODE": "1024"}) == (1 << 30) // 2 // 4


# ------------------------------------------------------------------ 8. SyncBatchNorm, numerically stable
MOMENTA = ["0.1", "none"]


@pytest.fixture(scope="module")
def syncbn_errors(tmp_path_factory):
    """One launch checks every momentum (a launch costs more than the checks)."""
    out = tmp_path_factory.mktemp("syncbn")
    launch("gloo", [sys.executable, str(ROOT / "tests" / "syncbn_worker.py"),
                    *[a for m in MOMENTA for a in (str(out / f"errors-{m}.json"), m)]], timeout=120)
    return out


@pytest.mark.parametrize("momentum", MOMENTA)
def test_syncbn_is_stable_against_batchnorm_on_the_whole_batch(syncbn_errors, momentum):
    errors = json.loads((syncbn_errors / f"errors-{momentum}.json").read_text())
    assert not errors["nan"]
    assert errors["out"] < 2e-3, errors  # normalised outputs (float32 resolution of x ~ 30 is 2e-6 = 7e-4 std)
    assert errors["grad"] < 2e-3, errors
    assert errors["running_mean"] < 1e-5 and errors["running_var"] < 1e-3, errors


# ------------------------------------------------------------------ 1. resume across world and batch sizes
def test_resume_across_world_and_batch_sizes(digits, tmp_path):
    """2 ranks -> 1 rank -> 2 ranks with batch 16 -> 32: each resume continues (with a warning), none crashes,
    and the history is one run. The 1-rank run stops at batch 60 of its 112, more than the 56 batches of a
    2-rank epoch (before: `start_batch: must be in 0..56, got 60`)."""
    out = tmp_path / "run"
    common = [HVDGAN_EXE, "train", "--data", str(digits), "--out", str(out), *SMALL, "--log-every", "10",
              "--checkpoint-every", "1000"]
    launch("gloo", [*common, "--max-steps", "4"])
    one = hvdgan(*common[1:], "--max-steps", "60", "--resume", "auto")
    assert "resuming a 2-rank run on 1 ranks" in one.stderr and "same fraction" in one.stderr
    two = launch("gloo", [*common, "--max-steps", "64", "--resume", "auto", "--batch-size", "32"])
    assert "resuming a 1-rank run on 2 ranks" in two.stdout + two.stderr
    assert json.loads((out / "result.json").read_text())["step"] == 64
    assert steps_of(out) == [4, *range(10, 61, 10), 64]


def test_batch_size_change_continues_exactly():
    from hvdgan.run.state import resume_batch

    meta = {"batch": 6, "world_size": 2, "batch_size": 16, "epoch": 3, "batches_per_epoch": 56}
    assert resume_batch(meta, 2, 32, 28) == (3, None)  # 96 images done: batch 3 of 32, exactly
    batch, warning = resume_batch(meta, 2, 64, 14)  # 96 is no multiple of 64: continue just past it
    assert batch == 2 and "continuing at image 128" in warning
    assert resume_batch({**meta, "batch": 50}, 2, 16, 56) == (50, None)  # same world and batch size: exact
    batch, warning = resume_batch({**meta, "world_size": 1, "batch": 60, "batches_per_epoch": 112}, 2, 16, 56)
    assert batch == 30 and "same fraction" in warning  # was: start_batch must be in 0..56, got 60


def test_a_ranks_first_images_do_not_depend_on_the_batch_size(digits):
    """What makes a batch-size change exact: the set of the first k images of a rank's share is the same
    for every batch size that divides k."""
    from hvdgan.data import ShardedReader

    a = ShardedReader(digits, rank=1, size=2, batch_size=16, seed=3).rows(2)
    b = ShardedReader(digits, rank=1, size=2, batch_size=32, seed=3).rows(2)
    assert set(a[:96].tolist()) == set(b[:96].tolist())


# ------------------------------------------------------------------------------------- the run's lock
def test_a_run_directory_in_use_is_refused_and_a_dead_holders_lock_taken_over(digits, tmp_path):
    import time

    out = tmp_path / "run"
    args = ["train", "--data", str(digits), "--out", str(out), *SMALL, "--checkpoint-every", "5"]
    first = subprocess.Popen([HVDGAN_EXE, *args, "--max-steps", "100000"], env=run_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in (out / "checkpoints").glob("ckpt-*.pt")] and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.2)
        second = hvdgan(*args, "--resume", "auto", "--max-steps", "100000", check=False)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert f"{out}: in use by another training (hvdgan train on " in line and f"pid {first.pid}," in line
    finally:
        first.kill()  # SIGKILL: no clean-up, the lock file still names it
        first.wait(timeout=60)
    assert f'"pid": {first.pid}' in (out / ".hvdgan.lock").read_text()
    third = hvdgan(*args, "--resume", "auto", "--max-steps", "12")
    assert "resumed from" in third.stderr and json.loads((out / "result.json").read_text())["status"] == "done"
    assert (out / ".hvdgan.lock").read_text() == ""  # released at the end


def test_a_live_holder_on_this_host_is_seen_without_the_kernels_lock(tmp_path):
    """Where flock is not shared (some network file systems), a holder that is alive on this host and still
    hvdgan is refused all the same; a dead one's file is taken over."""
    import socket

    from hvdgan.run.lock import NAME, RunLock

    holder = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)", "hvdgan"],
                              stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()  # it runs: its command line is its own now, not the parent's it was forked from
    try:
        (tmp_path / NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "since": "x"}))
        with pytest.raises(HvdganError, match=rf"in use by another training \(hvdgan train on .*, pid {holder.pid},"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # its holder is gone
    assert json.loads((tmp_path / NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(HvdganError, match="in use by another training"):
        RunLock(tmp_path).acquire()  # the kernel's lock, from another open file
    lock.release()
