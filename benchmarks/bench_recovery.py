"""What a lost node costs, with `--elastic` and without it, on the two-node test cluster (issue 22).

The demo job on 4 ranks (node1:2, node2:2 of tests/multinode_cluster.py, started from node1 as a user
would), one step logged at a time. At step KILL_AT every hvdgan process on node2 is SIGKILLed. Then:

    elastic   `hvdgan launch --elastic --min-np 2 --hosts node1:2,node2:2`, a commit every 20 steps (the
              default): node1's ranks go on by themselves from the last commit.
    restart   `hvdgan launch --gloo --hosts node1:2,node2:2`, a checkpoint every CKPT steps: the job fails,
              and is started again at once, as the requeue path would after the queue (the queue's wait is
              not counted: on a busy cluster it is minutes to hours), on node1:2 with `--resume auto`.

For each: the wall time from the kill to the next completed step (the observer polls metrics.jsonl every
20 ms), and the steps lost (done before the kill, done again after it). Rounds alternate; the figures are
the median over rounds.

    .venv/bin/python benchmarks/bench_recovery.py            # 2 rounds, about 6 minutes (root: namespaces)
    .venv/bin/python benchmarks/bench_recovery.py --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hvdgan.dist.hosts import parse_hosts
from hvdgan.run.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).parent

KILL_AT = 50
COMMIT_EVERY = 20  # hvdgan's default --commit-every
POLL_S = 0.02
LOG = Path(tempfile.gettempdir()) / "bench_recovery.log"  # every launcher's output, kept after the run


def records(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl")  # (a line being written is dropped)


def watch(out: Path, cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> list[dict]:
    t0 = time.monotonic()
    while True:
        found = records(out)
        if cond(found):
            return found
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the launcher exited {proc.returncode} while waiting for {what} (its output: {LOG})")
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{what}: not after {timeout:.0f}s (the launchers' output: {LOG})")
        time.sleep(POLL_S)


def steps_in(found: list[dict]) -> list[int]:
    return [r["step"] for r in found if "loss_d" in r]


def launch(cluster, env: dict, data: Path, out: Path, hosts: str, extra: list[str], train: list[str],
           log) -> subprocess.Popen:
    argv = [BIN / "hvdgan", "launch", "--np", str(sum(slots for _, slots in parse_hosts(hosts))),
            "--hosts", hosts, *(["--iface", "eth0"] if "," in hosts else []), *extra, "jobs/digits-demo.yaml", "--",
            "--data", data, "--out", out, "--threads", "1", "--batch-size", "8", "--log-every", "1",
            "--max-steps", "100000", "--sample-every", "100000", "--no-tensorboard", *train]
    return subprocess.Popen(cluster.on("node1", argv), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_node2(out: Path) -> None:
    world = json.loads((out / "world.json").read_text())
    for rank in world["ranks"]:
        if rank["host"] == "node2":
            os.kill(rank["pid"], signal.SIGKILL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def elastic(cluster, env: dict, data: Path, out: Path, log) -> tuple[float, int]:
    proc = launch(cluster, env, data, out, "node1:2,node2:2", ["--elastic", "--min-np", "2"],
                  ["--commit-every", str(COMMIT_EVERY), "--checkpoint-every", "100000"], log)
    try:
        watch(out, lambda f: steps_in(f) and steps_in(f)[-1] >= KILL_AT, 300, f"step {KILL_AT}", proc)
        killed_at = steps_in(records(out))[-1]
        t0 = time.monotonic()
        kill_node2(out)

        def went_on(found):
            worlds = [i for i, r in enumerate(found) if r.get("event") == "world" and r["size"] == 2]
            return worlds and steps_in(found[worlds[0]:])
        found = watch(out, went_on, 300, "a step of the 2-rank world", proc)
        seconds = time.monotonic() - t0
        world = next(r for r in found if r.get("event") == "world" and r["size"] == 2)
        return seconds, killed_at - world["step"]
    finally:
        stop(proc)


def restart(cluster, env: dict, data: Path, out: Path, ckpt_every: int, log) -> tuple[float, int]:
    train = ["--checkpoint-every", str(ckpt_every)]
    proc = launch(cluster, env, data, out, "node1:2,node2:2", ["--gloo"], train, log)
    try:
        watch(out, lambda f: steps_in(f) and steps_in(f)[-1] >= KILL_AT, 300, f"step {KILL_AT}", proc)
        killed_at = steps_in(records(out))[-1]
        t0 = time.monotonic()
        kill_node2(out)
        proc.wait(timeout=600)  # (the survivors fail their collective; horovodrun ends the job)
    finally:
        stop(proc)
    resumed = (killed_at // ckpt_every) * ckpt_every
    proc = launch(cluster, env, data, out, "node1:2", ["--gloo"], [*train, "--resume", "auto"], log)
    try:
        # (on resume, the records after the checkpoint are moved aside, then the steps from resumed + 1 come)
        watch(out, lambda f: steps_in(f) and resumed < steps_in(f)[-1] < killed_at, 300,
              "the restarted run's first step", proc)
        return time.monotonic() - t0, killed_at - resumed
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=COMMIT_EVERY,
                    help="the restart path's checkpoint interval (default: the commit interval, the fairest case)")
    args = ap.parse_args()

    from multinode_cluster import TwoNodeCluster

    with tempfile.TemporaryDirectory(prefix="hvdgan-bench-recovery-") as tmp, TwoNodeCluster() as cluster:
        tmp = Path(tmp)
        env = dict(os.environ, OMP_NUM_THREADS="1", SLURM_CONF=cluster.env["SLURM_CONF"],
                   HVDGAN_ELASTIC_COOLDOWN="600 600")  # (node2 stays out: the measure is the loss alone)
        env["PATH"] = f"{cluster.root / 'bin'}:{BIN}:{env['PATH']}:/usr/sbin:/sbin"
        data = tmp / "digits"
        subprocess.run([BIN / "hvdgan", "prepare", "digits", data, "--shards", "8"], check=True, capture_output=True)
        results: dict[str, list[tuple[float, int]]] = {"elastic": [], "restart": []}
        with open(LOG, "w") as log:
            for r in range(args.rounds):
                results["elastic"].append(elastic(cluster, env, data, tmp / f"elastic-{r}", log))
                cluster.reset()
                results["restart"].append(restart(cluster, env, data, tmp / f"restart-{r}", args.checkpoint_every,
                                                  log))
                cluster.reset()
                for name, got in results.items():
                    print(f"round {r + 1}/{args.rounds} {name:8s} next step {got[-1][0]:6.1f}s after the kill, "
                          f"{got[-1][1]} steps lost", flush=True)
    print(f"\nnode2 (2 of 4 ranks) SIGKILLed at step >= {KILL_AT}; median over {args.rounds} round(s); "
          f"commit every {COMMIT_EVERY}, restart path's checkpoint every {args.checkpoint_every}; queue wait excluded")
    print("| path | kill to next step (s) | steps lost |\n|---|---:|---:|")
    for name, got in results.items():
        print(f"| {name} | {statistics.median(g[0] for g in got):.1f} | {statistics.median(g[1] for g in got):.0f} |")


if __name__ == "__main__":
    main()
