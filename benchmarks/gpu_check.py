"""Does hvdgan work on this GPU node, and how fast? The checks and benchmarks of `make gpu-check`.

    bash scripts/gpu-check.sh                        # sets up the environment from the bundle, then runs this
    python benchmarks/gpu_check.py --device cpu      # the CPU dry run of the whole sequence, tiny sizes

In order, each step timed and recorded (a failed step is reported and the others still run):
  info        `hvdgan info --json`
  data        `hvdgan prepare` of synthetic 64x64 RGB images (a .npy file; no download)
  train       a short training under `horovodrun -np <GPUs> --gloo` (on the CPU: 2 ranks, channels_last)
  resume      the same run continued with --resume auto to twice the steps
  sample      `hvdgan sample` from the last checkpoint
  placements  benchmarks/bench_placement.py: every placement the node allows, checked against all-on-GPU in
              float32, and timed side by side
  precision   bf16 autocast + channels_last against float32 from the same weights, data and noise over a few
              hundred steps: no NaN, the first step's losses and the late D outputs and losses close
  speed       hvdgan's GAN step against a plain PyTorch loop of the same DCGAN-64 with the same precision
              settings (bf16 autocast, channels_last, fused Adam on the GPU), side by side, per-GPU batch
              128, 1024 and 2048 (targets: >= 0.97x the plain loop; >= 25,000 images/s at 128; >= 100,000
              at 2048, on one H100)
It writes gpu-check.json and gpu-check.md (device, driver, torch, CUDA, NCCL, Horovod, every figure) into
--report. Exit status 1 when a check fails (a missed speed target is reported, not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_report import render_markdown  # noqa: E402

BIN = Path(sys.executable).parent
TARGETS = {"ratio": 0.97, "images_per_s": {128: 25_000, 2048: 100_000}}


def sizes(args) -> dict:
    """Everything that differs between the GPU run and the CPU dry run."""
    if args.device == "cuda":
        return dict(images=8192, ngf=64, ndf=64, train_batch=128, train_steps=100, precision_batch=64,
                    precision_steps=300, batches=[128, 1024, 2048], speed_steps=30, rounds=5, warmup=10,
                    placement_args=["--device", "cuda"], train_extra=[])
    return dict(images=192, ngf=8, ndf=8, train_batch=16, train_steps=4, precision_batch=8, precision_steps=8,
                batches=[4, 8], speed_steps=2, rounds=2, warmup=1,
                placement_args=["--device", "cpu", "--rounds", "2", "--steps", "2", "--warmup", "1"],
                # the GPU defaults where the CPU has them: channels_last tensors through Horovod on 2 ranks
                train_extra=["--channels-last"], ranks=2)


# ---------------------------------------------------------------------------------------- helpers
class Steps:
    """Runs named steps, records ok/time/detail; a failure is recorded and the sequence goes on."""

    def __init__(self, log):
        self.results, self.log = [], log

    def run(self, name: str, fn, *a):
        self.log(f"--- {name}")
        t0 = time.perf_counter()
        try:
            detail, value = fn(*a), None
            if isinstance(detail, tuple):
                detail, value = detail
            ok = True
        except Exception as exc:  # noqa: BLE001 - reported in the table, the next steps still run
            detail, value, ok = f"{type(exc).__name__}: {exc}"[-1500:], None, False
        self.results.append({"name": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 1),
                             "detail": detail})
        self.log(f"    {'OK' if ok else 'FAIL'} ({self.results[-1]['seconds']} s): {detail}")
        return value


def sh(cmd: list[str], timeout: float, env=None, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} ... exited {proc.returncode}: "
                           f"{first_error(proc.stdout + proc.stderr)}")
    return proc


def first_error(text: str) -> str:
    """The first line that names an error (not Horovod's own shutdown messages), else the output's end."""
    follow = ("Horovod detected", "Horovod has been shut down", "HorovodInternalError", "Traceback")
    for line in text.splitlines():
        if re.search(r"\b\w*(Error|error)\b", line) and not any(f in line for f in follow):
            return line.strip()[-600:]
    return text[-600:]


def run_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HDF5_USE_FILE_LOCKING="FALSE")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1" if os.cpu_count() and os.cpu_count() <= 4 else "4")
    return env


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def environment(args, hvd) -> dict:
    env = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "device": args.device}
    try:
        import horovod

        env["horovod"] = horovod.__version__
        env["horovod_ops"] = [n for n, built in (("NCCL", hvd.nccl_built()), ("Gloo", hvd.gloo_built()),
                                                 ("MPI", hvd.mpi_built())) if built]
    except Exception as exc:  # noqa: BLE001
        env["horovod"] = f"unavailable ({exc})"
    if args.device == "cuda" and torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        v = torch.cuda.nccl.version()
        env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        if shutil.which("nvidia-smi"):
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True)
            env["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    else:
        env["gpus"], env["nccl"], env["driver"] = [], None, None
    if args.bundle and (Path(args.bundle) / "manifest.json").is_file():
        m = json.loads((Path(args.bundle) / "manifest.json").read_text())
        env["bundle"] = {k: m.get(k) for k in ("created", "hvdgan", "horovod", "python_version", "total_bytes")}
    env["commit"] = None
    if shutil.which("git"):  # (a copied tree may have no .git, a GPU image no git)
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        env["commit"] = git.stdout.strip() if git.returncode == 0 else None
    return env


# ------------------------------------------------------------------------- the command-line steps
def step_info(args, ctx):
    out = sh([str(BIN / "hvdgan"), "info", "--json"], 300, run_env()).stdout
    info = json.loads(out)
    ctx["info"] = info
    return f"hvdgan info: torch {info['versions']['torch']}, GPUs: {', '.join(info['gpus']) or 'none'}"


def synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """Coloured discs and bars on gradients, NHWC uint8: something a GAN can learn in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.3)
        bg = rng.uniform(0, 0.4, 3)[:, None, None] * (0.5 + 0.5 * (xx if i % 2 else yy))
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
        img = bg + disc * rng.uniform(0.4, 1.0, 3)[:, None, None]
        out[i] = (np.clip(img, 0, 1) * 255).transpose(1, 2, 0).astype(np.uint8)
    return out


