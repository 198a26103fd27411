"""Evaluation benchmark: Inception feature extraction (images/s) at 1 and 2 ranks, side by side in one
run, and what a 10,000-image FID adds to a training run on this machine.

    .venv/bin/python benchmarks/bench_eval.py                 # about 4 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_eval.py --images 64     # quicker, noisier

1 rank uses every core (torch threads = cores); 2 ranks use cores / 2 threads each (as hvdgan train
sets them), under horovodrun --gloo. The timed part is hvdgan.eval.evaluate.generated_features: a DCGAN
generator (32x32, grey: the digits demo's) makes the images, Inception extracts their features, and
Horovod gathers them; a warm-up batch runs first. On a GPU (when one is visible) the same on cuda:0,
plus fp32 against bf16-autocast features: the relative FID difference says whether bf16 may be used.

The 10,000-image FID figure is EXTRAPOLATED: 10,000 / the measured 2-rank rate, plus the measured time
of the Frechet distance of 2048-d statistics (two 2048x2048 eigendecompositions) and of the statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    import torch

    from hvdgan.dist.world import World
    from hvdgan.eval.features import generated_features
    from hvdgan.eval.inception import InceptionFeatures
    from hvdgan.models.dcgan import Generator

    world = World.from_horovod(threads=False)
    hvd = world.hvd
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    G = Generator(100, 64, 1, 32).to(device).eval()
    ex = InceptionFeatures(None, device, batch_size=args.batch)
    generated_features(G, 2 * hvd.size(), ex, world, seed=1, batch_size=2, progress=False)  # warm-up
    hvd.allreduce(torch.zeros(1), name="bench.barrier")
    t0 = time.perf_counter()
    feats = generated_features(G, args.images, ex, world, seed=2, batch_size=args.batch, progress=False)
    seconds = time.perf_counter() - t0
    out = {"ranks": hvd.size(), "threads": args.threads, "images": args.images, "seconds": seconds,
           "images_per_s": args.images / seconds, "device": str(device)}
    if args.bf16 and hvd.rank() == 0:
        from hvdgan.eval import scores

        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = generated_features(G, args.images, ex, World(), seed=2, batch_size=args.batch, progress=False)
        ref = generated_features(G, args.images, ex, World(), seed=3, batch_size=args.batch, progress=False)
        f32 = scores.frechet_distance(scores.gaussian(ref), scores.gaussian(feats))
        bf16 = scores.frechet_distance(scores.gaussian(ref), scores.gaussian(half))
        out["fid_fp32"], out["fid_bf16"], out["bf16_relative_diff"] = f32, bf16, abs(bf16 - f32) / f32
    if hvd.rank() == 0:
        Path(args.out).write_text(json.dumps(out))


def run(cmd, env) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=128, help="images timed per configuration")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import numpy as np
    import torch

    from hvdgan.eval import scores
    from hvdgan.dist.launch import Launch

    cores = os.cpu_count() or 1
    py, me = sys.executable, str(Path(__file__).resolve())
    base = [me, "--worker", "--images", str(args.images), "--batch", str(args.batch)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        configs = [("1 rank", [py, *base, "--threads", str(cores)], 1),
                   ("2 ranks", Launch(np=2, launcher="horovodrun", controller="gloo").command(
                       [py, *base, "--threads", str(max(1, cores // 2))]), 2)]
        if torch.cuda.is_available():
            configs.append(("1 rank, cuda:0", [py, *base, "--threads", str(cores), "--device", "cuda:0", "--bf16"], 1))
        for name, cmd, _ in configs:
            out = os.path.join(tmp, name.replace(" ", "_").replace(",", "").replace(":", "") + ".json")
            env = dict(os.environ, OMP_NUM_THREADS=cmd[cmd.index("--threads") + 1])
            run([*cmd, "--out", out], env)
            results[name] = json.loads(Path(out).read_text())
            print(f"{name:>16}: {results[name]['images_per_s']:7.1f} images/s "
                  f"({results[name]['images']} images in {results[name]['seconds']:.1f} s, "
                  f"{results[name]['threads']} thread(s) per rank, {results[name]['device']})", flush=True)
    one, two = results["1 rank"]["images_per_s"], results["2 ranks"]["images_per_s"]
    print(f"2 ranks / 1 rank: {two / one:.2f}x")
    if "1 rank, cuda:0" in results:
        g = results["1 rank, cuda:0"]
        print(f"GPU: FID fp32 {g['fid_fp32']:.4f}, bf16 {g['fid_bf16']:.4f}: relative difference "
              f"{g['bf16_relative_diff']:.2e} ({'within' if g['bf16_relative_diff'] < 1e-3 else 'NOT within'} 0.1%)")

    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(10_000, 2048)).astype(np.float32) for _ in range(2)]
    t0 = time.perf_counter()
    stats = [scores.gaussian(f) for f in feats[1:]]
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores.frechet_distance(scores.gaussian(feats[0]), stats[0])
    t_fd = time.perf_counter() - t0 - t_stats
    extract = 10_000 / two
    print(f"a 10,000-image FID on 2 ranks here (EXTRAPOLATED from {args.images} images): "
          f"{extract:.0f} s of generation + features, {t_stats:.1f} s of statistics, {max(t_fd, 0):.1f} s of "
          f"Frechet distance: about {(extract + t_stats + max(t_fd, 0)) / 60:.1f} minutes added per evaluation")


if __name__ == "__main__":
    main()
