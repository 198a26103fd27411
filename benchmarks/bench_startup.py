"""What a horovodrun start costs before a rank runs, side by side in one run.

1. Horovod's "built with Gloo?" check, which horovodrun makes at every start (and --check-build five times):
   upstream's way, importing the framework (torch) in a forked process, against patches/' way, loading the
   compiled library alone. Rounds alternate the two; each result is the median over rounds.
2. A whole empty job (`import horovod.torch; hvd.init()` on 2 ranks) under `horovodrun --gloo`,
   `horovodrun --mpi` and plain `mpirun`, as a ratio to mpirun, which makes no check.

    .venv/bin/python benchmarks/bench_startup.py                   # about a minute on 2 cores
    .venv/bin/python benchmarks/bench_startup.py --rounds 1 --only check    # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
JOB = [sys.executable, "-c", "import horovod.torch as hvd; hvd.init()"]
LAUNCHES = {
    "horovodrun --gloo": [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", *JOB],
    "horovodrun --mpi": [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--mpi", *JOB],
    "mpirun": ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", *JOB],
}


def time_check(basics: bool) -> float:
    """Seconds for one "built with Gloo?" check of the torch extension, as horovodrun makes it."""
    from horovod.common import util

    t = time.perf_counter()
    built = util._check_extension_lambda("torch", lambda ext: ext.gloo_built(), "built with Gloo", False,
                                         basics=basics)
    seconds = time.perf_counter() - t
    if not built:
        sys.exit(f"bench_startup: the check ({'library alone' if basics else 'framework imported'}) did not "
                 "see Gloo: is Horovod built with it? (horovodrun --check-build)")
    return seconds


def time_launch(cmd: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"bench_startup: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["check", "launch"], help="one of the two measurements")
    args = parser.parse_args(argv)
    from horovod.common import util

    if not hasattr(util, "_load_basics"):
        sys.exit("bench_startup: this Horovod is not built with patches/ (no horovod.common.util._load_basics): "
                 "run scripts/setup.sh")
    if args.only != "launch":
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for basics in ((False, True) if r % 2 == 0 else (True, False)):
                times[basics].append(time_check(basics))
        old, new = statistics.median(times[False]), statistics.median(times[True])
        print(f"built-with-Gloo check, median of {args.rounds}: framework imported (upstream) {old:.2f} s, "
              f"library alone (patches/) {new:.2f} s: {old / new:.1f}x faster, {old - new:.2f} s less a start")
    if args.only != "check":
        runs: dict[str, list[float]] = {name: [] for name in LAUNCHES}
        for r in range(args.rounds):
            names = list(LAUNCHES) if r % 2 == 0 else list(reversed(LAUNCHES))
            for name in names:
                runs[name].append(time_launch(LAUNCHES[name]))
        base = statistics.median(runs["mpirun"])
        print(f"an empty 2-rank job (import horovod.torch; hvd.init()), median of {args.rounds}:")
        for name, seconds in runs.items():
            m = statistics.median(seconds)
            print(f"  {name:18s} {m:5.2f} s  {m / base:.2f}x mpirun")


if __name__ == "__main__":
    main()
