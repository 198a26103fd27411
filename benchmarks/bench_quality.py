"""Sample quality at the same budget, side by side in one run: the digits demo as it was before issue 13
(DCGAN, the seed's setting), the demo job now (jobs/digits-demo.yaml, when it differs), and candidate
settings: built-in ones (CANDIDATES, chosen with --candidate) and any named with --setting.

Each setting trains on 2 ranks (`horovodrun -np 2`, as `make demo`) on the embedded digits for the same
budget: a watcher thread sends each rank SIGUSR1 when the budget is spent, and the trainer stops the way
it does on a Slurm preemption (the ranks agree on a step, write a checkpoint, exit). The budget is
wall-clock seconds (`--clock wall`, the default), or, on a machine shared with other jobs, CPU seconds of
each rank's training thread (`--clock cpu`: what wall-clock seconds are on an idle machine, one thread
per rank, without the time other jobs take from it). The checkpoint's
generator (its EMA) is then scored against every real digit by a scorer (lower is better): `fid`, the
Inception FID (with KID) of N samples measured by `hvdgan evaluate` on 2 ranks; `fd8`, the Frechet
distance of 8x8 grey thumbnails (hvdgan.run.runlog; no Inception weights needed). A scorer is a function
(checkpoint, data, N) -> (score, details): add one to SCORERS.

    .venv/bin/python benchmarks/bench_quality.py --scorer fid           # 180 s of training per setting
    .venv/bin/python benchmarks/bench_quality.py --budget 30 --clock cpu --img-dir docs/img
    .venv/bin/python benchmarks/bench_quality.py --candidate resnet-tiny --setting wide="ngf: 64, ndf: 64"

Target (issue 13): a new demo setting at most half the old one's distance at the same budget; the demo
job moves to it only if one does.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the digits demo before issue 13 (jobs/digits-demo.yaml at that time): the seed's DCGAN setting
DCGAN_DEMO = dict(model="dcgan", image_size=32, nz=64, ngf=32, ndf=32, loss="bce", lr_g=2e-4, lr_d=2e-4, beta1=0.5,
                  beta2=0.999, batch_size=64, seed=0)
DEMO_JOB = ROOT / "jobs" / "digits-demo.yaml"
# candidates for the demo (over DCGAN_DEMO): the labels (class-conditional), DiffAugment, what SNGAN brings
CANDIDATES = {
    "dcgan-cond": dict(conditional=True),
    "dcgan-cond-aug": dict(conditional=True, augment="translation"),
    "dcgan-aug": dict(augment="translation"),
    # more steps in the same budget (half the batch), larger steps (twice the learning rate), or both
    "dcgan-cond-b32": dict(conditional=True, batch_size=32),
    "dcgan-cond-lr4": dict(conditional=True, lr_g=4e-4, lr_d=4e-4),
    "dcgan-cond-b32-lr4": dict(conditional=True, batch_size=32, lr_g=4e-4, lr_d=4e-4),
    "dcgan-cond-b16": dict(conditional=True, batch_size=16),
    "dcgan-cond-b8": dict(conditional=True, batch_size=8),
    # MSGAN's mode-seeking term: what kept the textures from collapsing (docs/benchmarks.md, second sweep)
    "dcgan-cond-b8-ms": dict(conditional=True, batch_size=8, mode_seeking=1.0),
    # G's learning rate 3x D's (the reverse of TTUR's ratio): G's moving average smooths its larger steps
    "dcgan-cond-b8-g6": dict(conditional=True, batch_size=8, lr_g=6e-4),
    # both: the demo job (docs/benchmarks.md, "Recall on the patch sets: what else was tried")
    "dcgan-cond-b8-ms-g3": dict(conditional=True, batch_size=8, mode_seeking=1.0, lr_g=6e-4),
    "dcgan-sn-hinge-aug": dict(spectral_norm=True, loss="hinge", beta1=0.0, beta2=0.9, augment="translation,cutout"),
    "resnet-tiny": dict(model="resnet", ngf=8, ndf=8, loss="hinge", beta1=0.0, beta2=0.9,
                        augment="translation,cutout"),
}
DEFAULT_CANDIDATES = ["dcgan-cond", "dcgan-cond-b32", "dcgan-cond-b16", "dcgan-cond-b8"]  # without --candidate
RUN_KEYS = ("data", "out", "max_steps", "epochs", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
            "resume", "tensorboard", "device")  # the benchmark sets these itself


# ------------------------------------------------------------------------------------------ scorers
# A scorer: (checkpoint, data directory, number of samples) -> (score, details); lower is better.
@functools.lru_cache(maxsize=None)
def real_stats8(data: str):
    """The 8x8 thumbnail statistics of every real digit (read once per run, not once per setting)."""
    import torch

    from hvdgan.data import read_all
    from hvdgan.run.runlog import features8, gaussian

    return gaussian(features8(torch.from_numpy(read_all(data)[0]).float().div(127.5).sub(1)))


def fd8(checkpoint: str, data: str, n: int) -> tuple[float, dict]:
    """The Frechet distance of 8x8 grey thumbnails (hvdgan.run.runlog) against every real digit."""
    from hvdgan.run.runlog import features8, frechet_distance, gaussian

    fakes = generate(checkpoint, n, seed=12345)
    return frechet_distance(gaussian(features8(fakes)), real_stats8(data)), {}


def fid(checkpoint: str, data: str, n: int) -> tuple[float, dict]:
    """Inception FID (and KID) of the checkpoint's EMA generator against every real digit, measured by
    `hvdgan evaluate` on 2 ranks, as a user would (its reference features are cached in DATA/eval-cache)."""
    bindir = Path(sys.executable).parent
    out = Path(checkpoint).with_suffix(".eval.json")
    cmd = [str(bindir / "horovodrun"), "-np", "2", "-H", "localhost:2", str(bindir / "hvdgan"), "evaluate", checkpoint,
           "--data", data, "-n", str(n), "--metrics", "fid,kid", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"evaluation failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    scores = json.loads(out.read_text())["metrics"]
    return scores["fid"], {"kid": scores["kid"], "kid_std": scores["kid_std"]}


SCORERS = {"fd8": fd8, "fid": fid}


def generate(checkpoint: str, n: int, seed: int):
    """n samples of the checkpoint's EMA generator in [-1, 1] (a conditional one: the classes in turn)."""
    import torch

    from hvdgan.sample import load_generator
    from hvdgan.models.zoo import num_classes

    G = load_generator(checkpoint, ema=True)
    classes = num_classes(G)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        chunks = []
        for i in range(0, n, 256):
            k = min(256, n - i)
            y = (torch.arange(i, i + k) % classes,) if classes else ()
            chunks.append(G(torch.randn(k, G.nz, 1, 1, generator=gen), *y))
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------------- worker
def worker(args) -> None:
    """One rank: train the setting until the budget is spent (then stop as on a preemption)."""
    from hvdgan.dist import stop
    from hvdgan.config import build
    from hvdgan.run.loop import Trainer, setup_logging

    stop.install()  # USR1 ends the run as a preemption does (`hvdgan train` installs this in its CLI)
    values = json.loads(args.values)
    values.update(data=args.data, out=args.out, max_steps=10**7, log_every=10, sample_every=10**7,
                  checkpoint_every=10**7, keep_checkpoints=1, tensorboard=False, device="cpu")
    cfg = build(values)
    main_clock = time.pthread_getcpuclockid(threading.main_thread().ident)

    def watch():
        t0, c0 = time.perf_counter(), time.clock_gettime(main_clock)
        while True:
            spent = (time.perf_counter() - t0 if args.clock == "wall" else time.clock_gettime(main_clock) - c0)
            if spent >= args.budget:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.2)

    setup_logging()
    trainer = Trainer(cfg)  # (the timer starts once the trainer is built and its signal handler is set)
    t0, c0 = time.perf_counter(), time.process_time()
    threading.Thread(target=watch, daemon=True).start()
    try:
        trainer.run()
    finally:
        if trainer.world.root:
            Path(args.out, "wall.json").write_text(json.dumps(
                {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}))


