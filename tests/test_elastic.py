"""Elastic training (`hvdgan launch --elastic`, Horovod elastic over Gloo) on the real two-node cluster
(tests/multinode_cluster.py), and the host discovery it runs.

The run starts on node1:2 and node2:2. Every hvdgan process on node2 is SIGKILLed mid-run (or one is
frozen, and its sentinel kills it): node1's ranks go on from the last commit without a restart of the job,
and node2, still listed by the discovery, comes back after the blacklist's cool-down and gets the state.
The run reaches its last step with the same parameters on every rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HVDGAN
from faults import wait_for
from test_slurm_signals import running
from hvdgan.dist import discover
from hvdgan.dist.launch import compose
from multinode_cluster import IFACE, two_nodes, two_nodes_session  # noqa: F401  (fixtures)
from test_multinode import DEMO, env_for, submit, wait_done

COMMIT_EVERY = 10


# ------------------------------------------------------------------------------------------- discovery
def test_discovery_from_hosts_and_a_hostfile_read_anew(tmp_path):
    run = [sys.executable, "-m", "hvdgan.dist.discover"]
    out = subprocess.run([*run, "--hosts", "node1:2,node2"], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "node1:2\nnode2:1\n")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1 slots=2\nnode2:2\n")
    assert subprocess.run([*run, "--hostfile", hostfile], capture_output=True, text=True).stdout == "node1:2\nnode2:2\n"
    hostfile.write_text("node1 slots=2\n")  # a host taken out of the file is gone at the next discovery
    assert subprocess.run([*run, "--hostfile", hostfile], capture_output=True, text=True).stdout == "node1:2\n"
    bad = subprocess.run([*run, "--hosts", "node1:two"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "hvdgan discover: --hosts: 'node1:two' is not HOST:SLOTS " \
                                                         "(e.g. node1:4)"
    assert discover.tasks_per_node("2(x3),1") == [2, 2, 2, 1]


def test_horovods_driver_runs_the_discovery_without_a_python_middleman(monkeypatch):
    """patches/: Horovod's driver ran the discovery command every second through safe_shell_exec, which starts
    a spawned Python each time (0.125 s of CPU); it runs it as a plain child now, with the same result."""
    from horovod.runner.common.util import safe_shell_exec
    from horovod.runner.elastic.discovery import HostDiscoveryScript

    monkeypatch.setattr(safe_shell_exec, "execute", lambda *a, **k: pytest.fail("safe_shell_exec used"))
    script = f"{sys.executable} -m hvdgan.dist.discover --hosts node1:2,node2"
    assert HostDiscoveryScript(script, 1).find_available_hosts_and_slots() == {"node1": 2, "node2": 1}
    with pytest.raises(RuntimeError, match="Failed to execute discovery script: false. Exit code: 1"):
        HostDiscoveryScript("false", 1).find_available_hosts_and_slots()


def test_launch_elastic_composes_horovodruns_elastic_mode():
    cmd = compose(4, DEMO, ["--commit-every", "5"], hosts="node1:2,node2:2", iface="eth0", env={},
                  elastic=(2, None, None))
    i = cmd.index("-H")  # (two or more fixed hosts: Horovod's own list, no discovery process every second)
    assert cmd[1:i] == ["-np", "4", "--min-np", "2", "--max-np", "4", "--gloo"], cmd
    assert cmd[i:i + 6] == ["-H", "node1:2,node2:2", "--network-interface", "eth0", "--blacklist-cooldown-range", "10"]
    assert cmd[-3:] == ["--commit-every", "5", "--elastic"]
    assert cmd[cmd.index("HOROVOD_GLOO_OP_TIMEOUT_SECONDS=10") + 1].endswith("hvdgan")  # (patches/: docs/elastic.md)
    assert not [w for w in compose(2, DEMO, env={"HOROVOD_GLOO_OP_TIMEOUT_SECONDS": "20"}, elastic=(1, None, None))
                if w.startswith("HOROVOD_GLOO_OP")]  # (a user's value, forwarded by horovodrun, is left alone)
    one = compose(2, DEMO, env={}, elastic=(1, None, None))
    assert one[one.index("--host-discovery-script") + 1] == "printf '%s\\n' localhost:2"  # (no Python each second)
    assert "lo" == one[one.index("--network-interface") + 1]
    slurm = compose(4, DEMO, env={"SLURM_JOB_NODELIST": "node[1-2]"}, iface="eth0", elastic=(1, 8, None))
    assert slurm[slurm.index("--host-discovery-script") + 1].endswith("-m hvdgan.dist.discover --slurm")
    for args, words in (({"hosts": "node1:2,node2:2"}, "needs --iface"), ({"controller": "mpi"}, "no MPI"),
                        ({"hosts": "node1:x"}, "'node1:x' is not HOST:SLOTS")):
        with pytest.raises(ValueError, match=words):
            compose(4, DEMO, env={}, elastic=(1, None, None), **args)
    with pytest.raises(ValueError, match=r"--min-np <= --np <= --max-np, got 1 <= 4 <= 2"):
        compose(4, DEMO, env={}, elastic=(1, 2, None))


def test_the_next_worlds_trainer_takes_its_processs_lock_over(tmp_path):
    """A trainer whose world ended without releasing the run's lock (its process goes on into the next world)
    does not lock the next trainer out ("in use by another training ... pid <its own>"), and nothing else
    gets the lock in between."""
    from hvdgan.errors import HvdganError
    from hvdgan.run.lock import RunLock

    first = RunLock(tmp_path).acquire()
    with pytest.raises(HvdganError, match="in use by another training"):
        RunLock(tmp_path).acquire()  # (a plain second start in the same process is still refused)
    second = RunLock(tmp_path).acquire(take_over=True)
    first.release()  # (the old trainer's late release leaves the new one's lock alone)
    other = subprocess.run([sys.executable, "-c", "import sys; from hvdgan.run.lock import RunLock; "
                            "RunLock(sys.argv[1]).acquire()", str(tmp_path)], capture_output=True, text=True)
    assert other.returncode != 0 and "in use by another training" in other.stderr
    second.release()
    RunLock(tmp_path).acquire().release()


def test_a_stopped_rank_is_killed_by_its_sentinel_and_a_continued_one_is_not(tmp_path):
    """The sentinel of an elastic rank SIGKILLs it after HVDGAN_STOPPED_TIMEOUT seconds in state T, leaves a
    rank stopped for less alone, and ends with its rank."""
    code = ("import sys, time; from hvdgan.dist import watchdog; s = watchdog.start_sentinel(); "
            "print(s.pid, flush=True); time.sleep(float(sys.argv[1]))")
    env = dict(os.environ, HVDGAN_STOPPED_TIMEOUT="2")

    def rank(seconds: float) -> tuple[subprocess.Popen, int]:
        proc = subprocess.Popen([sys.executable, "-c", code, str(seconds)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        return proc, int(proc.stdout.readline())

    brief, brief_sentinel = rank(5)
    brief.send_signal(signal.SIGSTOP)
    time.sleep(1)
    brief.send_signal(signal.SIGCONT)
    stopped, _ = rank(60)
    t0 = time.monotonic()
    stopped.send_signal(signal.SIGSTOP)
    assert stopped.wait(timeout=10) == -signal.SIGKILL
    assert 2 <= time.monotonic() - t0 < 6
    assert "has been stopped (SIGSTOP) for 2s: SIGKILL" in stopped.stderr.read()
    assert brief.wait(timeout=10) == 0  # (stopped for 1 s only)
    wait_for(lambda: not Path(f"/proc/{brief_sentinel}").exists() or
             Path(f"/proc/{brief_sentinel}/stat").read_text().split(")")[-1].split()[0] == "Z", 5,
             "the sentinel to end with its rank")
    bad = subprocess.run([sys.executable, "-c", code, "0"], env=dict(env, HVDGAN_STOPPED_TIMEOUT="soon"),
                         capture_output=True, text=True)
    assert "HVDGAN_STOPPED_TIMEOUT='soon': not a number of seconds" in bad.stderr


# ------------------------------------------------------------------------------------- the two nodes
def ranks_of(out: Path, host: str) -> list[int]:
    world = json.loads((out / "world.json").read_text())
    return [r["pid"] for r in world["ranks"] if r["host"] == host]


def logged(out: Path) -> list[dict]:
    from hvdgan.run.runlog import read_metrics

    return read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []



def start_on_node1(cluster, argv, env, log: Path) -> subprocess.Popen:
    with open(log, "w") as sink:  # (a file: a pipe nobody reads would fill and block the launcher)
        return subprocess.Popen(cluster.on("node1", argv), env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)


def check_lost_and_back(out: Path, steps: int, killed_at: int) -> int:
    """The run lost node2's ranks at about `killed_at`, went on on node1 and took node2 back, and ended at its
    last step with the same parameters on every rank. Returns the step node1 went on from."""
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "done" and result["step"] == steps, result
    assert result["parameters_identical"] is True
    worlds = [r for r in logged(out) if r.get("event") == "world"]
    assert [w["size"] for w in worlds][:3] == [4, 2, 4], worlds
    resumed = worlds[1]["step"]
    assert killed_at - COMMIT_EVERY <= resumed <= killed_at + COMMIT_EVERY, (killed_at, worlds)  # steps lost
    assert worlds[1]["nodes"] == {"node1": [0, 1]} and set(worlds[2]["nodes"]) == {"node1", "node2"}
    changes = json.loads((out / "world.json").read_text())["changes"]
    assert [c["size"] for c in changes][:3] == [4, 2, 4] and changes[1]["step"] == resumed
    return resumed


def test_node2_killed_node1_goes_on_and_node2_rejoins(two_nodes, digits, tmp_path):
    """Every hvdgan process on node2 SIGKILLed at step >= 30: node1's two ranks continue from the last commit
    (at most --commit-every steps back) without a restart of the job; node2, still listed, rejoins after the
    cool-down and gets the state; the run ends at its last step with identical parameters on all ranks."""
    out, steps = tmp_path / "run", 200  # (~0.17 s a step here: node2 is back ~80 steps after node1 goes on)
    env = env_for(two_nodes, digits, out, steps=steps, HOROVOD_ELASTIC_TIMEOUT="60", HVDGAN_ELASTIC_COOLDOWN="2 3")
    env.update(HVDGAN_TRAIN_LOG_EVERY="5", HVDGAN_TRAIN_BATCH_SIZE="8")
    argv = [HVDGAN, "launch", "--np", "4", "--min-np", "2", "--elastic", "--hosts", "node1:2,node2:2", "--iface", IFACE,
            DEMO, "--", "--commit-every", str(COMMIT_EVERY)]
    log = tmp_path / "launch.log"
    proc = start_on_node1(two_nodes, argv, env, log)
    try:
        wait_for(lambda: len(logged(out)) and logged(out)[-1].get("step", 0) >= 30, 240, "step 30", proc)
        node2 = ranks_of(out, "node2")
        assert len(node2) == 2
        killed_at = logged(out)[-1]["step"]
        t0 = time.monotonic()
        for pid in node2:
            os.kill(pid, signal.SIGKILL)
        # node1 goes on: a world of 2 ranks, recorded in metrics.jsonl and world.json
        wait_for(lambda: any(r.get("event") == "world" and r["size"] == 2 for r in logged(out)), 120,
                 "the 2-rank world", proc)
        go_on_s = time.monotonic() - t0
        # at once, or at the collectives' 10 s time-out (HOROVOD_GLOO_OP_TIMEOUT_SECONDS); 30 s without the patch
        assert go_on_s < 25, go_on_s
        wait_for(lambda: any(r.get("event") == "world" and r["size"] == 4 and r["step"] > killed_at - COMMIT_EVERY
                             for r in logged(out)), 180, "node2 back", proc)
        rejoin_s = time.monotonic() - t0
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    resumed = check_lost_and_back(out, steps, killed_at)
    print(f"node2 killed at step ~{killed_at}: node1 went on from step {resumed} within {go_on_s:.1f}s; "
          f"node2 back within {rejoin_s:.1f}s; done at step {steps}")


def test_sbatch_elastic_one_rank_frozen_then_killed(two_nodes, digits, tmp_path):
    """`HVDGAN_ELASTIC=1 sbatch --no-kill --nodes=2 slurm/train.sh`: hosts from the Slurm job; one rank on node2
    frozen (SIGSTOP): its sentinel SIGKILLs it after HVDGAN_STOPPED_TIMEOUT, which makes it one rank killed
    (not the whole node): Horovod leaves node2 out (both its ranks), node1 goes on, node2 comes back after the
    cool-down, and the job completes."""
    out, steps = tmp_path / "run", 200
    env = env_for(two_nodes, digits, out, steps=steps, HOROVOD_ELASTIC_TIMEOUT="60", HVDGAN_ELASTIC_COOLDOWN="2 3",
                  HVDGAN_ELASTIC="1", HVDGAN_MIN_NP="2", HVDGAN_STOPPED_TIMEOUT="3")
    env.update(HVDGAN_TRAIN_LOG_EVERY="5", HVDGAN_TRAIN_BATCH_SIZE="8", HVDGAN_TRAIN_COMMIT_EVERY=str(COMMIT_EVERY))
    jobid, log = submit(two_nodes, tmp_path, env, "--no-kill")
    wait_for(lambda: running(two_nodes, jobid, log) and logged(out) and logged(out)[-1].get("step", 0) >= 30, 240,
             "step 30")
    killed_at = logged(out)[-1]["step"]
    t0 = time.monotonic()
    os.kill(ranks_of(out, "node2")[-1], signal.SIGSTOP)
    wait_for(lambda: any(r.get("event") == "world" and r["size"] == 2 for r in logged(out)), 120, "the 2-rank world")
    go_on_s = time.monotonic() - t0
    assert go_on_s < 3 + 22, go_on_s  # (the sentinel's 3 s, then as a SIGKILL: 33 s without the Gloo patch)
    text = wait_done(two_nodes, jobid, log, timeout=300)
    assert "--host-discovery-script" in text and "-m hvdgan.dist.discover --slurm" in text, text[-3000:]
    assert "has been stopped (SIGSTOP) for 3s: SIGKILL" in text, text[-3000:]
    resumed = check_lost_and_back(out, steps, killed_at)
    print(f"sbatch elastic, one node2 rank frozen at step ~{killed_at}: killed by its sentinel, node1 went on from "
          f"step {resumed} {go_on_s:.1f}s after the SIGSTOP, node2 came back, the job completed")


def one_host_train_args(digits, out: Path, steps: int) -> list[str]:
    return ["--data", str(digits), "--out", str(out), "--ngf", "8", "--ndf", "8", "--batch-size", "16",
            "--log-every", "5", "--threads", "1", "--no-tensorboard", "--sample-every", "100000",
            "--checkpoint-every", "100000", "--max-steps", str(steps), "--commit-every", str(COMMIT_EVERY)]


def on_one_host(train: list[str], env: dict, out: Path, log: Path, after_step: int, act) -> tuple[int, float]:
    """`hvdgan launch --np 2 --elastic` here; at step `after_step`, act(proc); returns (exit status, seconds
    from act to the exit)."""
    with open(log, "w") as sink:
        proc = subprocess.Popen([HVDGAN, "launch", "--np", "2", "--elastic", DEMO, "--", *train], env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: logged(out) and logged(out)[-1].get("step", 0) >= after_step, 240, f"step {after_step}",
                 proc)
        t0 = time.monotonic()
        act(proc)
        rc = proc.wait(timeout=120)
        return rc, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_one_host_a_rank_lost_ends_with_the_last_commit_and_75(digits, tmp_path):
    """One host: Horovod leaves the whole host out when a rank dies, so no host is left and the driver ends
    the job. The survivor has written the last commit first: `hvdgan launch` exits 75, and `--resume auto`
    continues from that checkpoint to the end."""
    out, steps = tmp_path / "run", 200  # (the kill comes at step ~30; the resume runs the rest)
    train = one_host_train_args(digits, out, steps)
    env = dict(os.environ, HOROVOD_ELASTIC_TIMEOUT="30", HVDGAN_ELASTIC_COOLDOWN="2 3", OMP_NUM_THREADS="1")
    log = tmp_path / "launch.log"
    rc, seconds = on_one_host(train, env, out, log, 30, lambda proc: os.kill(
        json.loads((out / "world.json").read_text())["ranks"][1]["pid"], signal.SIGKILL))
    text = log.read_text(errors="replace")
    assert rc == 75, text[-5000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "preempted" and result["reason"].startswith("elastic: a rank was lost"), result
    step = result["step"]
    # (the commit of step 30 runs after step 30's log line: the kill may come first)
    assert step >= 30 - COMMIT_EVERY and step % COMMIT_EVERY == 0 and Path(result["checkpoint"]).exists(), result
    assert f"the run stopped at step {step}" in text and "exit status 75" in text, text[-3000:]
    done = subprocess.run([HVDGAN, "train", "--job", DEMO, *train, "--resume", "auto"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {result['checkpoint']} at step {step}" in done.stderr
    assert json.loads((out / "result.json").read_text())["step"] == steps
    print(f"one host, a rank killed: exit 75 with the commit of step {step} {seconds:.1f}s after the kill; "
          "--resume auto finished the run")


def test_hosts_removed_below_min_np_stops_with_the_last_commit(two_nodes, digits, tmp_path):
    """hvd#3494 (a deadlock after a graceful removal below min_np): node2 taken out of the hostfile while
    --min-np is 4. Every rank sees the change at one commit; the survivors write that commit as a checkpoint;
    Horovod's driver gives up after HOROVOD_ELASTIC_TIMEOUT; `hvdgan launch` exits 75, no deadlock."""
    out, steps, hostfile = tmp_path / "run", 2000, tmp_path / "hosts"
    hostfile.write_text("node1 slots=2\nnode2 slots=2\n")
    env = env_for(two_nodes, digits, out, steps=steps, HOROVOD_ELASTIC_TIMEOUT="3")
    env.update(HVDGAN_TRAIN_LOG_EVERY="5", HVDGAN_TRAIN_BATCH_SIZE="8")
    argv = [HVDGAN, "launch", "--np", "4", "--min-np", "4", "--elastic", "--hostfile", hostfile, "--iface", IFACE,
            DEMO, "--", "--commit-every", str(COMMIT_EVERY)]
    proc = start_on_node1(two_nodes, argv, env, tmp_path / "launch.log")
    try:
        wait_for(lambda: logged(out) and logged(out)[-1].get("step", 0) >= 30, 240, "step 30", proc)
        hostfile.write_text("node1 slots=2\n")
        t0 = time.monotonic()
        rc = proc.wait(timeout=120)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = (tmp_path / "launch.log").read_text(errors="replace")
    assert rc == 75, text[-5000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "preempted" and result["reason"] == "elastic: hosts were removed", result
    assert Path(result["checkpoint"]).exists() and result["step"] % COMMIT_EVERY == 0, result
    print(f"node2 removed below --min-np: exit 75 {seconds:.1f}s after the hostfile changed, checkpoint of the "
          f"commit at step {result['step']}")


def test_a_stop_reaches_an_elastic_run_like_any_other(digits, tmp_path):
    """TERM to `hvdgan launch --elastic` (a scheduler's stop): every rank checkpoints the step in progress and
    exits 75; Horovod's driver takes the 75s for failures and ends the job; `hvdgan launch` exits 75."""
    out, log = tmp_path / "run", tmp_path / "launch.log"
    env = dict(os.environ, HOROVOD_ELASTIC_TIMEOUT="30", OMP_NUM_THREADS="1")
    rc, seconds = on_one_host(one_host_train_args(digits, out, 5000), env, out, log, 20,
                              lambda proc: proc.send_signal(signal.SIGTERM))
    text = log.read_text(errors="replace")
    assert rc == 75, text[-5000:]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "preempted" and result["signal"] == "SIGTERM", result
    assert result["parameters_identical"] is True and Path(result["checkpoint"]).name == f"ckpt-{result['step']:08d}.pt"
    print(f"TERM to hvdgan launch --elastic: checkpoint of step {result['step']}, exit 75 {seconds:.1f}s after it")
