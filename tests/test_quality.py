"""Quality measured honestly (issue 27): a held-out split that evaluation prefers, and mode collapse seen
while training (hvdgan.run.collapse)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import hvdgan
from hvdgan.data import HOLDOUT, open_manifest, read_all
from hvdgan.eval.evaluate import split_of
from hvdgan.errors import HvdganError
from hvdgan.run.collapse import COLLAPSE_FRACTION, CollapseWatch, spread


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    out = tmp_path_factory.mktemp("holdout") / "digits"
    proc = hvdgan("prepare", "digits", out, "--shards", "4", "--holdout", "25%")
    return out, proc.stdout


def rows(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    return sorted(im.tobytes() + bytes([int(y)]) for im, y in zip(images, labels))


def test_holdout_splits_the_source_into_two_datasets_that_together_are_all_of_it(halves, digits):
    out, said = halves
    train, held = open_manifest(out), open_manifest(out / HOLDOUT)
    assert (train.count, held.count) == (1797 - 449, 449) and held.labels == train.labels
    assert "449 held out in holdout/" in train.source and "the 449 of 1,797 images held out" in held.source
    assert f"Held out: 449 images in {out / HOLDOUT}" in said
    a, b, whole = read_all(out), read_all(out / HOLDOUT), read_all(digits)
    assert rows(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])) == rows(*whole[:2])
    assert len(set(np.unique(b[1]))) == 10  # a random choice: every digit is in the held-out half


def test_holdout_is_replaced_with_the_dataset_and_never_left_stale(tmp_path):
    out = tmp_path / "d"
    hvdgan("prepare", "digits", out, "--shards", "2", "--holdout", "100")
    first = read_all(out / HOLDOUT)[0]
    hvdgan("prepare", "digits", out, "--shards", "2", "--holdout", "100", "--seed", "1", "--overwrite")
    assert open_manifest(out / HOLDOUT).count == 100 and not np.array_equal(read_all(out / HOLDOUT)[0], first)
    hvdgan("prepare", "digits", out, "--shards", "2", "--overwrite")  # no --holdout: the old split goes too
    assert open_manifest(out).count == 1797 and not (out / HOLDOUT).exists()


def test_evaluation_takes_the_held_out_split_unless_told(halves, digits):
    out, _ = halves
    assert split_of(out) == ([str(out / HOLDOUT)], "held-out")
    assert split_of(out, "holdout") == ([str(out / HOLDOUT)], "held-out")
    assert split_of(out, "train") == ([str(out)], "training")
    assert split_of(digits) == ([str(digits)], "training")
    for split in ("auto", "holdout", "train"):  # the held-out split named itself (as bench_defaults does)
        assert split_of(out / HOLDOUT, split) == ([str(out / HOLDOUT)], "held-out")
    with pytest.raises(HvdganError, match="has no held-out split"):
        split_of(digits, "holdout")


# ---------------------------------------------------------------------------------------- collapse
def test_spread_is_the_mean_distance_between_different_images():
    x = torch.randn(7, 5, dtype=torch.float64).numpy()
    brute = np.mean([np.linalg.norm(x[i] - x[j]) for i in range(7) for j in range(7) if i != j])
    assert spread(x) == pytest.approx(brute, rel=1e-9) and spread(np.repeat(x[:1], 4, 0)) == pytest.approx(0, abs=1e-6)


@pytest.fixture(scope="module")
def generator_and_reals(digits):
    """A conditional DCGAN G trained 500 steps on the digits (in this process, 1 rank) and 2,048 real digits."""
    from hvdgan.config import build
    from hvdgan.run.loop import Trainer

    cfg = build(dict(data=str(digits), out=str(digits.parent / "collapse-run"), model="dcgan", conditional=True,
                     ngf=16, ndf=16, nz=32, batch_size=32, max_steps=500, sample_every=10**6, log_every=100,
                     checkpoint_every=10**6, tensorboard=False, device="cpu", threads=1))
    trainer = Trainer(cfg)
    trainer.run()
    images, labels = read_all(digits)[:2]
    reals = torch.from_numpy(images[:2048]).float().div(127.5).sub(1)
    return trainer.gan.sample_model().eval(), reals, torch.from_numpy(labels[:2048])


def draw(G, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return G(z, labels)


def test_a_generator_that_ignores_z_is_warned_of_and_a_healthy_one_is_not(generator_and_reals, caplog):
    G, reals, real_labels = generator_and_reals
    names = [str(d) for d in range(10)]
    z = torch.randn(500, G.nz, 1, 1, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(500) % 10
    one_z = z[:1].expand_as(z)  # G ignoring z: every sample of a class is one image
    warned = []

    def check(watch, noise, step, last=False):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hvdgan"):
            out = watch.check(draw(G, noise, labels), labels, step, last)
        warned.append(len(caplog.records))
        return out

    watch = CollapseWatch(reals, real_labels, names)
    early = check(watch, one_z, 100)  # as an untrained G draws: quiet, nothing has fallen yet
    healthy = check(watch, z, 500)
    collapsed = check(watch, one_z, 600)  # fell below, after having been above
    assert early["diversity"] == pytest.approx(0, abs=1e-3) and healthy["diversity"] > COLLAPSE_FRACTION, healthy
    assert collapsed["diversity"] == pytest.approx(0, abs=1e-3) and warned == [0, 0, 1]
    assert "may be collapsing" in caplog.text and f"class {collapsed['diversity_class']}" in caplog.text
    one_class = torch.where((labels == 3)[:, None, None, None], one_z, z)  # one class is enough, and it is named
    assert check(watch, one_class, 700)["diversity_class"] == 3 and warned[-1] == 1 and "class 3" in caplog.text
    check(CollapseWatch(reals, real_labels, names), one_z, 500, last=True)  # never diverse, at the run's end
    check(CollapseWatch(reals, real_labels, names), z, 500, last=True)
    assert warned[-2:] == [1, 0]
