"""What elastic training costs per step: `hvdgan launch --np 2 --elastic` (Horovod elastic over Gloo, a commit
every N steps) against the same job under plain `hvdgan launch --np 2 --gloo`, side by side in one run.

A commit copies the checkpoint's content (G, D, both Adams, G's EMA, the position) to host memory and then
asks Horovod's driver for host changes (a collective). Its cost lands in the log window after it (a window's
time covers everything since the last log), so the median images/s over the logged windows includes it.
Configurations alternate in rounds; the result is the median over rounds of each one's median window,
as a ratio to the plain run.

    .venv/bin/python benchmarks/bench_elastic.py              # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_elastic.py --rounds 1 --steps 200    # a quick look
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
HVDGAN = Path(sys.executable).with_name("hvdgan")


def one_run(data: Path, out: Path, steps: int, log_every: int, commit_every: int | None, hosts: str | None) -> float:
    """The median images/s of the logged windows (the first two left out: warm-up)."""
    launch = [str(HVDGAN), "launch", "--np", "2"] + (["--elastic"] if commit_every else ["--gloo"])
    if commit_every and hosts:
        launch += ["--hosts", hosts]
    train = ["--data", str(data), "--out", str(out), "--max-steps", str(steps), "--log-every", str(log_every),
             "--sample-every", "1000000", "--checkpoint-every", "1000000", "--no-tensorboard", "--threads", "1"]
    if commit_every:
        train += ["--commit-every", str(commit_every)]
    proc = subprocess.run([*launch, "jobs/digits-demo.yaml", "--", *train], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(launch)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rates = [json.loads(line)["images_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"images_per_s"' in line]
    return statistics.median(rates[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--commit-every", type=int, nargs="+", default=[20, 5])
    parser.add_argument("--hosts", help="elastic runs' --hosts: two names of this host (e.g. localhost:1,127.0.0.1:1) "
                        "make Horovod keep the list itself, with no discovery process every second")
    args = parser.parse_args()
    configs = [None, *args.commit_every]
    with tempfile.TemporaryDirectory(prefix="bench-elastic-") as tmp:
        data = Path(tmp) / "digits"
        subprocess.run([str(HVDGAN), "prepare", "digits", str(data)], check=True, capture_output=True)
        results: dict = {c: [] for c in configs}
        for r in range(args.rounds):
            for c in configs:
                out = Path(tmp) / f"run-{r}-{c}"
                results[c].append(one_run(data, out, args.steps, args.log_every, c, args.hosts))
                print(f"round {r + 1}: {'plain --gloo' if c is None else f'--elastic --commit-every {c}'}: "
                      f"{results[c][-1]:.0f} images/s", flush=True)
    base = statistics.median(results[None])
    print(f"\n2 ranks, the demo job, {args.steps} steps, {args.rounds} round(s), elastic hosts "
          f"{args.hosts or 'from the discovery script'}; median images/s and ratio to plain")
    print("| run | images/s | ratio |\n|---|---:|---:|")
    for c in configs:
        name = "hvdgan launch --gloo (plain)" if c is None else f"--elastic --commit-every {c}"
        value = statistics.median(results[c])
        print(f"| {name} | {value:.0f} | {value / base:.3f} |")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
