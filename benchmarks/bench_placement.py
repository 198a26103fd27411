"""Step time of hvdgan's GAN step (D update + G update + EMA) for several placements, side by side, against
everything on one GPU; and a check that placed training matches the single-device run (issue 5).

    python benchmarks/bench_placement.py                # GPU machine, ~1-2 minutes
    python benchmarks/bench_placement.py --device cpu   # CPU only: unplaced vs G=cpu,D=cpu (the hooks' cost)

--device cuda (default) times, on one process with one Horovod rank:
  all-on-GPU     no placement: G and D moved to cuda:0 with .to(), no hooks (the baseline of the ratios)
  G=gpu0,D=cpu   the seed's example: G on the GPU, D on the CPU
  G=cpu,D=gpu0   the reverse
  G=gpu0,D=gpu1  G and D on two GPUs (only with two GPUs visible)
with the trainer's defaults for a GPU run (bf16 autocast when G is on a GPU, channels_last). Each round runs
every placement in turn for --steps steps (the order rotates from round to round); each figure is the
median round. Real batches are uint8 on the host, moved and converted each step, as in `hvdgan train`.
--device cpu times the unplaced networks (no hooks) against G=cpu,D=cpu (the same arithmetic, plus the
pre-hooks at each network's entry): a smoke test of the script and a measure of the hooks' own cost.

The check trains --check-steps steps from the same weights, data and noise with each split placement and
all-on-GPU, in float32 (no autocast, no TF32, deterministic cuDNN), and compares the first step's losses
(same weights: only rounding differs; <= --loss-tolerance), the later steps' losses (<= --later-loss-tolerance)
and the parameters afterwards (relative to how far they moved; <= --tolerance). The later figures are loose
on purpose: Adam's first steps move every weight by about lr whatever the size of its gradient, so a weight
whose gradient is at rounding level moves by +-lr on the sign of that rounding. A CPU and a GPU round
differently, and after 3 steps the parameters differ by a few percent of their movement from that alone
(measured on an H200: 5.4% and 4.7%; on the CPU, inputs scaled by 1 + 2**-19 give 4.7%), while a placement
that computes something else differs by the order of the movement itself.
With --device cpu it compares G=cpu,D=cpu against the unplaced run, which must be bit-identical.
Exit status: 0, 1 when a check fails, 2 when --device cuda finds no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvdgan.config import DataFacts, build as build_config, resolve  # noqa: E402
from hvdgan.dist.world import World  # noqa: E402
from hvdgan.data import to_float  # noqa: E402
from hvdgan.gan import GAN  # noqa: E402
from hvdgan.models.dcgan import Discriminator, Generator  # noqa: E402
from hvdgan.models.placement import block_devices, describe, place  # noqa: E402

BASELINE = {"cuda": "all-on-GPU", "cpu": "unplaced"}


def placements(device: str) -> list[str | None]:
    if device == "cpu":
        return [None, "G=cpu,D=cpu"]
    specs = [None, "G=gpu0,D=cpu", "G=cpu,D=gpu0"]
    if torch.cuda.device_count() >= 2:
        specs.append("G=gpu0,D=gpu1")
    return specs


def build(spec: str | None, args, hvd, amp: bool | None, channels_last: bool | None):
    """A GAN as the trainer builds it on one rank, with `spec` placed on this process's devices."""
    default = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    devices = block_devices(spec, 0, 1, default)
    torch.manual_seed(args.seed)
    G, D = Generator(args.nz, args.ngf, 3, args.size), Discriminator(args.ndf, 3, args.size)
    if spec is None:  # the single-device baseline: plain .to(), no hooks
        G.to(default)
        D.to(default)
    else:
        place(G, devices["G"])
        place(D, devices["D"])
    cfg = resolve(build_config(dict(data="-", nz=args.nz, ngf=args.ngf, ndf=args.ndf, batch_size=args.batch_size,
                                    device=args.device, placement=spec, amp=amp, channels_last=channels_last)),
                  World(), DataFacts(channels=3, image_size=args.size, batches_per_epoch=1))
    if cfg.channels_last:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    return GAN(G, D, cfg.gan, hvd), devices, cfg.channels_last


def sync() -> None:
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def step(gan: GAN, images: torch.Tensor, z: torch.Tensor, channels_last: bool) -> None:
    real = to_float(images, gan.real_device)
    if channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    gan.step(real, z.to(gan.noise_device, non_blocking=True))


