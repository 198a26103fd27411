"""FID, KID, precision/recall; Inception weights; distributed evaluation; training integration.
One Frechet distance, no deprecated SciPy call."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

import inception_files
from conftest import ROOT, hvdgan, launch, run_env
from hvdgan.eval import features
from hvdgan.eval import inception
from hvdgan.run import runlog as metrics
from hvdgan.eval import parse_metrics, scores
from hvdgan.errors import HvdganError
from hvdgan.run.runlog import read_metrics

WORKER = str(ROOT / "tests" / "eval_worker.py")


# ------------------------------------------------------------------------------- Frechet distance
def test_frechet_distance_closed_forms_and_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    mu, s = scores.gaussian(a)
    assert scores.frechet_distance((mu, s), (mu, s)) == pytest.approx(0, abs=1e-9)
    shift = np.arange(6.0)
    assert scores.frechet_distance((mu, s), (mu + shift, s)) == pytest.approx((shift ** 2).sum(), rel=1e-9)
    d1, d2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)  # diagonal: sum (sqrt d1 - sqrt d2)^2
    assert scores.frechet_distance((mu, np.diag(d1)), (mu, np.diag(d2))) == pytest.approx(
        ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum(), rel=1e-9)
    # against the textbook formula with SciPy's general matrix square root
    b = rng.normal(size=(300, 6)) * 2 + 1
    mu2, s2 = scores.gaussian(b)
    ref = ((mu - mu2) ** 2).sum() + np.trace(s) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s @ s2).real)
    assert scores.frechet_distance((mu, s), (mu2, s2)) == pytest.approx(ref, rel=1e-8)
    # singular covariances (fewer samples than dimensions, as an 8x8 FD on few images) stay finite
    c = rng.normal(size=(5, 64))
    assert np.isfinite(scores.frechet_distance(scores.gaussian(c), scores.gaussian(c + 1)))


def test_one_frechet_distance_without_deprecated_calls():
    """The 8x8 thumbnail FD of the training log is FID's function, and it raises no warning (the old
    scipy.linalg.sqrtm(..., disp=False) is deprecated: an error here)."""
    rng = np.random.default_rng(1)
    imgs = torch.rand(64, 1, 32, 32) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = metrics.frechet_distance(metrics.gaussian(metrics.features8(imgs)),
                                      metrics.gaussian(metrics.features8(imgs * 0.5)))
        scores.frechet_distance(scores.gaussian(rng.normal(size=(3, 8))), scores.gaussian(rng.normal(size=(3, 8))))
    assert fd > 0
    assert metrics.frechet_distance is scores.frechet_distance and metrics.gaussian is scores.gaussian


# --------------------------------------------------------------------------------- KID, precision/recall
def naive_mmd2(x, y):
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_against_the_definition():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 0.5
    mean, std = scores.kid(x, y, subsets=3, subset_size=40)  # whole sets: every subset is a permutation
    assert mean == pytest.approx(naive_mmd2(x, y), rel=1e-10) and std == pytest.approx(0, abs=1e-12)
    mean_s, std_s = scores.kid(x, y, subsets=50, subset_size=20)
    assert std_s > 0 and abs(mean_s - mean) < 3 * std_s
    same, _ = scores.kid(x, rng.normal(size=(40, 5)), subsets=20, subset_size=40)
    assert abs(same) < mean  # unbiased: near 0 for one distribution


def test_precision_recall_against_brute_force():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(120, 4)), rng.normal(size=(90, 4)) * 1.5 + 0.7

    def covered(manifold, probes, k=3):
        radius = NearestNeighbors(n_neighbors=k + 1).fit(manifold).kneighbors(manifold)[0][:, -1]
        d = np.linalg.norm(probes[:, None, :] - manifold[None, :, :], axis=2)
        return (d <= radius[None, :]).any(1).mean()

    p, r = scores.precision_recall(real, fake, k=3, batch=32)
    assert p == pytest.approx(covered(real, fake), abs=1e-9) and r == pytest.approx(covered(fake, real), abs=1e-9)
    assert 0 < p < 1 and 0 < r < 1
    assert scores.precision_recall(real, real) == (1.0, 1.0)
    assert scores.precision_recall(real, real + 100) == (0.0, 0.0)
    with pytest.raises(HvdganError, match="fid, kid, pr"):
        parse_metrics("fid,is")


# ------------------------------------------------------------------------------------ Inception file
def test_tf1_bilinear_resize_matches_its_definition():
    """Output pixel j samples the input at j * in / out (TF1 resize_bilinear, align_corners=False)."""
    x = torch.rand(1, 1, 5, 7, dtype=torch.float64)
    out = inception.tf_bilinear(x, 11)[0, 0]

    def ref(i, j):
        def taps(pos, n):
            lo = min(int(np.floor(pos)), n - 1)
            return lo, min(lo + 1, n - 1), pos - np.floor(pos)
        (y0, y1, fy), (x0, x1, fx) = taps(i * 5 / 11, 5), taps(j * 7 / 11, 7)
        img = x[0, 0]
        top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
        bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
        return top * (1 - fy) + bottom * fy

    expect = torch.tensor([[ref(i, j) for j in range(11)] for i in range(11)], dtype=torch.float64)
    assert torch.allclose(out, expect, atol=1e-6)


def test_missing_or_wrong_weights_give_one_clear_error(tmp_path, digits, monkeypatch):
    with pytest.raises(HvdganError, match=r"nope\.pt: Inception weights not found.*scripts/setup\.sh"):
        inception.InceptionFeatures(tmp_path / "nope.pt")
    damaged = tmp_path / "default_1.pt"
    damaged.write_bytes(b"\0" * 1000)
    with pytest.raises(HvdganError, match=r"default_1\.pt: SHA-1 .* damaged.*scripts/setup\.sh"):
        inception.InceptionFeatures(damaged)
    state_dict = tmp_path / "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's name, other keys
    torch.save({"conv.weight": torch.zeros(2)}, state_dict)
    with pytest.raises(HvdganError, match=r"6726825d\.pth: a state dict, but not the FID Inception of pytorch-fid / "
                       r"torch-fidelity .*expected 470 tensors .*missing: Conv2d_1a_3x3\.conv\.weight.*\(470\)"
                       r".*unexpected: conv\.weight \(1\).*scripts/setup\.sh"):
        inception.InceptionFeatures(state_dict)
    import torchvision  # torchvision's own (ImageNet) Inception layout: same names, plus AuxLogits and 1000 classes

    imagenet = tmp_path / "inception_v3_google.pth"
    torch.save(torchvision.models.inception_v3(weights=None, init_weights=False).state_dict(), imagenet)
    with pytest.raises(HvdganError, match=r"unexpected: AuxLogits\..*shape: fc\.weight \(1000, 2048\) "
                                          r"\(not \(1008, 2048\)\)"):
        inception.InceptionFeatures(imagenet)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(HvdganError, match=r"list\.pth: a torch\.save file but not a state dict of tensors"):
        inception.InceptionFeatures(not_a_dict)
    with monkeypatch.context() as m:  # a state dict, but the pytorch-fid package missing (an old environment)
        m.setitem(sys.modules, "pytorch_fid", None)
        with pytest.raises(HvdganError, match=r"6726825d\.pth: a state dict .* needs the pytorch-fid package"):
            inception.InceptionFeatures(state_dict)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(HvdganError, match=r"garbage\.pth: neither a TorchScript network nor a state dict"):
        inception.InceptionFeatures(garbage)
    other = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(other))
    with pytest.raises(HvdganError, match="TorchScript network hvdgan does not know"):
        inception.InceptionFeatures(other)
    # through the CLI: one line, non-zero exit, naming the file
    proc = hvdgan("evaluate", "--real", digits, "--real", digits, "--inception", tmp_path / "nope.pt", check=False)
    assert proc.returncode == 2 and "nope.pt: Inception weights not found" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = hvdgan("evaluate", "--real", digits, "--real", digits, "--inception", state_dict, check=False)
    assert proc.returncode == 2 and "6726825d.pth: a state dict, but not the FID Inception" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    bad = hvdgan("evaluate", "--real", digits, check=False)
    assert bad.returncode != 0 and "--real DIR_A --real DIR_B" in bad.stderr


# ----------------------------------------------------------------------------- cache, distributed
def test_reference_features_are_cached_and_invalidated(digits, tmp_path):
    from eval_worker import TinyFeatures

    data = tmp_path / "digits"
    shutil.copytree(digits, data, ignore=shutil.ignore_patterns(features.CACHE_DIR))
    calls = []

    class Counting(TinyFeatures):
        def __call__(self, images):
            calls.append(len(images))
            return super().__call__(images)

    ex = Counting()
    first = features.dataset_features(data, ex, limit=200, progress=False)
    assert sum(calls) == 200 and len(list((data / features.CACHE_DIR).glob("features-*.npz"))) == 1
    again = features.dataset_features(data, ex, limit=200, progress=False)
    assert sum(calls) == 200 and np.array_equal(first, again)  # from the cache
    features.dataset_features(data, ex, limit=100, progress=False)
    assert sum(calls) == 300  # another count: another entry
    shard = sorted(data.glob("shard-*.h5"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # a shard changed
    features.dataset_features(data, ex, limit=200, progress=False)
    assert sum(calls) == 500
    # the dataset re-prepared (other shuffle): the manifest's checksums change, so does the key
    hvdgan("prepare", "digits", data, "--shards", "4", "--seed", "5", "--overwrite")
    changed = features.dataset_features(data, ex, limit=200, progress=False)
    assert sum(calls) == 700 and not np.array_equal(first, changed)


@pytest.mark.mp
def test_two_ranks_equal_one_process(digits, tmp_path):
    """Shares, allgather order, the EMA broadcast from rank 0 and the scores: 2 ranks == 1 process."""
    one, two = str(tmp_path / "one.json"), str(tmp_path / "two.json")
    launch("gloo", [sys.executable, WORKER, str(digits), two], np=2, timeout=240)
    subprocess.run([sys.executable, WORKER, str(digits), one], check=True, env=run_env(), timeout=240)
    a, b = json.loads(open(one).read()), json.loads(open(two).read())
    assert (a["size"], b["size"]) == (1, 2)
    np.testing.assert_allclose(np.load(one + ".real.npy"), np.load(two + ".real.npy"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(one + ".fake.npy"), np.load(two + ".fake.npy"), rtol=0, atol=1e-6)
    for key in ("fid", "kid", "kid_std", "precision", "recall"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5, abs=1e-7), key


# -------------------------------------------------------------- with the bundled Inception network
REAL_NUM = 64  # reference images of the tests below: their features are computed once per session


def bundled_inception():
    path = inception.resolve()
    if not path.is_file():
        if os.environ.get("HVDGAN_INCEPTION_FETCH") == "0":
            pytest.skip(f"{path}: not fetched (HVDGAN_INCEPTION_FETCH=0)")
        pytest.fail(f"{path}: missing; scripts/setup.sh fetches it")
    return path


@pytest.mark.mp
@pytest.mark.slow
def test_training_evaluates_keeps_the_best_and_evaluate_agrees(tmp_path):
    """2 ranks train with --eval-every on data with a held-out split: FID, precision and recall lines in
    metrics.jsonl, measured against the held-out images, ckpt-best.pt at the lowest FID; then hvdgan
    evaluate of ckpt-best.pt, alone and on 2 ranks, gives the FID the run logged for it."""
    bundled_inception()
    from conftest import HVDGAN

    data, out = tmp_path / "digits", tmp_path / "run"
    hvdgan("prepare", "digits", data, "--shards", "4", "--holdout", "300")
    proc = launch("gloo", [HVDGAN, "train", "--data", str(data), "--out", str(out), "--ngf", "8", "--ndf", "8",
                           "--batch-size", "16", "--max-steps", "4", "--log-every", "2", "--sample-every", "100",
                           "--checkpoint-every", "100", "--no-tensorboard", "--eval-every", "2", "--eval-num", "12",
                           "--eval-real-num", str(REAL_NUM), "--eval-metrics", "fid,kid,pr"], timeout=600)
    assert f"--eval-every 2: against {data / 'holdout'}, the held-out split" in proc.stdout + proc.stderr
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "fid" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(r["fid"] > 0 and {"kid", "kid_std", "precision", "recall"} <= set(r) and r["eval_seconds"] > 0
               for r in evals)
    quality = json.loads((out / "result.json").read_text())["quality"]
    assert {k: quality[k] for k in ("fid", "precision", "recall")} == {k: evals[-1][k] for k in ("fid", "precision",
                                                                                                    "recall")}
    best = min(evals, key=lambda r: r["fid"])
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["ckpt-00000004.pt", "ckpt-best.pt"]
    state = torch.load(out / "checkpoints" / "ckpt-best.pt", weights_only=False)
    assert state["step"] == best["step"] and state["best_fid"] == pytest.approx(best["fid"])

    target = out / "checkpoints" / "ckpt-best.pt"
    args = ["evaluate", str(target), "-n", "12", "--real-num", str(REAL_NUM), "--metrics", "fid"]
    one = json.loads(hvdgan(*args, timeout=600).stdout)
    launch("gloo", [HVDGAN, *args, "--out", str(tmp_path / "two.json")], timeout=600)
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["real_count"] == REAL_NUM
    assert (one["split"], one["real"]) == ("held-out", str(data / "holdout")) and two["split"] == "held-out"
    assert one["features"]["format"] == "fid-helper" and one["features"]["sha1"] == inception.BUNDLED_SHA1
    assert two["metrics"]["fid"] == pytest.approx(one["metrics"]["fid"], rel=1e-5)
    assert one["metrics"]["fid"] == pytest.approx(best["fid"], rel=1e-4)  # the run's EMA, noise and reals


@pytest.mark.slow
def test_bundled_inception_digits_halves_close_noise_far(digits):
    """The network as inspected: [N, 2048] features >= 0 of 299x299 inputs; FID of the digits split in
    halves is small, against noise large (small N: FID is biased upwards, so only the ratio is tested)."""
    net = inception.InceptionFeatures(bundled_inception())
    assert net.kind == "fid-helper"
    feats = features.dataset_features(digits, net, limit=REAL_NUM, progress=False)
    assert feats.shape == (REAL_NUM, 2048) and np.isfinite(feats).all() and feats.min() >= 0
    noise = torch.randint(0, 256, (32, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    noise_feats = net(noise).numpy()
    half = REAL_NUM // 2
    halves = scores.frechet_distance(scores.gaussian(feats[:half]), scores.gaussian(feats[half:]))
    vs_noise = scores.frechet_distance(scores.gaussian(feats[:half]), scores.gaussian(noise_feats))
    assert vs_noise > 4 * halves, (halves, vs_noise)
    assert scores.precision_recall(feats[:half], noise_feats) == (0.0, 0.0)


# ------------------------------------------- the other weights files, made from the bundled network's weights
AGREE_NUM = 16  # digits images whose features are compared (Inception on this CPU: a few images/s)


@pytest.fixture(scope="module")
def bundled_features(digits):
    """default_1.pt, the first AGREE_NUM digits images (uint8, grey) and their features by the bundled path."""
    from hvdgan.data import open_manifest

    path = bundled_inception()
    images = features.read_rows(open_manifest(digits), 0, AGREE_NUM)
    return path, images, inception.InceptionFeatures(path)(images).numpy()


def agreement(feats, ref):
    """(max |a - b| / mean |ref|, FID between the two sets), as docs/evaluation.md reports them."""
    rel = float(np.abs(feats - ref).max() / np.abs(ref).mean())
    return rel, scores.frechet_distance(scores.gaussian(feats), scores.gaussian(ref))


@pytest.mark.slow
def test_pytorch_fid_state_dict_gives_the_bundled_features(digits, tmp_path, monkeypatch, bundled_features):
    """default_1.pt's weights renamed into pytorch-fid's / torch-fidelity's layout (tests/inception_files.py),
    saved as pt_inception-2015-12-05-6726825d.pth in torch.save's legacy format (as that 2019 file), read by
    `hvdgan evaluate --inception` through pytorch-fid's network: the features are the bundled network's.
    Measured: max |diff| 1.2e-6 = 4e-6 of the mean |feature| (0.29), FID 0 (round-off; the digits split in
    halves: 150). The smallest protocol slip, pytorch-fid's own 2x/255 - 1 range instead of TF's, changes
    them by 8.6e-2 and the bilinear resize with half-pixel centres by 2.0: the tolerance, 1e-4, is far below."""
    default_1, images, ref = bundled_features
    state = inception_files.pytorch_fid_state_dict(default_1)
    pth = tmp_path / inception.PYTORCH_FID
    torch.save(state, pth, _use_new_zipfile_serialization=False)
    data = tmp_path / "digits"  # a copy: its eval-cache/ then holds only this network's features
    shutil.copytree(digits, data, ignore=shutil.ignore_patterns(features.CACHE_DIR))
    out = json.loads(hvdgan("evaluate", "--real", data, "--real", data, "--real-num", AGREE_NUM,
                            "--inception", pth).stdout)
    assert out["features"]["format"] == "pytorch-fid" and out["features"]["sha1"] == inception.sha1_file(pth)
    assert out["metrics"]["fid"] == pytest.approx(0, abs=1e-6)  # one set against itself
    [cached] = (data / features.CACHE_DIR).glob("features-*.npz")  # what --inception PTH computed
    with np.load(cached) as z:
        feats = z["features"]
    rel, fid = agreement(feats, ref)
    assert rel < 1e-4 and fid < 1e-4, (rel, fid)
    # the zip format of torch.save, without fc or the batch norms' counters, found through $HVDGAN_INCEPTION
    lean = {k: v for k, v in state.items() if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))}
    torch.save(lean, tmp_path / "lean.pth")
    monkeypatch.setenv(inception.ENV, str(tmp_path / "lean.pth"))
    net = inception.InceptionFeatures()
    assert (net.kind, net.describe()["format"]) == ("pytorch-fid", "pytorch-fid") and net.key.startswith("pytorch-fid-")
    assert agreement(net(images[:2]).numpy(), ref[:2])[0] < 1e-4


@pytest.mark.slow
def test_nvlabs_detector_gives_the_bundled_features(tmp_path, bundled_features):
    """A TorchScript module with NVlabs' calling convention and pre-processing (forward(img, return_features),
    0..255 values of any size, TF1 bilinear resize to 299 and (x - 128) / 128 inside) around default_1.pt's
    own layers (tests/inception_files.py), saved with torch.jit.save and read as --inception: hvdgan calls it
    as NVlabs' file. Measured: max |diff| 6.2e-6 = 2.1e-5 of the mean |feature|, FID 0; all of it from the
    order of resize and scaling (0..255 then (x - 128) / 128, against hvdgan's x / 255 then the TF range):
    the same layers fed hvdgan's input give the same difference. Tolerance 5e-4 (the range slip: 8.6e-2)."""
    default_1, images, ref = bundled_features
    path = tmp_path / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.14
        inception_files.nvlabs_detector(default_1).save(str(path))
    net = inception.InceptionFeatures(path)
    assert net.kind == "nvlabs" and net.key.startswith("nvlabs-")
    rel, fid = agreement(net(images).numpy(), ref)
    assert rel < 5e-4 and fid < 1e-4, (rel, fid)
    probs = net.net(images[:2].expand(-1, 3, -1, -1).float())  # its other output: class probabilities
    assert probs.shape == (2, 1008) and torch.allclose(probs.sum(1), torch.ones(2))
