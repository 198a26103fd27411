"""Weak scaling on the two-node test cluster (issue 15), side by side in one run.

`hvdgan train` of the digits demo job at batch 64 per rank (pinned), one thread per rank, started as a
user would with `horovodrun --mpi` from node1 of tests/multinode_cluster.py:

    np=2, one node      -H node1:2
    np=4, one node      -H node1:4            (the same 4 processes, no network between them)
    np=4, two nodes     -H node1:2,node2:2    (TCP over the veth pair between the nodes)

Weak-scaling efficiency = step time at np=2 / step time at np=4 (the batch per rank is fixed).
On this 2-core machine the two "nodes" share the same 2 cores: np=4 runs 4 processes on 2 cores, so
np=4 cannot be faster per step and the figure measures overhead, not speed-up. The useful comparison is
np=4 on two nodes against np=4 on one node: the cost of going through the network stack between nodes.

Each configuration reports the median `time_step` of its logged windows after the first two (warm-up);
configurations alternate over rounds and the result is the median over rounds.

    .venv/bin/python benchmarks/bench_multinode.py            # 2 rounds of 100 steps (root: namespaces)
    .venv/bin/python benchmarks/bench_multinode.py --quick    # 1 round of 60 steps (9 min under heavy load)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).parent

BATCH = 64  # per rank, pinned: the demo job's own batch has changed (issue 13) and sets images/s and the step's size
CONFIGS = {"np2-1node": (2, "node1:2"), "np4-1node": (4, "node1:4"), "np4-2nodes": (4, "node1:2,node2:2")}


def one_run(cluster, data: Path, out: Path, np_: int, hosts: str, steps: int, log_every: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", SLURM_CONF=cluster.env["SLURM_CONF"])
    env["PATH"] = f"{cluster.root / 'bin'}:{BIN}:{env['PATH']}:/usr/sbin:/sbin"
    cmd = cluster.on("node1", [BIN / "horovodrun", "-np", str(np_), "-H", hosts, "--mpi", BIN / "hvdgan", "train",
                               "--job", "jobs/digits-demo.yaml", "--data", data, "--out", out, "--threads", "1",
                               "--batch-size", str(BATCH), "--max-steps", str(steps), "--log-every", str(log_every),
                               "--sample-every", "100000", "--checkpoint-every", "100000", "--no-tensorboard"])
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    times = [json.loads(line)["time_step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "time_step" in line]
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 60 steps instead of 2 of 100")
    args = ap.parse_args()
    rounds, steps, log_every = (1, 60, 10) if args.quick else (2, 100, 10)

    from multinode_cluster import TwoNodeCluster

    with tempfile.TemporaryDirectory(prefix="hvdgan-bench-mn-") as tmp, TwoNodeCluster() as cluster:
        tmp = Path(tmp)
        data = tmp / "digits"
        subprocess.run([BIN / "hvdgan", "prepare", "digits", data, "--shards", "8"], check=True, capture_output=True)
        results: dict[str, list[float]] = {k: [] for k in CONFIGS}
        for r in range(rounds):
            for name, (np_, hosts) in CONFIGS.items():
                t = one_run(cluster, data, tmp / f"{name}-{r}", np_, hosts, steps, log_every)
                results[name].append(t)
                print(f"round {r + 1}/{rounds} {name:11s} {1000 * t:7.1f} ms/step", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"{'configuration':14s} {'ms/step':>8s} {'img/s':>8s}")
    for name, (np_, _) in CONFIGS.items():
        print(f"{name:14s} {1000 * med[name]:8.1f} {BATCH * np_ / med[name]:8.0f}")
    print()
    print(f"weak-scaling efficiency np=4 (2 nodes) vs np=2 (1 node): {med['np2-1node'] / med['np4-2nodes']:.2f}"
          "  (2 cores for all: measures overhead, not speed-up)")
    print(f"np=4 two nodes vs np=4 one node (step-time ratio, the network's cost): "
          f"{med['np4-2nodes'] / med['np4-1node']:.2f}")


if __name__ == "__main__":
    main()