def batches(args, n: int):
    gen = torch.Generator().manual_seed(args.seed + 1)
    images = torch.randint(0, 256, (n, args.batch_size, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    z = torch.randn(n, args.batch_size, args.nz, 1, 1, generator=gen)
    if args.device == "cuda":
        images = images.pin_memory()
    return images, z


def time_placements(args, hvd) -> dict:
    specs = placements(args.device)
    gans = {spec: build(spec, args, hvd, None, None) for spec in specs}
    images, z = batches(args, args.steps)
    for gan, _, layout in gans.values():  # warm-up: cuDNN autotuning, allocator, first-call costs
        for i in range(args.warmup):
            step(gan, images[i % args.steps], z[i % args.steps], layout)
    sync()
    times = {spec: [] for spec in specs}
    for r in range(args.rounds):
        for spec in specs[r % len(specs):] + specs[:r % len(specs)]:
            gan, _, layout = gans[spec]
            sync()
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(gan, images[i], z[i], layout)
            gan.pop_bad_step()  # one device sync, as at a log step
            sync()
            times[spec].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times[None])
    return {spec or BASELINE[args.device]: {
        "devices": describe(gans[spec][1]), "ms_per_step": 1e3 * statistics.median(times[spec]),
        "ms_rounds": [round(1e3 * t, 3) for t in times[spec]], "x_baseline": statistics.median(times[spec]) / base,
        "images_per_s": args.batch_size / statistics.median(times[spec])} for spec in specs}


def flat_params(gan: GAN) -> torch.Tensor:
    return torch.cat([p.detach().double().cpu().flatten() for m in (gan.G, gan.D) for p in m.parameters()])


def check(args, hvd) -> dict:
    """Train --check-steps steps with each split placement and with the baseline, float32 throughout."""
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    images, z = batches(args, args.check_steps)
    results = {}

    def train(spec):
        gan, _, _ = build(spec, args, hvd, amp=False, channels_last=False)
        start = flat_params(gan)
        losses = []
        for i in range(args.check_steps):
            step(gan, images[i], z[i], False)
            losses.append([gan.stats.sum("loss_d"), gan.stats.sum("loss_g")])  # this step's
            gan.stats.reset()
        sync()
        return start, torch.tensor(losses, dtype=torch.float64), flat_params(gan)

    start, ref_loss, ref = train(None)
    for spec in placements(args.device)[1:]:
        s, loss, params = train(spec)
        assert torch.equal(s, start), "the placed run starts from other weights"
        moved = (ref - start).norm().item()
        rel = (loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-12)
        results[spec] = {
            "loss_rel_diff": rel[0].max().item(),  # step 1: the same weights
            "later_loss_rel_diff": rel[1:].max().item() if len(rel) > 1 else 0.0,
            "param_max_abs_diff": (params - ref).abs().max().item(),
            "param_rel_diff": (params - ref).norm().item() / max(moved, 1e-30),
        }
        ok = (results[spec]["loss_rel_diff"] <= args.loss_tolerance
              and results[spec]["later_loss_rel_diff"] <= args.later_loss_tolerance
              and results[spec]["param_rel_diff"] <= args.tolerance)
        if args.device == "cpu":  # the same device: the same arithmetic
            ok = torch.equal(params, ref) and torch.equal(loss, ref_loss)
        results[spec]["ok"] = bool(ok)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--size", type=int, choices=[32, 64], default=None, help="image size (default: 64 cuda, 32 cpu)")
    p.add_argument("--ngf", type=int, default=None, help="G width (default: 64 cuda, 16 cpu)")
    p.add_argument("--ndf", type=int, default=None, help="D width (default: 64 cuda, 16 cpu)")
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 cuda, 16 cpu")
    p.add_argument("--steps", type=int, default=None, help="steps per placement per round (default: 20 cuda, 5 cpu)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--check-steps", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.25,
                   help="largest |params - baseline| / |baseline's movement| after --check-steps (float32)")
    p.add_argument("--loss-tolerance", type=float, default=1e-4, help="largest relative difference of step 1's losses")
    p.add_argument("--later-loss-tolerance", type=float, default=1e-2,
                   help="largest relative difference of the later check steps' losses")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_placement: no CUDA GPU is visible here (torch.cuda.is_available() is False), so the GPU "
              "placements cannot be timed. Run it on a GPU machine, or with --device cpu for the CPU-only part.",
              file=sys.stderr)
        return 2
    small = args.device == "cpu"
    args.size = args.size or (32 if small else 64)
    args.ngf = args.ngf or (16 if small else 64)
    args.ndf = args.ndf or (16 if small else 64)
    args.batch_size = args.batch_size or (16 if small else 64)
    args.steps = args.steps or (5 if small else 20)
    if args.threads:
        torch.set_num_threads(args.threads)

    import horovod.torch as hvd

    hvd.init()  # one rank: the optimizers' allreduce is a copy; what is timed is the placement
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if args.device == "cuda" else []
    print(f"bench_placement: {platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} cores, GPUs: {', '.join(gpus) or 'none used'}")
    print(f"DCGAN {args.size}x{args.size}x3, ngf {args.ngf}, ndf {args.ndf}, nz {args.nz}, batch {args.batch_size}; "
          f"{args.rounds} rounds x {args.steps} steps per placement, median round")
    timing = time_placements(args, hvd)
    width = max(len(k) for k in timing)
    print(f"\n{'placement':<{width}}  {'ms/step':>9}  {'images/s':>9}  {'x ' + BASELINE[args.device]:>14}  devices")
    for name, r in timing.items():
        print(f"{name:<{width}}  {r['ms_per_step']:>9.2f}  {r['images_per_s']:>9.0f}  {r['x_baseline']:>13.2f}x  "
              f"{r['devices']}")
    checks = check(args, hvd)
    print(f"\ncheck: {args.check_steps} float32 steps from the same weights, data and noise vs "
          f"{BASELINE[args.device]}")
    for spec, r in checks.items():
        verdict = "OK" if r["ok"] else "MISMATCH"
        print(f"  {spec:<{width}}  step-1 losses rel. diff {r['loss_rel_diff']:.2e}, later steps' "
              f"{r['later_loss_rel_diff']:.2e}, params max |diff| "
              f"{r['param_max_abs_diff']:.2e}, rel. to movement {r['param_rel_diff']:.2e}: {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "gpus": gpus,
                                         "timing": timing, "check": checks}, indent=2))
    return 0 if all(r["ok"] for r in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
