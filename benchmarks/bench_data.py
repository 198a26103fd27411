"""Images/s of hvdgan's ShardedReader on one core, side by side with torchvision ImageFolder over the same
images as PNG files and with the in-memory ceiling, for 32x32 and 64x64 RGB and every compression.

    python benchmarks/bench_data.py            # ~1-2 minutes
    python benchmarks/bench_data.py --quick    # fewer 64x64 images, shorter rounds: ~30-40 s
    python benchmarks/bench_data.py --smoke    # 1,024 32x32 images, one short round, no verdict: checks it runs

Every method yields the same thing: shuffled batches of uint8 [B, 3, S, S] torch tensors.
  imagefolder    torchvision ImageFolder(PILToTensor) + DataLoader(shuffle, num_workers=0): PNG decode per image
  ceiling        a uint8 numpy array in memory, a new permutation each epoch, batch = torch.from_numpy(x[idx])
  slice-copy     (for reference) consecutive slices x[i:i+B].copy(): no shuffle at all
  h5-<c>         ShardedReader(in_memory=False): streams from the HDF5 files (uncompressed: gathers straight from
                 the mapped chunks; compressed: reads windows of whole chunks through HDF5, then gathers)
  h5-<c>-mem     ShardedReader(in_memory=True), after a first epoch (the shards are already in memory)
  h5-none-h5py   ShardedReader(in_memory=False, direct=False): windows copied through HDF5, then gathered
The files are fresh, so they are in the OS page cache: this measures the reader's CPU cost, not the disk.
One core: torch.set_num_threads(1) and the process pinned to one CPU. The methods are timed in --repeat rounds
(each round runs every method in turn, for at least 0.5 s each); each figure is the method's best round.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real-looking RGB images: scikit-learn's handwritten digits upscaled, coloured, shifted, with noise."""
    from sklearn.datasets import load_digits

    from hvdgan.data.images import fit

    d = load_digits()
    rng = np.random.default_rng(seed)
    base = fit(np.round(d.images * 255 / 16).astype(np.uint8)[:, None], size, 1)[:, 0].astype(np.float32)
    pick = rng.integers(0, len(base), n)
    fg, bg = rng.uniform(0, 1, (n, 3, 1, 1)), rng.uniform(0, 0.5, (n, 3, 1, 1))
    a = base[pick][:, None] / 255.0
    x = 255 * (a * fg + (1 - a) * bg) + rng.normal(0, 3, (n, 3, size, size))
    x = np.roll(x, rng.integers(-size // 8, size // 8), axis=3)
    return x.clip(0, 255).astype(np.uint8), d.target[pick].astype(np.int64)


def timed(fn, images_per_call: int, min_seconds: float) -> float:
    """images/s of fn, run until min_seconds have passed (at least once)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += images_per_call
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def candidates(size: int, n: int, args, work: Path) -> tuple[list, dict]:
    """Set up every method on the same images: [(name, fn, images per call)], {compression: bytes per image}."""
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from hvdgan.data import ShardedReader, write_dataset

    x, y = synthetic(n, size)
    B = args.batch_size
    methods, on_disk = [], {}
    per_epoch = n // B * B

    # (b) the ceiling: shuffled batches gathered from an in-memory array
    state = {"epoch": 0}

    def ceiling():
        perm = np.random.default_rng(state["epoch"]).permutation(n)
        state["epoch"] += 1
        for i in range(0, n - B + 1, B):
            torch.from_numpy(x[perm[i:i + B]])

    def slice_copy():
        for i in range(0, n - B + 1, B):
            torch.from_numpy(x[i:i + B].copy())

    methods += [("ceiling", ceiling, per_epoch), ("slice-copy", slice_copy, per_epoch)]

    # HDF5 shards, each compression, streaming and in memory
    for comp in ("none", "gzip", "lzf"):
        root = work / f"h5-{size}-{comp}"
        m = write_dataset(root, x, y, shards=8, compression=comp)
        on_disk[comp] = m.total_bytes / n
        modes = [("", False, True), ("-mem", True, True)] + ([("-h5py", False, False)] if comp == "none" else [])
        for suffix, in_memory, direct in modes:
            r = ShardedReader(root, batch_size=B, in_memory=in_memory, direct=direct)

            def read(r=r, ep=[0]):
                for _ in r.epoch(ep[0] % 4):
                    pass
                ep[0] += 1

            read()  # warm-up: open (and map, or load) the shards; one rank keeps the same shards every epoch
            methods.append((f"h5-{comp}{suffix}", read, r.deal.samples_per_epoch))

    # (a) torchvision ImageFolder over the same images as PNG
    png = work / f"png-{size}"
    for i in range(n):
        d = png / str(int(y[i]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].transpose(1, 2, 0)).save(d / f"{i:06d}.png")
    loader = DataLoader(datasets.ImageFolder(str(png), transform=transforms.PILToTensor()), batch_size=B,
                        shuffle=True, num_workers=0, drop_last=True)

    def imagefolder():
        for _ in loader:
            pass

    methods.append(("imagefolder", imagefolder, len(loader) * B))
    return methods, on_disk


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer 64x64 images, 2 short rounds (~30-40 s)")
    p.add_argument("--smoke", action="store_true",
                   help="1,024 32x32 images, 1 short round; the targets are not judged (tests/test_benchmarks.py)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    args = p.parse_args(argv)
    # both sizes hold 48-96 MB of images: more than the CPU's last-level cache (as any real dataset), so the
    # ceiling is not flattered by a cache-resident array; --quick cuts the 64x64 count, the rounds and their length
    counts = {32: 16384, 64: 4096} if args.quick else {32: 16384, 64: 8192}
    args.min_seconds = 0.2 if args.quick else 0.5
    if args.quick:
        args.repeat = min(args.repeat, 2)
    if args.smoke:
        counts, args.sizes, args.min_seconds, args.repeat = {32: 1024}, [32], 0.0, 1
    torch.set_num_threads(1)
    cpu = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    import h5py

    print(f"# bench_data: {' '.join(sys.argv)}")
    print(f"# python {platform.python_version()}, torch {torch.__version__}, h5py {h5py.__version__} "
          f"(HDF5 {h5py.version.hdf5_version}), numpy {np.__version__}; {platform.processor() or platform.machine()}, "
          f"pinned to CPU {cpu}, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    work = Path(args.work or tempfile.mkdtemp(prefix="hvdgan-bench-"))
    t0 = time.perf_counter()
    ok = True
    try:
        for size in args.sizes:
            n = counts.get(size, 4096)
            methods, on_disk = candidates(size, n, args, work)
            best = {name: 0.0 for name, _, _ in methods}
            for _ in range(args.repeat):  # rounds over all methods: load on the machine hits them alike
                for name, fn, per_call in methods:
                    best[name] = max(best[name], timed(fn, per_call, 0 if name == "imagefolder" else args.min_seconds))
            base, ceil = best["imagefolder"], best["ceiling"]
            print(f"\n## {size}x{size} RGB, {n} images (on disk per image: "
                  + ", ".join(f"{c} {b:,.0f} B" for c, b in on_disk.items()) + f"; raw {3 * size * size:,} B)")
            print(f"{'method':<16}{'images/s':>12}{'x ImageFolder':>15}{'% of ceiling':>14}")
            for name, _, _ in methods:
                v = best[name]
                print(f"{name:<16}{v:>12,.0f}{v / base:>14.1f}x{100 * v / ceil:>13.0f}%")
            h5 = best["h5-none"]
            hit = h5 >= 20 * base and h5 >= 0.5 * ceil
            ok &= hit
            verdict = "not judged (--smoke)" if args.smoke else "met" if hit else "NOT met"
            print(f"target (h5-none, streaming): >= 20x ImageFolder ({h5 / base:.1f}x) and >= 50% of the ceiling "
                  f"({100 * h5 / ceil:.0f}%): {verdict}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n# {time.perf_counter() - t0:.0f} s")
    return 0 if ok or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
