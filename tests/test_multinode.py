"""hvdgan on two nodes, as a user runs it, on a real two-node cluster started by the tests
(tests/multinode_cluster.py: two network namespaces node1 and node2, each with slurmd and sshd).

Every run is 4 ranks, 2 per node, and is checked the same way from what `hvdgan train` writes:
world.json (each rank's host, local rank and size, and the rows it reads in the epoch) and result.json
(`parameters_identical`: the ranks' parameters compared bit for bit at the end).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from conftest import BIN, HVDGAN, ROOT, run_env
from hvdgan.dist.launch import run
from multinode_cluster import IFACE, two_nodes, two_nodes_session  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

TRAIN_SH = ROOT / "slurm" / "train.sh"
DEMO = "jobs/digits-demo.yaml"
STEPS = 6  # runs over ssh
SLURM_STEPS = 40  # the Slurm runs: long enough for a preemption to land mid-run (~0.1 s a step here)
# the demo job, made tiny through HVDGAN_TRAIN_* (what a user overrides without editing the job file)
TINY = {"HVDGAN_TRAIN_NGF": "8", "HVDGAN_TRAIN_NDF": "8", "HVDGAN_TRAIN_BATCH_SIZE": "32",
        "HVDGAN_TRAIN_MAX_STEPS": str(STEPS), "HVDGAN_TRAIN_LOG_EVERY": "1", "HVDGAN_TRAIN_SAMPLE_EVERY": "1000",
        "HVDGAN_TRAIN_CHECKPOINT_EVERY": "1000", "HVDGAN_TRAIN_THREADS": "1", "HVDGAN_TRAIN_TENSORBOARD": "false"}


def env_for(cluster, data, out, steps: int = STEPS, **extra) -> dict:
    env = run_env(**TINY, HVDGAN_TRAIN_DATA=str(data), HVDGAN_TRAIN_OUT=str(out), **extra)
    env["HVDGAN_TRAIN_MAX_STEPS"] = str(steps)
    env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    env["PATH"] = f"{cluster.root / 'bin'}:{BIN}:{env['PATH']}:/usr/sbin:/sbin"
    return env


def on_node1(cluster, argv, env, timeout=240):
    """Run argv in a shell on node1 (as a user logged in there would), under an outer time-out."""
    cmd = cluster.on("node1", argv)
    try:
        proc = run(cmd, timeout=timeout, capture_output=True, text=True, env=env, cwd=ROOT)
    except Exception as exc:  # subprocess.TimeoutExpired: the launcher's whole process group was killed
        pytest.fail(f"{' '.join(map(str, argv))} on node1: {exc}\n{getattr(exc, 'output', '')}\n"
                    f"{getattr(exc, 'stderr', '')}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} on node1 exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-6000:]}")
    return proc


def check_four_ranks_on_two_nodes(run_dir: Path, steps: int = STEPS) -> dict:
    """The checks every two-node run must pass; returns world.json."""
    world = json.loads((run_dir / "world.json").read_text())
    ranks = sorted(world["ranks"], key=lambda r: r["rank"])
    assert world["size"] == 4 and [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert world["nodes"] == {"node1": [0, 1], "node2": [2, 3]}, world["nodes"]
    assert [(r["host"], r["local_rank"], r["local_size"]) for r in ranks] == \
        [("node1", 0, 2), ("node1", 1, 2), ("node2", 0, 2), ("node2", 1, 2)]
    assert [r["cross_size"] for r in ranks] == [2] * 4 and [r["cross_rank"] for r in ranks] == [0, 0, 1, 1]
    # the shards are dealt out (each once), and every image is read at most once in the epoch: all but the
    # remainder that does not fill a last batch on every rank
    shards = sorted(s for r in ranks for s in r["shards"])
    assert shards == list(range(world["shards"])), shards
    rows = [x for r in ranks for x in r["rows"]]
    assert len(rows) == len(set(rows)), "an image was read twice in one epoch"
    assert set(rows) <= set(range(world["images"]))
    per_rank = {len(r["rows"]) for r in ranks}
    assert len(per_rank) == 1, "ranks read different numbers of batches"
    assert world["images"] - len(rows) < 4 * 32, f"{world['images'] - len(rows)} images never read"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "done" and result["step"] == steps, result
    assert result["parameters_identical"] is True, "the ranks' parameters differ"
    return world


def final_weights(run_dir: Path, step: int = SLURM_STEPS) -> str:
    import torch

    state = torch.load(run_dir / "checkpoints" / f"ckpt-{step:08d}.pt", weights_only=False, map_location="cpu")
    h = hashlib.sha256()
    for key in ("G", "D", "G_ema"):
        for name, t in sorted(state[key].items()):
            if torch.is_tensor(t) and t.is_floating_point():
                h.update(name.encode() + t.contiguous().numpy().tobytes())
    return h.hexdigest()


def train_steps(run_dir: Path) -> list[int]:
    from hvdgan.run.runlog import read_metrics

    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss_d" in r]


# ------------------------------------------------------------------------------------------ the cluster
def test_cluster_has_two_nodes_with_their_own_names(two_nodes):
    out = two_nodes.run(["srun", "-N", "2", "--ntasks-per-node=2", "bash", "-c",
                         "echo $SLURM_PROCID $SLURM_LOCALID $(hostname)"], timeout=60).stdout.split("\n")
    assert sorted(line for line in out if line) == ["0 0 node1", "1 1 node1", "2 0 node2", "3 1 node2"]
    ssh = run(two_nodes.on("node1", ["ssh", "node2", "hostname; ip -o -4 addr show " + IFACE]),
              env=two_nodes.node_env(), capture_output=True, text=True, timeout=30)
    assert ssh.returncode == 0 and ssh.stdout.startswith("node2\n"), ssh.stderr
    assert two_nodes.addr("node2") in ssh.stdout


def test_hvdgan_info_shows_the_nodes(two_nodes):
    """`srun --mpi=pmix` from the host (a login node): one 4-rank world, its nodes and local ranks."""
    env = dict(run_env(), SLURM_CONF=two_nodes.env["SLURM_CONF"])
    proc = two_nodes.run(["srun", "--mpi=pmix", "-N", "2", "--ntasks-per-node=2", HVDGAN, "info"], env=env,
                         timeout=300, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "world: 4 rank(s) on 2 node(s): node1 ranks 0-1, node2 ranks 2-3" in out, out
    rows = [line.split() for line in out.splitlines() if re.match(r"^\d+\s+\d+\s+4\s+2\s+node\d", line)]
    assert [(r[0], r[1], r[4]) for r in rows] == [("0", "0", "node1"), ("1", "1", "node1"), ("2", "0", "node2"),
                                                  ("3", "1", "node2")], out


# ------------------------------------------------------------------------------------------- Slurm
def submit(cluster, workdir: Path, env: dict, *sbatch_args) -> tuple[int, Path]:
    """`sbatch --nodes=2 --ntasks-per-node=2 slurm/train.sh jobs/digits-demo.yaml` from the repository."""
    jobid = cluster.sbatch(["--nodes=2", "--ntasks-per-node=2", f"--output={workdir}/slurm-%j.out",
                            "--job-name=hvdgan-2n", *sbatch_args, str(TRAIN_SH), DEMO], env=env, cwd=ROOT)
    return jobid, workdir / f"slurm-{jobid}.out"


def wait_done(cluster, jobid: int, log: Path, timeout: float = 300, restarts: str = "0") -> str:
    info = cluster.wait(jobid, timeout=timeout)
    text = log.read_text() if log.exists() else "(no log)"
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{text[-5000:]}"
    assert info["Restarts"] == restarts, f"{info}\n{text[-5000:]}"
    return text


@pytest.fixture(scope="module")
def reference(two_nodes_session, digits, tmp_path_factory):
    """An uninterrupted `sbatch --nodes=2 ... slurm/train.sh` run, its ranks started by the mpirun fallback
    (HVDGAN_LAUNCHER=mpirun: Open MPI reads the allocation and starts its daemon on node2 with srun)."""
    work = tmp_path_factory.mktemp("sbatch-2n")
    env = env_for(two_nodes_session, digits, work / "run", SLURM_STEPS, HVDGAN_LAUNCHER="mpirun")
    jobid, log = submit(two_nodes_session, work, env)
    text = wait_done(two_nodes_session, jobid, log)
    return work / "run", text


def test_sbatch_two_nodes_mpirun_fallback(reference):
    run_dir, text = reference
    assert "4 tasks on node[1-2]" in text and "mpirun --bind-to none --map-by slot" in text, text[-3000:]
    assert f"network interface: {IFACE}" in text, text[-3000:]  # found by train.sh: the route to node2
    assert "world: 4 rank(s) on 2 node(s): node1 ranks 0-1, node2 ranks 2-3" in text, text[-3000:]
    check_four_ranks_on_two_nodes(run_dir, SLURM_STEPS)
    assert train_steps(run_dir) == list(range(1, SLURM_STEPS + 1))


def test_sbatch_two_nodes_srun_pmix_preempted_requeued_same_parameters(two_nodes, reference, digits, tmp_path):
    """srun --mpi=pmix over both nodes; USR1 to the batch script (on node1) mid-run: every rank on both nodes
    stops at one step, one checkpoint is written, the job is requeued, resumes and finishes with the
    parameters of the uninterrupted run."""
    run_dir = tmp_path / "run"
    env = env_for(two_nodes, digits, run_dir, SLURM_STEPS)
    jobid, log = submit(two_nodes, tmp_path, env)
    t0 = time.monotonic()
    while not (run_dir / "metrics.jsonl").exists() or len(train_steps(run_dir)) < 2:
        info = two_nodes.job(jobid)
        assert info["JobState"] in ("PENDING", "RUNNING"), f"{info}\n{log.read_text() if log.exists() else ''}"
        assert time.monotonic() - t0 < 300, "training did not start"
        time.sleep(0.1)
    two_nodes.run(["scancel", "--signal=USR1", "--batch", str(jobid)])
    text = wait_done(two_nodes, jobid, log, timeout=400, restarts="1")
    assert "srun --mpi=pmix" in text and "mpirun" not in text, text[-3000:]
    assert f"network interface: {IFACE}" in text
    # the signal reached the ranks on both nodes (each rank reports it in the step's allgather)
    m = re.search(r"preempted \(SIG\w+, seen by rank\(s\) 0,1,2,3\) at step (\d+)", text)
    assert m, text[-5000:]
    stopped = int(m.group(1))
    assert 2 <= stopped < SLURM_STEPS
    assert "requeueing job" in text
    assert re.search(rf"resumed from \S+ckpt-{stopped:08d}\.pt at step {stopped}", text), text[-5000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == \
        [f"ckpt-{stopped:08d}.pt", f"ckpt-{SLURM_STEPS:08d}.pt"]  # one checkpoint at the preemption
    assert train_steps(run_dir) == list(range(1, SLURM_STEPS + 1))  # no step lost, none repeated
    check_four_ranks_on_two_nodes(run_dir, SLURM_STEPS)
    assert final_weights(run_dir) == final_weights(reference[0])


# ------------------------------------------------------------------------------------ over ssh
def test_horovodrun_gloo_four_ranks_on_two_nodes(two_nodes, digits, tmp_path):
    env = env_for(two_nodes, digits, tmp_path / "run")
    proc = on_node1(two_nodes, [BIN / "horovodrun", "-np", "4", "-H", "node1:2,node2:2", "--gloo",
                                HVDGAN, "train", "--job", DEMO], env)
    assert "world: 4 rank(s) on 2 node(s)" in proc.stdout + proc.stderr
    check_four_ranks_on_two_nodes(tmp_path / "run")


def test_hvdgan_launch_hosts_horovodrun_mpi(two_nodes, digits, tmp_path):
    """`hvdgan launch --hosts` runs `horovodrun -np 4 --mpi -H node1:2,node2:2 hvdgan train --job ...`."""
    env = env_for(two_nodes, digits, tmp_path / "run")
    proc = on_node1(two_nodes, [HVDGAN, "launch", "--np", "4", "--hosts", "node1:2,node2:2", "--mpi", DEMO], env)
    line = proc.stdout.splitlines()[0].split()
    assert line[1:6] == ["-np", "4", "--mpi", "-H", "node1:2,node2:2"] and line[0].endswith("horovodrun"), line
    check_four_ranks_on_two_nodes(tmp_path / "run")


def test_hvdgan_launch_hostfile_mpirun(two_nodes, digits, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the two nodes\nnode1 slots=2\nnode2 slots=2\n")
    env = env_for(two_nodes, digits, tmp_path / "run")
    proc = on_node1(two_nodes, [HVDGAN, "launch", "--np", "4", "--hostfile", hostfile, "--launcher", "mpirun",
                                "--iface", IFACE, DEMO], env)
    line = proc.stdout.splitlines()[0]
    assert f"--hostfile {hostfile}" in line and f"btl_tcp_if_include {IFACE}" in line and "pml ob1" in line
    check_four_ranks_on_two_nodes(tmp_path / "run")


def test_prepare_under_a_two_node_launcher(two_nodes, digits, tmp_path):
    """`hvdgan prepare` on 4 ranks over 2 nodes writes the shards of the one-process prepare, byte for byte."""
    out = tmp_path / "digits"
    env = env_for(two_nodes, digits, tmp_path / "unused")
    proc = on_node1(two_nodes, [BIN / "horovodrun", "-np", "4", "-H", "node1:2,node2:2", "--gloo", HVDGAN,
                                "prepare", "digits", out, "--shards", "4"], env)
    text = proc.stdout + proc.stderr
    assert text.count("Wrote 1,797 images") == 1 and "with 4 ranks" in text, text[-3000:]
    from hvdgan import data

    assert data.check_dataset(out)[0] == []
    assert [s.sha256 for s in data.open_manifest(out).shards] == [s.sha256 for s in data.open_manifest(digits).shards]