def step_data(args, ctx):
    npy = ctx["work"] / "synthetic64.npy"
    np.save(npy, synthetic_images(ctx["sizes"]["images"], 64, 0))
    data = ctx["work"] / "data64"
    sh([str(BIN / "hvdgan"), "prepare", str(npy), str(data), "--size", "64", "--shards", "4"], 600, run_env())
    ctx["data"] = data
    return f"{ctx['sizes']['images']} synthetic 64x64x3 images in 4 shards: {data}"


def train_cmd(args, ctx, steps: int, resume: str) -> list[str]:
    s, np_ = ctx["sizes"], ctx["ranks"]
    return [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo", str(BIN / "hvdgan"),
            "train", "--data", str(ctx["data"]), "--out", str(ctx["run"]), "--max-steps", str(steps),
            "--batch-size", str(s["train_batch"]), "--ngf", str(s["ngf"]), "--ndf", str(s["ndf"]),
            "--device", args.device, "--log-every", str(max(1, steps // 4)), "--sample-every", str(steps),
            "--checkpoint-every", str(steps), "--no-tensorboard", "--resume", resume, *s["train_extra"]]


def read_result(ctx, steps: int) -> dict:
    result = json.loads((ctx["run"] / "result.json").read_text())
    if result.get("status") != "done" or result.get("step") != steps:
        raise RuntimeError(f"result.json: {result}")
    rows = [json.loads(line) for line in (ctx["run"] / "metrics.jsonl").read_text().splitlines()]
    losses = [r[k] for r in rows if "loss_d" in r for k in ("loss_d", "loss_g")]
    if not losses or not np.isfinite(losses).all():
        raise RuntimeError("metrics.jsonl: missing or non-finite losses")
    speeds = [r["images_per_s"] for r in rows if "images_per_s" in r]
    return {"step": steps, "images_per_s_last_window": speeds[-1] if speeds else None}


def step_train(args, ctx):
    ctx["run"] = ctx["work"] / "run"
    steps = ctx["sizes"]["train_steps"]
    proc = sh(train_cmd(args, ctx, steps, "none"), 600, run_env())
    r = read_result(ctx, steps)
    ctx["train_log"] = proc.stderr[-2000:]
    return (f"{steps} steps on {ctx['ranks']} rank(s), batch {ctx['sizes']['train_batch']} per rank; last window "
            f"{r['images_per_s_last_window']:.0f} images/s", r)


def step_resume(args, ctx):
    steps = 2 * ctx["sizes"]["train_steps"]
    proc = sh(train_cmd(args, ctx, steps, "auto"), 600, run_env())
    if "resumed from" not in proc.stdout + proc.stderr:
        raise RuntimeError("the second run did not say it resumed")
    r = read_result(ctx, steps)
    return f"resumed at step {steps // 2} and finished at step {steps}", r


def step_sample(args, ctx):
    ckpt = ctx["run"] / "checkpoints" / f"ckpt-{2 * ctx['sizes']['train_steps']:08d}.pt"
    png = ctx["work"] / "sample.png"
    sh([str(BIN / "hvdgan"), "sample", str(ckpt), "--out", str(png), "-n", "16"], 300, run_env())
    if png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise RuntimeError(f"{png}: not a PNG")
    return f"16-image grid from {ckpt.name}: {png.stat().st_size} bytes"


def step_placements(args, ctx):
    out = ctx["work"] / "placements.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_placement.py"), *ctx["sizes"]["placement_args"],
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=run_env())
    if not out.exists():
        raise RuntimeError(f"bench_placement exited {proc.returncode}: {first_error(proc.stdout + proc.stderr)}")
    result = json.loads(out.read_text())
    ctx["placements"] = result
    bad = [spec for spec, r in result["check"].items() if not r["ok"]]
    if bad or proc.returncode != 0:
        raise RuntimeError(f"placement check failed for {', '.join(bad) or '?'} (exit {proc.returncode})")
    return f"{', '.join(result['check'])}: match {'all-on-GPU' if args.device == 'cuda' else 'unplaced'} in float32"


