"""Which demo setting holds on every data set (issue 27): each setting trains on the training half of each
data set of benchmarks/quality_sets.py for the same budget, and is scored against the held-out half; the
setting chosen is the one whose WORST data set is nearest its own floor.

    .venv/bin/python benchmarks/bench_defaults.py --work /tmp/defaults            # 250 CPU s per rank and run
    .venv/bin/python benchmarks/bench_defaults.py --work /tmp/defaults --set mnist --setting demo

Per data set: `hvdgan prepare SOURCE DATA --holdout 50%`, then the floor, what two real samples of K images
score against each other (`hvdgan evaluate --real DATA --real DATA/holdout --real-num K`: the training half's
first K against the held-out half's first K). Per setting: bench_quality's worker trains on DATA on 2 ranks
(horovodrun) until the budget is spent and stops as on a preemption; `hvdgan evaluate CKPT --data
DATA/holdout -n K --real-num K` scores K samples of G's EMA against the same K held-out images (their
Inception features are cached in DATA/holdout/eval-cache by the floor). K = min(--num, the held-out count).

Ratios to the floor make the data sets comparable (FID at K = 1,000 is biased upwards, and by how much
depends on the data). Objective: the worst data set's FID / floor (lower is better) among the settings whose
recall is at least 0.6x the floor's on every data set. Target: FID <= 3x floor and recall >= 0.6x floor on
every data set. Results go to WORK/results.jsonl as they come; a rerun skips what is there (--fresh: not), and
--report prints the tables of what is there (a sweep cut short: the settings it finished are judged).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_quality  # noqa: E402  (its worker, settings and run keys: one owner)
import quality_sets  # noqa: E402

# the demo job as shipped, the row (conditional, lr 2e-4, batch 32), the demo without mode seeking,
# batch 16 between them, and the seed's baseline
DEFAULT_SETTINGS = ["demo", "dcgan-cond-b32", "dcgan-cond-b8", "dcgan-cond-b16", "dcgan-demo"]
FID_TARGET, RECALL_TARGET = 3.0, 0.6  # x the floor


def setting(name: str) -> dict:
    """A setting by name: dcgan-demo, demo, one of bench_quality's CANDIDATES, or NAME=SPEC as there."""
    if name in bench_quality.CANDIDATES:
        return {**bench_quality.DCGAN_DEMO, **bench_quality.CANDIDATES[name]}
    return bench_quality.setting_values(name.partition("=")[2] or name)


def hvdgan_evaluate(args: list[str], out: Path) -> dict:
    """`horovodrun -np 2 hvdgan evaluate ARGS --out OUT`, one thread per rank as the trainer's ranks; its metrics."""
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "horovodrun"), "-np", "2", "-H", "localhost:2", str(bindir / "hvdgan"), "evaluate", *args,
           "--metrics", "fid,pr", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dict(json.loads(out.read_text())["metrics"], eval_s=time.perf_counter() - t0)


def prepared(name: str, work: Path) -> tuple[str, int]:
    """The data set's directory (training half; held-out half in DIR/holdout, at random or by region as
    quality_sets says), prepared once; its held-out count."""
    from hvdgan.data import HOLDOUT, open_manifest
    from hvdgan.prepare import prepare

    data = work / "data" / name
    if not (data / HOLDOUT / "manifest.json").exists():
        held = quality_sets.holdout_source(name, work / "sets")  # (patch sets: split by region, not at random)
        prepare(quality_sets.source(name, work / "sets"), str(data), holdout=None if held else "50%", overwrite=True,
                progress=False)
        if held:
            prepare(held, str(data / HOLDOUT), overwrite=True, progress=False)
    return str(data), open_manifest(data / HOLDOUT).count


def measure(work: Path, sets: list[str], names: list[str], budget: float, clock: str, num: int, done: dict) -> None:
    """Floors, then each data set in turn with every setting (a sweep cut short still compares all the settings
    on the data sets it finished); each result appended to WORK/results.jsonl."""
    log = (work / "results.jsonl").open("a")

    def record(row: dict) -> None:
        done[(row["set"], row["setting"])] = row
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), flush=True)

    data = {}
    for name in sets:
        data[name], held = prepared(name, work)
        k = min(num, held)
        if (name, "floor") not in done:
            m = hvdgan_evaluate(["--real", data[name], "--real", f"{data[name]}/holdout", "--real-num", str(k)],
                                work / f"floor-{name}.json")
            record(dict(set=name, setting="floor", k=k, **m))
    for name in sets:
        for sname in names:
            if (name, sname) in done:
                continue
            values, k = setting(sname), done[(name, "floor")]["k"]
            out = work / "runs" / f"{name}-{sname}"
            result = bench_quality.train_setting(sname, values, data[name], out, budget, 2, clock)
            m = hvdgan_evaluate([result["checkpoint"], "--data", f"{data[name]}/holdout", "-n", str(k),
                                 "--real-num", str(k)], out / "eval.json")
            record(dict(set=name, setting=sname, k=k, budget=budget, clock=clock, steps=result["step"],
                        train_s=result["train_s"], cpu_s=result["cpu_s"], values=values, **m))


