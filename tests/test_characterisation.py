"""Characterisation: the training results of fixed-seed CPU runs, to the bit.

Each case trains a small run and compares, against tests/data/characterisation-<CPU>.json, every logged
statistic that does not depend on time (losses, D(x), D(G(z)), the 8x8 Frechet distance) and a digest
of the final checkpoint's tensors (G, D, G's EMA, both optimizers) and data position. A change that
moves any of them changed what hvdgan computes; a refactor must leave them as they are.

CPU kernels differ between instruction sets (torch's CPU capability: AVX2, AVX512), and a GAN's steps
amplify their rounding (0.2% in D's loss after 8 steps), so each capability has its own reference, all
recorded on 70320e4 (the code before the refactor; AVX2's on an AMD EPYC, later than AVX512's). On a
capability with no reference, the statistics are compared with AVX512's to 1e-2 and the digests not at all.

Re-record (only for a change that is meant to change the numbers, said in its commit message), on a
machine of each capability:

    .venv/bin/python tests/test_characterisation.py --record
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, hvdgan, launch  # noqa: E402

REFERENCES = ROOT / "tests" / "data"
FALLBACK = "AVX512"  # (the reference where this capability has none)
OLD_CHECKPOINT = ROOT / "tests" / "data" / "ckpt-70320e4-step4.pt"  # written by hvdgan 70320e4
STATS = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_after", "fd8")
# the demo job as it was when the references were recorded (no mode seeking then): its tuning may move, this
# may not
DEMO = ["--job", "jobs/digits-demo.yaml", "--max-steps", "16", "--log-every", "4", "--sample-every", "8",
        "--checkpoint-every", "8", "--no-tensorboard", "--lr-g", "6e-4", "--mode-seeking", "0"]
TINY = ["--nz", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--log-every", "2", "--sample-every", "4",
        "--checkpoint-every", "4", "--no-tensorboard"]

# name -> (ranks, arguments after `train --data DATA --out OUT`); a resume case lists its two runs
CASES = {
    "demo-np1": (1, [DEMO]),
    "demo-np2-gloo": (2, [DEMO]),
    "resnet-augment-r1": (1, [["--model", "resnet", "--ngf", "16", "--ndf", "16", "--batch-size", "8",
                               "--augment", "translation,cutout,color", "--r1", "1", "--r1-every", "2",
                               "--max-steps", "6", "--log-every", "2", "--sample-every", "6",
                               "--checkpoint-every", "6", "--no-tensorboard"]]),
    "conditional-syncbn-np2-gloo": (2, [["--conditional", "--sync-bn", *TINY, "--max-steps", "8"]]),
    "demo-resumed-at-8": (1, [[*DEMO[:2], *DEMO[4:], "--max-steps", "8"],
                              [*DEMO, "--resume", "auto"]]),
    "tiny-resumed-from-70320e4": (1, [[*TINY, "--max-steps", "8", "--resume", "CKPT"]]),
}


def canonical(obj, h) -> None:
    """Feed `obj` (nested dicts, lists, tensors, numbers) to the hash `h` in a fixed order."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            canonical(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            canonical(v, h)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def checkpoint_digest(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=False)
    h = hashlib.sha256()
    for key in ("G", "D", "G_ema", "opt_g", "opt_d", "step", "epoch", "batch", "d_updates", "rng"):
        h.update(key.encode())
        canonical(state[key], h)
    return h.hexdigest()


def read_stats(out: Path) -> list[dict]:
    """Every metrics.jsonl record's time-independent statistics, in order."""
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        kept = {k: record[k] for k in ("step", *STATS) if k in record}
        if len(kept) > 1:
            rows.append(kept)
    return rows


def run_case(name: str, data: Path, work: Path) -> dict:
    ranks, runs = CASES[name]
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    for args in runs:
        args = [str(OLD_CHECKPOINT) if a == "CKPT" else a for a in args]
        argv = ["train", "--data", str(data), "--out", str(out), *args]
        if ranks == 1:
            hvdgan(*argv, cwd=ROOT, timeout=300)
        else:
            launch("gloo", [str(Path(sys.executable).parent / "hvdgan"), *argv], np=ranks, cwd=ROOT, timeout=300)
    newest = max((out / "checkpoints").glob("ckpt-0*.pt"))
    return {"stats": read_stats(out), "checkpoint": newest.name, "digest": checkpoint_digest(newest)}


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def reference_path(capability: str) -> Path:
    return REFERENCES / f"characterisation-{capability}.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    path = reference_path(cpu_capability())
    return json.loads((path if path.exists() else reference_path(FALLBACK)).read_text())


@pytest.mark.mp
@pytest.mark.parametrize("name", list(CASES))
def test_training_results_unchanged(name, reference, digits, tmp_path):
    got = run_case(name, digits, tmp_path)
    want = reference["cases"][name]
    assert got["checkpoint"] == want["checkpoint"]
    assert [r["step"] for r in got["stats"]] == [r["step"] for r in want["stats"]]
    if cpu_capability() == reference["cpu_capability"]:
        assert got["stats"] == want["stats"]
        assert got["digest"] == want["digest"], "the final checkpoint's tensors changed"
    else:  # an instruction set with no reference: other rounding, the same computation
        for g, w in zip(got["stats"], want["stats"]):
            assert g == pytest.approx(w, rel=1e-2, abs=1e-4), (g, w)


@pytest.mark.parametrize("path", sorted(REFERENCES.glob("characterisation-*.json")), ids=lambda p: p.stem)
def test_resume_in_the_middle_is_the_straight_run(path):
    cases = json.loads(path.read_text())["cases"]
    assert cases["demo-resumed-at-8"]["digest"] == cases["demo-np1"]["digest"]
    assert cases["demo-resumed-at-8"]["stats"] == cases["demo-np1"]["stats"]


def record() -> None:
    """Write the reference from this checkout (see the module's docstring)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="characterisation-"))
    data = work / "digits"
    hvdgan("prepare", "digits", data, "--shards", "4")
    if not OLD_CHECKPOINT.exists():  # the resume-from-an-old-checkpoint case's starting point
        out = work / "old"
        hvdgan("train", "--data", data, "--out", out, *TINY, "--max-steps", "4", cwd=ROOT)
        OLD_CHECKPOINT.parent.mkdir(exist_ok=True)
        shutil.copyfile(out / "checkpoints" / "ckpt-00000004.pt", OLD_CHECKPOINT)
    cases = {}
    for name in CASES:
        cases[name] = run_case(name, data, work)
        print(name, cases[name]["checkpoint"], cases[name]["digest"][:16], flush=True)
    reference = {"cpu_capability": cpu_capability(), "torch": torch.__version__, "cases": cases}
    reference_path(cpu_capability()).write_text(json.dumps(reference, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit(__doc__)
    record()
