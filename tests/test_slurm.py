"""hvdgan on a real Slurm: `srun --mpi=pmix`, the plain-srun guard, and `sbatch slurm/train.sh` (a run equal to
horovodrun's, and preemption: USR1 -> checkpoint -> requeue -> resume, no step lost or repeated).

The cluster (tests/slurm_cluster.py) starts once per session in about a second; it needs Debian's slurmctld,
slurmd, slurm-client, munge and libpmix2, and fails loudly when they are missing. The first tests here use
stand-ins for srun/hvdgan/scontrol to check train.sh's logic in a second, without Slurm.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, HVDGAN, ROOT, launch
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

TRAIN_SH = ROOT / "slurm" / "train.sh"
DEMO = ROOT / "jobs" / "digits-demo.yaml"


# ------------------------------------------------------------------------ train.sh without Slurm (fast)
def test_train_sh_headers_and_syntax():
    subprocess.run(["bash", "-n", str(TRAIN_SH)], check=True)
    text = TRAIN_SH.read_text()
    headers = re.findall(r"^#SBATCH (\S+)", text, re.M)
    for want in ("--nodes=", "--ntasks-per-node=", "--cpus-per-task=", "--time=", "--output=logs/%x-%j.out",
                 "--signal=B:USR1@", "--requeue", "--open-mode=append"):
        assert any(h.startswith(want) for h in headers), want
    assert re.search(r"^##SBATCH --gpus-per-task=", text, re.M), "a commented GPU header"
    assert re.search(r"^# module load", text, re.M), "a commented module hook"
    assert "export HDF5_USE_FILE_LOCKING=FALSE" in text
    assert "--resume auto" in text and "srun --mpi=pmix" in text and "mpirun" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text


def _stand_ins(tmp_path: Path, mpi_list: str) -> dict:
    """srun / mpirun / scontrol / hvdgan stand-ins: the launchers exec the rank command (so a signal sent
    to the launcher reaches it), the rank waits for USR1, then says `preempted` and exits 75."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    scripts = {
        "srun": f"""#!/bin/bash
if [ "$1" = --mpi=list ]; then printf 'MPI plugin types are...\\n\\t{mpi_list}\\n'; exit 0; fi
echo "srun $*" >> {log}
while [ "${{1#-}}" != "$1" ]; do shift; done
exec "$@"
""",
        "mpirun": f"""#!/bin/bash
echo "mpirun $*" >> {log}
while [ "$1" != hvdgan ]; do shift; done
exec "$@"
""",
        "scontrol": f"""#!/bin/bash
echo "scontrol $*" >> {log}
""",
        # as hvdgan/dist/stop.py: a handler, then unblock (train.sh starts the ranks with USR1/TERM blocked)
        "hvdgan": f"""#!{sys.executable}
import signal, sys, time
open("{log}", "a").write("hvdgan " + " ".join(sys.argv[1:]) + "\\n")
def stop(signum, frame):
    print("preempted at step 7", flush=True)
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGUSR1, signal.SIGTERM}})
open("{tmp_path}/ready", "w").write("ready")
for i in range(40):
    time.sleep(0.05)
print("done", flush=True)
""",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42", SLURM_NTASKS="2",
               HVDGAN_REQUEUE_WAIT="0")
    return env