def label(name: str) -> str:
    """A setting's name in the tables: NAME of NAME="key: value, ..." (the values are in results.jsonl)."""
    return name.partition("=")[0]


def summarise(done: dict, sets: list[str], names: list[str]) -> tuple[list[str], str | None]:
    """The markdown tables (per run; per setting, its worst data set) and the winner by the objective. Settings
    are compared over the data sets that every one of them finished (all of them, unless the sweep was cut)."""
    lines = ["| data set | setting | budget | G steps | FID | precision | recall | FID/floor | recall/floor |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    ratios = {}  # setting -> {data set: (FID / floor, recall / floor)}
    for name in sets:
        floor = done.get((name, "floor"))
        if floor is None:
            continue
        lines.append(f"| {name} | floor (K = {floor['k']}) | | | {floor['fid']:.2f} | {floor['precision']:.3f} | "
                     f"{floor['recall']:.3f} | 1.00 | 1.00 |")
        for sname in names:
            row = done.get((name, sname))
            if row is None:
                continue
            fr, rr = row["fid"] / floor["fid"], row["recall"] / floor["recall"]
            ratios.setdefault(sname, {})[name] = (fr, rr)
            budget = f"{row['budget']:.0f} {row['clock']} s" if "budget" in row else ""  # (older rows have none)
            lines.append(f"| {name} | {label(sname)} | {budget} | {row['steps']:,} | {row['fid']:.2f} | "
                         f"{row['precision']:.3f} | {row['recall']:.3f} | {fr:.2f} | {rr:.2f} |")
    common = [s for s in sets if ratios and all(s in r for r in ratios.values())]
    cut = len(common) < len(sets)
    lines += ["", f"Over {'the data sets every setting finished: ' if cut else ''}{', '.join(common) or 'none'}:", "",
              "| setting | data sets | worst FID/floor | worst recall/floor | recall >= 0.6x everywhere | "
              "target (FID <= 3x, recall >= 0.6x) |", "|---|---:|---:|---:|---|---|"]
    judged = []
    for sname, r in ratios.items():
        if not common:
            break
        fset = max(common, key=lambda s: r[s][0])
        rset = min(common, key=lambda s: r[s][1])
        ok = r[rset][1] >= RECALL_TARGET
        hit = ok and r[fset][0] <= FID_TARGET
        lines.append(f"| {label(sname)} | {len(common)} | {r[fset][0]:.2f} ({fset}) | {r[rset][1]:.2f} ({rset}) | "
                     f"{'yes' if ok else 'no'} | {'met' if hit else 'missed'} |")
        judged.append((not ok, r[fset][0], sname))
    winner = min(judged) if judged else None
    if winner is None:
        lines.append("\nno data set has results for every setting yet: no winner")
    else:
        least = " (none keeps recall >= 0.6x floor everywhere: the least bad)" if winner[0] else ""
        over = f" (over {', '.join(common)} only: the sweep was cut short)" if cut else ""
        lines.append(f"\nwinner by the worst data set's FID/floor, recall >= 0.6x floor first: {label(winner[2])}"
                     f"{least}{over}")
    return lines, winner and winner[2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="data sets, runs and results.jsonl (kept: a rerun resumes)")
    ap.add_argument("--set", action="append", choices=quality_sets.SETS, dest="sets",
                    help=f"data set(s) (default: {', '.join(quality_sets.SETS)})")
    ap.add_argument("--setting", action="append", dest="names", help="dcgan-demo, demo, a bench_quality candidate "
                    f"or NAME=\"key: value, ...\" (default, in this order: {', '.join(DEFAULT_SETTINGS)})")
    ap.add_argument("--budget", type=float, default=250.0,
                    help="seconds of training per rank and run (250: the demo job's steps on 2 idle CPU ranks)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu", help="as bench_quality.py's --clock")
    ap.add_argument("-n", "--num", type=int, default=1000, help="K: generated (and real) images per score")
    ap.add_argument("--fresh", action="store_true", help="forget WORK/results.jsonl's earlier results")
    ap.add_argument("--report", action="store_true", help="only the tables of WORK/results.jsonl (run nothing)")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sets, names = args.sets or list(quality_sets.SETS), args.names or DEFAULT_SETTINGS
    results = work / "results.jsonl"
    if args.fresh and results.exists():
        results.unlink()
    done = {}
    for line in results.read_text().splitlines() if results.exists() else []:
        row = json.loads(line)
        done[(row["set"], row["setting"])] = row
    t0 = time.perf_counter()
    if args.report:  # a setting run as NAME="key: value, ..." may be named by its NAME alone
        ran = list(dict.fromkeys(s for _, s in done))
        names = list(dict.fromkeys(n if "=" in n else next((s for s in ran if label(s) == n), n) for n in names))
        print(f"the results in {results} of {len(sets)} data sets x {len(names)} settings")
    else:
        print(f"{len(sets)} data sets x {len(names)} settings, {args.budget:.0f} {args.clock} s per run on 2 ranks, "
              f"K = {args.num}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        measure(work, sets, names, args.budget, args.clock, args.num, done)
    lines, _ = summarise(done, sets, names)
    print("\n" + "\n".join(lines))
    if not args.report:
        print(f"sweep wall time {time.perf_counter() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
