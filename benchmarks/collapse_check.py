"""Issue 27's collapse checks, beside bench_defaults.py: where the warning level of hvdgan.run.collapse comes
from, and a real data set beyond the sweep, made as a new user would make one (a folder of PNGs).

    .venv/bin/python benchmarks/collapse_check.py runs /tmp/defaults          # diversity of each sweep run
    .venv/bin/python benchmarks/collapse_check.py textures /tmp/textures
    .venv/bin/python benchmarks/collapse_check.py photographs /tmp/photographs

`runs WORK`: each run's final checkpoint in WORK/runs/SET-SETTING (bench_defaults.py's layout): 512 samples of
its EMA G, the classes in turn, against the training half's first 2,048 images, as the sample step measures
them. `textures OUT`: 32x32 patches every 16 pixels of scikit-image's brick, grass and gravel photographs, at
full and half size, as OUT/<texture>/NNNNN.png (1,186 each), to be split at random by `hvdgan prepare
--holdout` as a user would (bench_defaults' `--set textures` splits them by region instead: quality_sets.py).
`photographs OUT`: the same of scikit-image's colour photographs (astronaut, cat, coffee cup, rocket;
one class each), at half and quarter size (full-size patches are nearly flat): a set no setting was chosen on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's, in colour


def runs(work: Path) -> None:
    import torch

    from hvdgan.data import read_all
    from hvdgan.models.zoo import num_classes
    from hvdgan.run.collapse import CollapseWatch
    from hvdgan.sample import load_generator

    for run in sorted((work / "runs").iterdir()):
        found = sorted(run.glob("checkpoints/ckpt-*.pt"))
        if not found:
            continue
        images, labels = read_all(work / "data" / run.name.split("-")[0])[:2]
        G = load_generator(found[-1], ema=True).eval()
        classes = num_classes(G)
        y = torch.arange(512) % classes if classes else None
        z = torch.randn(512, G.nz, 1, 1, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            fakes = G(z, y) if classes else G(z)
        real = torch.from_numpy(images[:2048]).float().div(127.5).sub(1)
        watch = CollapseWatch(real, torch.from_numpy(labels[:2048]) if classes else None)
        print(f"{run.name}: {found[-1].name}: {watch.check(fakes, y, 1)}", flush=True)


def patch_folders(out: Path, names: tuple[str, ...], scales: tuple[int, ...]) -> None:
    """OUT/<name>/NNNNN.png: 32x32 patches every 16 pixels of skimage.data.<name>() at each downscale."""
    import numpy as np
    import skimage.data
    from PIL import Image

    for name in names:
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        k = 0
        for scale in scales:
            im = image.resize((image.width // scale, image.height // scale), Image.BICUBIC) if scale > 1 else image
            for y in range(0, im.height - 31, 16):
                for x in range(0, im.width - 31, 16):
                    im.crop((x, y, x + 32, y + 32)).save(folder / f"{k:05d}.png")
                    k += 1
        print(f"{folder}: {k} patches")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("runs").add_argument("work", type=Path)
    sub.add_parser("textures").add_argument("out", type=Path)
    sub.add_parser("photographs").add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.what == "runs":
        runs(args.work)
    elif args.what == "textures":
        import quality_sets  # (benchmarks/, this script's folder)

        patch_folders(args.out, quality_sets.TEXTURES, (1, 2))
    else:
        patch_folders(args.out, PHOTOGRAPHS, (2, 4))


if __name__ == "__main__":
    main()