def _run_train_sh(tmp_path, env, preempt: bool, sig=signal.SIGUSR1):
    proc = subprocess.Popen(["bash", str(TRAIN_SH), str(DEMO), "--max-steps", "9"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if preempt:
        t0 = time.monotonic()
        while not (tmp_path / "ready").exists():
            assert time.monotonic() - t0 < 20 and proc.poll() is None, proc.communicate()[0]
            time.sleep(0.05)
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, (tmp_path / "calls").read_text()


def test_train_sh_preemption_logic(tmp_path):
    """USR1 to the batch shell: forwarded to the step, which exits 75 after its checkpoint; then requeue."""
    env = _stand_ins(tmp_path, "pmix")
    rc, out, calls = _run_train_sh(tmp_path, env, preempt=True)
    assert rc == 75, out
    assert "preempted at step 7" in out and "requeueing job 42" in out
    assert re.search(r"^srun --mpi=pmix .*hvdgan train --job \S+digits-demo.yaml --resume auto --max-steps 9$",
                     calls, re.M), calls
    assert "scontrol requeue 42" in calls


def test_train_sh_term_stops_the_ranks_without_killing_them_and_does_not_requeue(tmp_path):
    """TERM to the batch shell (scancel): the launcher gets USR1, not TERM (srun and mpirun kill the ranks on
    TERM); the ranks exit 75 after their checkpoint; no requeue; the script's status is theirs."""
    env = _stand_ins(tmp_path, "pmix")
    rc, out, calls = _run_train_sh(tmp_path, env, preempt=True, sig=signal.SIGTERM)
    assert rc == 75 and "preempted at step 7" in out and "not requeueing" in out, out
    assert "scontrol requeue" not in calls


def test_train_sh_without_preemption_does_not_requeue(tmp_path):
    env = _stand_ins(tmp_path, "pmix")
    rc, out, calls = _run_train_sh(tmp_path, env, preempt=False)
    assert rc == 0 and "done" in out
    assert "scontrol" not in calls


def test_train_sh_falls_back_to_mpirun_without_pmix(tmp_path):
    env = _stand_ins(tmp_path, "none")
    env["HOROVOD_FUSION_THRESHOLD"] = "0"
    rc, out, calls = _run_train_sh(tmp_path, env, preempt=True)
    assert rc == 75, out
    line = next(c for c in calls.splitlines() if c.startswith("mpirun"))
    assert "--bind-to none --map-by slot" in line and "-x HOROVOD_FUSION_THRESHOLD" in line
    assert ("--allow-run-as-root" in line) == (os.geteuid() == 0)
    assert "scontrol requeue 42" in calls


def test_train_sh_names_a_missing_job_file(tmp_path):
    env = _stand_ins(tmp_path, "pmix")
    proc = subprocess.run(["bash", str(TRAIN_SH), "jobs/nope.yaml"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "jobs/nope.yaml" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------- real Slurm
def job_env(cluster) -> dict:
    env = dict(cluster.env)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def world_rows(text: str) -> list[list[str]]:
    """Rows of `hvdgan info`'s world table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank  local_rank  size"))
    rows = []
    for line in lines[start + 2:]:
        if not re.match(r"^\d+\s", line):
            break
        rows.append(line.split())
    return rows


@pytest.mark.slurm
def test_cluster_runs_two_tasks(slurm_cluster):
    out = slurm_cluster.run(["srun", "-n", "2", "bash", "-c", "echo task $SLURM_PROCID of $SLURM_NTASKS"],
                            timeout=60).stdout
    assert sorted(out.split("\n")[:2]) == ["task 0 of 2", "task 1 of 2"]
    assert "pmix" in slurm_cluster.run(["srun", "--mpi=list"]).stdout + slurm_cluster.run(["srun", "--mpi=list"]).stderr


@pytest.mark.slurm
def test_sbatch_srun_pmix_info_is_one_two_rank_world(slurm_cluster, tmp_path):
    script = tmp_path / "info.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --ntasks=2\nsrun --mpi=pmix -n 2 {HVDGAN} info\n")
    log = tmp_path / "info.out"
    proc = slurm_cluster.run(["sbatch", "--wait", f"--output={log}", str(script)], env=job_env(slurm_cluster),
                             timeout=300, check=False)
    text = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{text}"
    assert "world: 2 rank(s)" in text, text
    rows = world_rows(text)
    assert [r[0] for r in rows] == ["0", "1"] and all(r[2] == "2" for r in rows), text


@pytest.mark.slurm
def test_plain_srun_is_refused_by_the_guard(slurm_cluster):
    """Plain srun (no PMIx) starts two size-1 worlds: hvdgan must say so and fail."""
    proc = slurm_cluster.run(["srun", "-n", "2", HVDGAN, "info"], env=job_env(slurm_cluster), timeout=240,
                             check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "SLURM_STEP_NUM_TASKS" in out and "srun --mpi=pmix" in out, out[-3000:]
    assert "world: " not in out


# --------------------------------------------------------------------------- sbatch slurm/train.sh
SMALL = ["--ngf", "16", "--ndf", "16", "--batch-size", "32", "--log-every", "1", "--threads", "1",
         "--no-tensorboard"]


def submit_train(cluster, workdir: Path, args: list[str]) -> tuple[int, Path]:
    """`sbatch slurm/train.sh JOB ARGS` as a user would, with the log in workdir."""
    log = workdir / "slurm-%j.out"
    jobid = cluster.sbatch([f"--chdir={workdir}", f"--output={log}", "--job-name=hvdgan-test", str(TRAIN_SH),
                            str(DEMO), *args], env=job_env(cluster))
    return jobid, workdir / f"slurm-{jobid}.out"


def train_steps(run: Path) -> list[int]:
    from hvdgan.run.runlog import read_metrics

    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss_d" in r]


def final_state(run: Path, step: int) -> dict:
    import torch

    return torch.load(run / "checkpoints" / f"ckpt-{step:08d}.pt", weights_only=False, map_location="cpu")


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    for key in ("G", "D", "G_ema"):
        for name, ta in a[key].items():
            tb = b[key][name]
            if torch.is_tensor(ta) and ta.is_floating_point():
                assert torch.equal(ta, tb), f"{key}.{name} differs"


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_train_sh_matches_horovodrun(slurm_cluster, digits, tmp_path):
    n = 12
    args = ["--data", str(digits), *SMALL, "--max-steps", str(n), "--checkpoint-every", "6", "--sample-every", "6"]
    ref = tmp_path / "horovodrun"
    launch("mpi", [HVDGAN, "train", "--job", str(DEMO), *args, "--out", str(ref)], timeout=300)

    run = tmp_path / "slurm"
    jobid, log = submit_train(slurm_cluster, tmp_path, [*args, "--out", str(run)])
    info = slurm_cluster.wait(jobid, timeout=400)
    text = log.read_text() if log.exists() else "(no log)"
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{text[-4000:]}"
    assert "srun --mpi=pmix" in text  # PMIx is there: the srun path ran, not the mpirun fallback

    assert train_steps(run) == train_steps(ref) == list(range(1, n + 1))
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(run) == files(ref)
    assert_same_weights(final_state(run, n), final_state(ref, n))
    import json

    assert json.loads((run / "config.json").read_text())["world_size"] == 2


# USR1 / TERM / preemption / a killed rank through slurm/train.sh: tests/test_slurm_signals.py
