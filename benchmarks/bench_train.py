"""Training-step benchmark, side by side in one run (ratios, not absolute times, are the result).

    1. hvdgan's training loop at np=1 against a plain PyTorch loop of the same model and batch
       (the pytorch/examples dcgan loop, data already in memory): target ratio >= 0.97
    2. weak scaling, np=2 against np=1, one thread per rank: target efficiency >= 0.90,
       for hvdgan and for a plain Horovod loop (the same plain loop with Horovod's lines added),
       and, as the ceiling, two plain loops running at once with no communication at all

Every configuration runs in its own process(es), in rounds that alternate the configurations, and
each reports the median time of its timed windows (after a warm-up window). The result is the
median over rounds. Workers hand their results back in a JSON file each (--result), not on stdout, where
a launcher's output tags (`[1,0]<stdout>:`) can land on the same line.

    .venv/bin/python benchmarks/bench_train.py            # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/bench_train.py --quick    # about 2 minutes
    .venv/bin/python benchmarks/bench_train.py --smoke    # tiny model, 1 round: checks that every path runs
    .venv/bin/python benchmarks/bench_train.py --model resnet --ngf 16 --ndf 16 --overhead-only   # 1. only

    3. --stop-cost: the stop flag's price (hvdgan/dist/stop.py: a 1-element allreduce submitted with D's
       gradients every step): hvdgan at np=2 with and without it, alternating: target cost <= 1%
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------------- workers
def plain_worker(args) -> dict:
    """The pytorch/examples dcgan loop (optionally with Horovod's lines): same G, D, batch and data."""
    import torch
    from torch import nn

    from hvdgan.data import read_all
    from hvdgan.models.zoo import build_networks

    hvd = None
    if args.horovod:
        import horovod.torch as hvd

        hvd.init()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.from_numpy(read_all(args.data)[0])
    channels, size = images.shape[1], images.shape[2]
    netG, netD = build_networks(args.model, args.nz, args.ngf, args.ndf, channels, size)
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if hvd is not None:
        hvd.broadcast_parameters(netG.state_dict(), root_rank=0)
        hvd.broadcast_parameters(netD.state_dict(), root_rank=0)
        optD = hvd.DistributedOptimizer(optD, named_parameters=[("D." + n, p) for n, p in netD.named_parameters()])
        optG = hvd.DistributedOptimizer(optG, named_parameters=[("G." + n, p) for n, p in netG.named_parameters()])
    criterion = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(1 + (hvd.rank() if hvd else 0))
    windows, rank = [], hvd.rank() if hvd else 0
    for w in range(args.windows):
        t0 = time.perf_counter()
        for _ in range(args.window):
            idx = torch.randint(0, len(images), (args.batch,), generator=gen)
            real = images[idx].float().div_(127.5).sub_(1)
            b = real.shape[0]
            # (1) D: maximise log(D(x)) + log(1 - D(G(z)))
            optD.zero_grad()
            out = netD(real)
            errD_real = criterion(out, torch.ones(b))
            noise = torch.randn(b, args.nz, 1, 1, generator=gen)
            fake = netG(noise)
            out = netD(fake.detach())
            errD_fake = criterion(out, torch.zeros(b))
            if hvd is None:
                errD_real.backward()
                errD_fake.backward()
            else:  # one backward: each D gradient is all-reduced once
                (errD_real + errD_fake).backward()
            optD.step()
            # (2) G: maximise log(D(G(z)))
            optG.zero_grad()
            if hvd is not None:  # D's hooks must not fire during G's backward (hvd#796)
                for p in netD.parameters():
                    p.requires_grad_(False)
            out = netD(fake)
            errG = criterion(out, torch.ones(b))
            errG.backward()
            optG.step()
            if hvd is not None:
                for p in netD.parameters():
                    p.requires_grad_(True)
        if hvd is not None:
            hvd.allreduce(torch.zeros(1), name=f"window.{w}")  # ranks end windows together
        windows.append((time.perf_counter() - t0) / args.window)
    return {"rank": rank, "step_s": statistics.median(windows[1:]), "windows": windows}


def hvdgan_worker(args) -> dict:
    """hvdgan's Trainer (reader, GAN step, metrics) with the same model and batch."""

    from hvdgan.config import build
    from hvdgan.run.runlog import read_metrics
    from hvdgan.run.loop import Trainer

    out = Path(tempfile.mkdtemp(prefix="bench-hvdgan-"))
    cfg = build(dict(data=args.data, out=str(out), model=args.model, loss="bce", nz=args.nz, ngf=args.ngf,
                     ndf=args.ndf, batch_size=args.batch, max_steps=args.window * args.windows, log_every=args.window, sample_every=10**9,
                     checkpoint_every=10**9, tensorboard=False, threads=args.threads, device="cpu"))
    from hvdgan.dist.stop import StopFlag

    flag_time = [0.0]

    class TimedStopFlag(StopFlag):  # the time the loop spends in the flag's own calls (submit, then poll)
        def submit(self):
            t0 = time.perf_counter()
            super().submit()
            flag_time[0] += time.perf_counter() - t0

        def poll(self):
            t0 = time.perf_counter()
            try:
                return super().poll()
            finally:
                flag_time[0] += time.perf_counter() - t0

    # without the flag: nothing submitted, nothing polled (signals are then ignored)
    trainer = Trainer(cfg, stop_flag=None if args.no_stop_flag else TimedStopFlag)
    trainer.run()
    if not trainer.world.root:
        return {}
    windows = [r["time_step"] for r in read_metrics(out / "metrics.jsonl") if "time_step" in r]
    shutil.rmtree(out, ignore_errors=True)
    return {"rank": 0, "step_s": statistics.median(windows[1:]), "windows": windows,
            "flag_s": flag_time[0] / cfg.schedule.max_steps}


def write_result(template: str, result: dict) -> None:
    """The worker's result as a JSON file (`{rank}` in the path is filled in), written atomically."""
    path = Path(template.format(rank=result["rank"]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


def read_result(path: Path, what: str, proc_out: str) -> dict:
    if not path.is_file():
        raise SystemExit(f"{what}: no result file {path.name}\n{proc_out[-2000:]}")
    return json.loads(path.read_text())


# -------------------------------------------------------------------------------------------- main
FLAG_S: list = []  # hvdgan workers: seconds per step spent in the stop flag's calls
def run(kind: str, np: int, args, data: str, controller: str = "gloo") -> float:
    results = Path(tempfile.mkdtemp(prefix="bench-result-"))
    try:
        return _run(kind, np, args, data, controller, results)
    finally:
        shutil.rmtree(results, ignore_errors=True)


def _run(kind: str, np: int, args, data: str, controller: str, results: Path) -> float:
    me = [sys.executable, __file__, "--worker", kind, "--data", data, "--batch", str(args.batch),
          "--window", str(args.window), "--windows", str(args.windows), "--threads", "1",
          "--ngf", str(args.ngf), "--ndf", str(args.ndf), "--nz", str(args.nz),
          "--model", args.model, "--result", str(results / "result-{rank}.json")]  # (--result last: see pair)
    if kind == "plain-horovod":
        me[3] = "plain"
        me.append("--horovod")
    if kind == "hvdgan-nostop":
        me[3] = "hvdgan"
        me.append("--no-stop-flag")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if kind == "plain-pair":  # np independent plain loops at once: the machine's own ceiling
        me[3] = "plain"
        procs = [subprocess.Popen(me[:-1] + [str(results / f"pair-{i}-{{rank}}.json")], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for i in range(np)]
        outs = [p.communicate(timeout=900) for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"plain-pair failed:\n{outs}")
        return max(read_result(results / f"pair-{i}-0.json", "plain-pair", str(outs))["step_s"] for i in range(np))
    if np > 1 or kind == "plain-horovod":
        bindir = Path(sys.executable).parent
        cmd = [str(bindir / "horovodrun"), "-np", str(np), "-H", f"localhost:{np}", f"--{controller}"] + me
    else:
        cmd = me
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} np={np} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = read_result(results / "result-0.json", f"{kind} np={np}", proc.stdout + proc.stderr)
    FLAG_S.append(result.get("flag_s"))
    return result["step_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["plain", "hvdgan"])
    ap.add_argument("--horovod", action="store_true")
    ap.add_argument("--data")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=10, help="steps per timed window")
    ap.add_argument("--windows", type=int, default=4, help="windows per run (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--ndf", type=int, default=64)
    ap.add_argument("--nz", type=int, default=100)
    ap.add_argument("--result", help="(worker) write the result here as JSON; {rank} is the rank")
    ap.add_argument("--quick", action="store_true", help="2 rounds of shorter runs")
    ap.add_argument("--smoke", action="store_true",
                    help="1 round of a tiny model (ngf = ndf = 8, batch 8, 2-step windows) in 4 configurations, "
                         "one per way of starting and reporting; the figures mean nothing (tests/test_benchmarks.py)")
    ap.add_argument("--model", choices=["dcgan", "resnet"], default="dcgan")
    ap.add_argument("--overhead-only", action="store_true", help="only 1.: plain vs hvdgan at np=1")
    ap.add_argument("--no-stop-flag", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stop-cost", action="store_true", help="only: hvdgan np=2 with and without the stop flag")
    args = ap.parse_args()

    if args.worker:
        result = plain_worker(args) if args.worker == "plain" else hvdgan_worker(args)
        if result and args.result:
            write_result(args.result, result)
        return

    if args.quick:
        args.rounds, args.window, args.windows = 2, 6, 4
    if args.smoke:
        args.rounds, args.window, args.windows, args.batch, args.ngf, args.ndf, args.nz = 1, 2, 2, 8, 8, 8, 16
    from hvdgan.prepare import prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        data = str(tmp / "digits-rgb32")
        prepare("digits", data, shards=8, size=32, channels=3, progress=False)
        print(f"{args.model} 32x32x3, ngf={args.ngf} ndf={args.ndf} nz={args.nz}, batch {args.batch} per rank, "
              f"one thread per rank, {args.window}-step windows x {args.windows - 1} timed (+1 warm-up), {args.rounds} rounds; "
              f"{os.cpu_count()} CPUs")
        # (kind, ranks, controller): horovodrun's default controller is MPI when Horovod has it
        configs = [("plain", 1, "-"), ("hvdgan", 1, "-"), ("plain-horovod", 1, "mpi"), ("hvdgan", 2, "mpi"),
                   ("plain-horovod", 2, "mpi"), ("hvdgan", 2, "gloo"), ("plain-horovod", 2, "gloo"),
                   ("plain-pair", 2, "-")]
        if args.stop_cost:
            return stop_cost(args, data)
        if args.overhead_only:  # 1. only
            configs = configs[:2]
        if args.smoke:  # one of each way to start and report: a process, horovodrun --mpi / --gloo, a pair
            configs = [("plain", 1, "-"), ("hvdgan", 2, "mpi"), ("plain-horovod", 2, "gloo"), ("plain-pair", 2, "-")]
        name = {c: f"{c[0]}@np{c[1]}" + (f"/{c[2]}" if c[1] > 1 and c[2] != "-" else "") for c in configs}
        times = {c: [] for c in configs}
        for r in range(args.rounds):
            for c in configs:
                times[c].append(run(c[0], c[1], args, data, controller=c[2]))
            print(f"round {r + 1}: " + ", ".join(f"{name[c]} {t[-1] * 1000:.0f} ms/step" for c, t in times.items()),
                  flush=True)
        med = {c: statistics.median(t) for c, t in times.items()}

        def ratio(a, b) -> str:  # med[a] / med[b], or n/a where --smoke did not run one of them
            return f"{med[a] / med[b]:.3f}" if a in med and b in med else "  n/a"

        def verdict(value: str, target: float) -> str:
            return "" if value.strip() == "n/a" else f"   target >= {target:.2f}  " + (
                "PASS" if float(value) >= target else "MISS")

        print()
        print("median step time (ms):  " + ", ".join(f"{name[c]} {t * 1000:.0f}" for c, t in med.items()))
        r = ratio(("plain", 1, "-"), ("hvdgan", 1, "-"))
        print(f"hvdgan np=1 vs plain PyTorch loop (throughput ratio):    {r}{verdict(r, 0.97)}")
        for ctl in ("mpi", "gloo"):
            eff = ratio(("hvdgan", 1, "-"), ("hvdgan", 2, ctl))
            eff_plain = ratio(("plain-horovod", 1, "mpi"), ("plain-horovod", 2, ctl))
            print(f"weak scaling np=2 vs np=1, hvdgan, {ctl:4s}:                {eff}"
                  f"{verdict(eff, 0.90) if ctl == 'mpi' else ''}")
            print(f"weak scaling np=2 vs np=1, plain Horovod loop, {ctl:4s}:    {eff_plain}")
        print(f"two independent plain loops at once vs one (no communication at all; the machine's ceiling): "
              f"{ratio(('plain', 1, '-'), ('plain-pair', 2, '-'))}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_cost(args, data: str) -> None:
    """hvdgan np=2 (MPI) with the stop flag against without it, alternating, median per configuration."""
    configs = ("hvdgan", "hvdgan-nostop")
    times = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            times[c].append(run(c, 2, args, data, controller="mpi"))
        print(f"round {r + 1}: " + ", ".join(f"{c} {t[-1] * 1000:.1f} ms/step" for c, t in times.items()), flush=True)
    with_flag, without = (statistics.median(times[c]) for c in configs)
    spread = max(abs(a - b) / b for a, b in zip(times["hvdgan"], times["hvdgan-nostop"]))
    cost = with_flag / without - 1
    flag = statistics.median([f for f in FLAG_S if f is not None])
    print(f"\ntime in the stop flag's calls (submit + poll), rank 0: {flag * 1e6:.0f} us per step = "
          f"{flag / with_flag * 100:.3f}% of a step")
    print(f"\nstop flag cost, np=2 mpi: {cost * 100:+.2f}% of a step ({with_flag * 1000:.2f} vs {without * 1000:.2f} "
          f"ms; largest per-round difference {spread * 100:.1f}%)   target <= 1%  {'PASS' if cost <= 0.01 else 'MISS'}")


if __name__ == "__main__":
    main()
