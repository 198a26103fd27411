"""Does class-conditional training condition? A 2-rank `--conditional` run on the embedded digits (the
conditional DCGAN at the demo's widths by default; `--train-options "--model resnet ..."` for the ResNet), then a classifier trained here on the real digits (scikit-learn's logistic regression on 8x8
grey thumbnails, the digits' own resolution) labels samples generated for each class. Chance is 10 %.

    .venv/bin/python benchmarks/bench_conditional.py                   # 2 ranks, ~2 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_conditional.py --train-options "--model resnet --ngf 8 --ndf 8 --nz 32 --batch-size 32"

Prints the classifier's accuracy on held-out real digits (its ceiling), the accuracy on the samples per
class, and the verdict: the samples' accuracy must be far above chance (>= 50 %, target of issue 13).
Also the variety within a class (the per-pixel standard deviation of a class's generated thumbnails over
that of its real ones, averaged over classes; 1 = as varied as the real digits): a generator that ignores
z and draws one digit per class would score 100 % but near 0 here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def thumbnails(images):
    """Images in [-1, 1] [N, 1, 32, 32] -> [N, 64] 8x8 thumbnails (the digits' native size)."""
    import torch.nn.functional as F

    return F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), 8).flatten(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500, help="generator steps")
    ap.add_argument("--np", type=int, default=2, dest="np_")
    ap.add_argument("--per-class", type=int, default=100, help="samples per class to classify")
    ap.add_argument("--train-options", default="--model dcgan --ngf 32 --ndf 32 --nz 64 --batch-size 64",
                    help="extra `hvdgan train` options")
    ap.add_argument("--grid", help="also write the per-class sample grid (one row per class) here")
    args = ap.parse_args()

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from hvdgan.data import read_all
    from hvdgan.prepare import prepare
    from hvdgan.sample import load_generator, sample_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="bench-conditional-"))
    data, out = tmp / "digits", tmp / "run"
    prepare("digits", str(data), shards=4, progress=False)
    bindir = Path(sys.executable).parent
    cmd = [str(bindir / "horovodrun"), "-np", str(args.np_), "-H", f"localhost:{args.np_}", str(bindir / "hvdgan"),
           "train", "--data", str(data), "--out", str(out), "--conditional",
           "--max-steps", str(args.steps), "--sample-every", str(args.steps), "--checkpoint-every", str(args.steps),
           "--log-every", "25", "--no-tensorboard", *args.train_options.split()]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    checkpoint = json.loads((out / "result.json").read_text())["checkpoint"]

    images, labels = read_all(str(data))
    x = thumbnails(torch.from_numpy(images).float().div(127.5).sub(1))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[: len(x) * 4 // 5], order[len(x) * 4 // 5:]
    clf = LogisticRegression(max_iter=2000).fit(x[train], labels[train])
    real_acc = clf.score(x[test], labels[test])

    G = load_generator(checkpoint)
    y = torch.arange(10).repeat_interleave(args.per_class)
    with torch.no_grad():
        fakes = G(torch.randn(len(y), G.nz, 1, 1, generator=torch.Generator().manual_seed(1)), y)
    pred = clf.predict(thumbnails(fakes))
    per_class = [(pred[y.numpy() == k] == k).mean() for k in range(10)]
    acc = float((pred == y.numpy()).mean())
    fake_x = thumbnails(fakes)
    variety = float(np.mean([fake_x[y.numpy() == k].std(0).mean() / x[labels == k].std(0).mean() for k in range(10)]))
    if args.grid:
        sample_checkpoint(checkpoint, args.grid, num=80, overwrite=True)
    print(f"classifier accuracy on held-out real digits: {real_acc:.3f}")
    print("per class on generated digits: " + " ".join(f"{k}:{a:.2f}" for k, a in enumerate(per_class)))
    print(f"accuracy on generated digits (label = the class asked for), {args.steps} steps on {args.np_} ranks: "
          f"{acc:.3f}   chance 0.100   target >= 0.50  {'PASS' if acc >= 0.5 else 'MISS'}")
    print(f"variety within a class (generated / real thumbnails' per-pixel std): {variety:.2f}")


if __name__ == "__main__":
    main()