# ------------------------------------------------------------------------ in-process steps (GAN)
def make_gan(args, ctx, hvd, mixed: bool, batch: int, seed: int = 0):
    from hvdgan.config import GANSettings
    from hvdgan.gan import GAN
    from hvdgan.models.dcgan import Discriminator, Generator

    dev = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    torch.manual_seed(seed)
    G = Generator(100, ctx["sizes"]["ngf"], 3, 64).to(dev)
    D = Discriminator(ctx["sizes"]["ndf"], 3, 64).to(dev)
    if mixed:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    return GAN(G, D, GANSettings(amp=mixed), hvd), dev  # the defaults: the seed's Adam and BCE, EMA on


def real_batches(ctx, n: int, batch: int, dev, channels_last: bool) -> list[torch.Tensor]:
    from hvdgan.data import read_all, to_float

    images = torch.from_numpy(read_all(ctx["data"])[0])
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        real = to_float(images[torch.randint(0, len(images), (batch,), generator=gen)], dev)
        out.append(real.contiguous(memory_format=torch.channels_last) if channels_last else real)
    return out


def step_precision(args, ctx, hvd):
    """bf16 + channels_last against float32 (no TF32) from the same weights, data and noise."""
    s = ctx["sizes"]
    n, b = s["precision_steps"], s["precision_batch"]
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    curves = {}
    try:
        for mixed in (False, True):
            gan, dev = make_gan(args, ctx, hvd, mixed, b)
            reals = real_batches(ctx, 16, b, dev, mixed)
            gen = torch.Generator(dev).manual_seed(2)
            rows = []
            for i in range(n):
                gan.step(reals[i % len(reals)], torch.randn(b, 100, 1, 1, device=dev, generator=gen), i + 1)
                st = gan.stats
                rows.append(torch.tensor([st.sum(k) for k in ("loss_d", "loss_g", "d_real", "d_fake")],
                                         dtype=torch.float64))
                st.reset()
            curves["mixed" if mixed else "fp32"] = torch.stack(rows)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    ref, mix = curves["fp32"], curves["mixed"]
    late = slice(n - max(1, n // 4), n)  # the last quarter: the mean behaviour, not one step's rounding
    res = {
        "steps": n, "batch": b, "finite": bool(torch.isfinite(mix).all() and torch.isfinite(ref).all()),
        "step1_loss_rel_diff": ((mix[0, :2] - ref[0, :2]).abs() / ref[0, :2].abs()).max().item(),
        "late_d_outputs_abs_diff": (mix[late, 2:].mean(0) - ref[late, 2:].mean(0)).abs().max().item(),
        "late_losses_rel_diff": ((mix[late, :2].mean(0) - ref[late, :2].mean(0)).abs()
                                 / ref[late, :2].mean(0).abs()).max().item(),
        "late_means_fp32": [round(v, 4) for v in ref[late].mean(0).tolist()],
        "late_means_mixed": [round(v, 4) for v in mix[late].mean(0).tolist()],
        # (late losses are reported, not checked: once D wins, loss_d runs towards 0, where any relative
        # difference is large; on an H200, 0.0069 against 0.102 gave 0.93 while the D outputs differed by 0.044)
        "tolerances": {"step1_loss_rel_diff": 0.05, "late_d_outputs_abs_diff": 0.15},
    }
    ctx["precision"] = res
    if not res["finite"]:
        raise RuntimeError(f"NaN or infinite losses: {res}")
    over = [k for k, tol in res["tolerances"].items() if not res[k] <= tol]
    if over:
        raise RuntimeError(f"bf16 + channels_last drifts from float32 ({', '.join(over)}): {res}")
    return (f"{n} steps, batch {b}: step-1 losses {res['step1_loss_rel_diff']:.1e} rel., late D outputs "
            f"{res['late_d_outputs_abs_diff']:.3f} abs., late losses {res['late_losses_rel_diff']:.3f} rel.; no NaN")


class PlainLoop:
    """The pytorch/examples dcgan loop, with the precision settings hvdgan uses on a GPU: bf16 autocast,
    channels_last, fused Adam; the same G, D, BCE-with-logits losses, batch and data."""

    def __init__(self, args, ctx, batch: int, mixed: bool):
        from hvdgan.models.dcgan import Discriminator, Generator

        self.dev = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
        torch.manual_seed(0)
        self.G = Generator(100, ctx["sizes"]["ngf"], 3, 64).to(self.dev)
        self.D = Discriminator(ctx["sizes"]["ndf"], 3, 64).to(self.dev)
        if mixed:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        fused = self.dev.type == "cuda" or None
        self.optG = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused)
        self.optD = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused)
        self.amp = mixed and self.dev.type == "cuda"
        self.crit = torch.nn.BCEWithLogitsLoss()
        self.ones = torch.ones(batch, device=self.dev)
        self.zeros = torch.zeros(batch, device=self.dev)

    def step(self, real: torch.Tensor, z: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            self.optD.zero_grad()
            err_real = self.crit(self.D(real).float().view(-1), self.ones)
            fake = self.G(z)
            err_fake = self.crit(self.D(fake.detach()).float().view(-1), self.zeros)
        (err_real + err_fake).backward()
        self.optD.step()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            self.optG.zero_grad()
            err_g = self.crit(self.D(fake).float().view(-1), self.ones)
        err_g.backward()
        self.optG.step()


def step_speed(args, ctx, hvd):
    s = ctx["sizes"]
    rows = []
    for b in s["batches"]:
        gan, dev = make_gan(args, ctx, hvd, True, b)
        plain = PlainLoop(args, ctx, b, True)
        reals = real_batches(ctx, 4, b, dev, True)
        impls = {"plain": plain.step, "hvdgan": gan.step}
        for fn in impls.values():  # warm-up: cuDNN autotuning, allocator, first-call costs
            for i in range(s["warmup"]):
                fn(reals[i % 4], torch.randn(b, 100, 1, 1, device=dev))
        times = {k: [] for k in impls}
        for r in range(s["rounds"]):
            for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                sync()
                t0 = time.perf_counter()
                for i in range(s["speed_steps"]):
                    impls[name](reals[i % 4], torch.randn(b, 100, 1, 1, device=dev))
                sync()
                times[name].append((time.perf_counter() - t0) / s["speed_steps"])
        gan.pop_bad_step()
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"batch": b, "plain_ms": 1e3 * med["plain"], "hvdgan_ms": 1e3 * med["hvdgan"],
               "plain_images_per_s": b / med["plain"], "hvdgan_images_per_s": b / med["hvdgan"],
               "ratio": med["plain"] / med["hvdgan"]}
        if args.device == "cuda":
            row["targets"] = {"ratio >= 0.97": row["ratio"] >= TARGETS["ratio"]}
            if b in TARGETS["images_per_s"]:
                t = TARGETS["images_per_s"][b]
                row["targets"][f">= {t:,} images/s"] = row["hvdgan_images_per_s"] >= t
        rows.append(row)
        del gan, plain, reals
        if args.device == "cuda":
            torch.cuda.empty_cache()
    ctx["speed"] = rows
    return ", ".join(f"batch {r['batch']}: {r['hvdgan_images_per_s']:,.0f} vs {r['plain_images_per_s']:,.0f} "
                     f"images/s ({r['ratio']:.2f}x)" for r in rows)


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--report", type=Path, default=ROOT / "gpu-check", help="where gpu-check.json/.md go")
    ap.add_argument("--work", type=Path, default=None, help="data and runs (default: a temporary folder)")
    ap.add_argument("--bundle", default=None, help="the bundle used (its manifest is quoted in the report)")
    ap.add_argument("--batches", default=None, help="per-GPU batches of the speed benchmark, e.g. 128,1024,2048")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out (reported as skipped)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no GPU here; use --device cpu for the dry run", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    args.report.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    s = sizes(args)
    if args.batches:
        s["batches"] = [int(b) for b in args.batches.split(",")]
    ctx = {"work": work, "sizes": s, "ranks": max(1, torch.cuda.device_count()) if args.device == "cuda" else s["ranks"]}
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    elif (os.cpu_count() or 1) <= 4:
        torch.set_num_threads(1)  # (the dry run on a small machine: as the training ranks run)

    def log(msg):
        print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from hvdgan.dist import horovod as dist

    hvd = dist.hvd()
    steps = Steps(log)
    env = environment(args, hvd)
    log(f"{env['host']}: {', '.join(env['gpus']) or 'CPU'}; torch {env['torch']} (CUDA {env['cuda']}), NCCL "
        f"{env['nccl']}, Horovod {env.get('horovod')}; work: {work}")
    skip = {x for x in args.skip.split(",") if x}
    plan = [("info", step_info), ("data", step_data), ("train", step_train), ("resume", step_resume),
            ("sample", step_sample), ("placements", step_placements)]
    for name, fn in plan:
        if name in skip:
            continue
        if name != "info" and name != "data" and "data" not in ctx:
            steps.results.append({"name": name, "ok": False, "seconds": 0, "detail": "no data (the data step failed)"})
            continue
        steps.run(name, fn, args, ctx)
    dist.init()  # one rank in this process (as `hvdgan train` starts it): the GAN's optimizers are Horovod's
    for name, fn in (("precision", step_precision), ("speed", step_speed)):
        if name not in skip and "data" in ctx:
            steps.run(name, fn, args, ctx, hvd)
    report = {
        "device": args.device, "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "environment": env, "sizes": s,
        "checks": steps.results, "speed": ctx.get("speed", []), "placements": ctx.get("placements"),
        "precision": ctx.get("precision"), "seconds": round(time.perf_counter() - t_start, 1),
        "ok": all(r["ok"] for r in steps.results),
        "notes": ["CUDA graphs of the step are not implemented: hvdgan's step is eager PyTorch plus Horovod's "
                  "hooks (see docs/benchmarks.md)."],
    }
    (args.report / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.report / "gpu-check.md").write_text(render_markdown(report))
    print(render_markdown(report))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