# --------------------------------------------------------------------------------------------- main
def setting_values(spec: str) -> dict:
    """A setting: `dcgan-demo`, `demo` (jobs/digits-demo.yaml), a job file, or inline YAML "key: value, ..."."""
    from hvdgan.config import load_job_file

    if spec == "dcgan-demo":
        return dict(DCGAN_DEMO)
    if spec == "demo":
        values = load_job_file(DEMO_JOB)
    elif spec.endswith((".yaml", ".yml")):
        values = load_job_file(spec)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench-setting-")) / "setting.yaml"
        tmp.write_text(yaml.safe_dump(yaml.safe_load("{" + spec + "}")))
        values = {**DCGAN_DEMO, **load_job_file(tmp)}
    return {k: v for k, v in values.items() if k not in RUN_KEYS}


def train_setting(name: str, values: dict, data: str, out: Path, budget: float, np_: int, clock: str) -> dict:
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", sys.executable, __file__,
           "--worker", "--data", data, "--out", str(out), "--budget", str(budget), "--clock", clock,
           "--values", json.dumps(values)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    result["launch_s"] = time.perf_counter() - t0
    times = json.loads((out / "wall.json").read_text())
    result["train_s"], result["cpu_s"] = times["seconds"], times["cpu"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--values", help=argparse.SUPPRESS)
    ap.add_argument("--data", help="a prepared digits dataset to use (and keep the Inception reference features "
                    "of, in DATA/eval-cache); default: prepared afresh in a temporary directory")
    ap.add_argument("--out")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds of training per setting")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: wall-clock seconds; cpu: CPU seconds of each rank's training thread")
    ap.add_argument("--np", type=int, default=2, dest="np_")
    ap.add_argument("--candidate", action="append", choices=sorted(CANDIDATES),
                    help=f"built-in candidate(s) to add (default: {', '.join(DEFAULT_CANDIDATES)})")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=SPEC",
                    help="extra setting: NAME=job.yaml or NAME=\"key: value, ...\" (over the old DCGAN demo)")
    ap.add_argument("--scorer", choices=sorted(SCORERS), default="fd8")
    ap.add_argument("--samples", type=int, default=2048, help="generated images per score")
    ap.add_argument("--img-dir", help="write each setting's sample grid here as quality-NAME.png")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    from hvdgan.data import open_manifest
    from hvdgan.prepare import prepare
    from hvdgan.sample import sample_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    data = args.data or str(tmp / "digits")
    if not args.data:
        prepare("digits", data, shards=4, progress=False)
    count = open_manifest(data).count
    settings = [("dcgan-demo", setting_values("dcgan-demo"))]
    if setting_values("demo") != settings[0][1]:
        settings.append(("demo", setting_values("demo")))
    for name in args.candidate or DEFAULT_CANDIDATES:
        values = {**DCGAN_DEMO, **CANDIDATES[name]}
        same = [other for other, v in settings if v == values]
        if same:  # (the demo job holds a candidate since it moved to it: train it once)
            print(f"{name}: the same setting as {same[0]}", flush=True)
            continue
        settings.append((name, values))
    for item in args.setting:
        name, _, spec = item.partition("=")
        settings.append((name, setting_values(spec)))
    print(f"{len(settings)} settings x {args.budget:.0f} {args.clock} s of training on {args.np_} ranks (horovodrun), digits "
          f"({count} images), scorer {args.scorer} over {args.samples} samples; {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name, values in settings:
        out = tmp / f"run-{name}"
        result = train_setting(name, values, data, out, args.budget, args.np_, args.clock)
        if args.img_dir:  # 8 x 8 samples; a conditional generator: one row of 8 per class
            sample_checkpoint(result["checkpoint"], Path(args.img_dir) / f"quality-{name}.png",
                              num=80 if values.get("conditional") else 64, overwrite=True)
        score, details = SCORERS[args.scorer](result["checkpoint"], data, args.samples)
        rows.append((name, values, result, score))
        extra = "".join(f", {k} {v:.4g}" for k, v in details.items() if v is not None)
        print(f"{name}: {result['step']} G steps in {result['train_s']:.0f} s wall ({result['cpu_s']:.0f} s CPU of "
              f"rank 0), {args.scorer} {score:.3f}{extra}   {json.dumps(values)}", flush=True)
    base = rows[0][3]
    print()
    print(f"| setting | G steps in {args.budget:.0f} {args.clock} s | {args.scorer} | vs dcgan-demo |")
    print("|---|---:|---:|---:|")
    for name, values, result, score in rows:
        print(f"| {name} | {result['step']} | {score:.3f} | {score / base:.2f}x |")
    best = min(rows[1:], key=lambda r: r[3])
    verdict = "PASS" if best[3] <= 0.5 * base else "MISS"
    print(f"\nbest other setting ({best[0]}) / old demo, {args.scorer} at the same budget: {best[3] / base:.3f}   "
          f"target <= 0.5  {verdict}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
