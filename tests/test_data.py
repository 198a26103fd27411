"""Sharded HDF5 datasets: format, writer, sources, checker, reader. Real files, no mocks; small data."""

from __future__ import annotations

import io
import json
import multiprocessing
import pickle
import re
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import hvdgan
from hvdgan import data
from hvdgan.cli import main
from hvdgan.data import ShardedReader, cifar, open_manifest, read_all, sources, to_float, write_dataset
from hvdgan.errors import HvdganError
from hvdgan.prepare import prepare


# ------------------------------------------------------------------------------------------ helpers
def make_images(n: int, c: int = 1, s: int = 32, seed: int = 0) -> np.ndarray:
    """Random images whose first two bytes carry the image's id (see ids())."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)
    i = np.arange(n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = i % 256, i // 256
    return x


def ids(images) -> np.ndarray:
    x = images.numpy() if isinstance(images, torch.Tensor) else images
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)


def epoch_ids(reader: ShardedReader, epoch: int, start_batch: int = 0) -> list[np.ndarray]:
    return [ids(x) for x, _ in reader.epoch(epoch, start_batch)]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def small(tmp_path):
    """160 labelled 32x32 grey images in 4 uncompressed shards of 40."""
    x = make_images(160)
    y = np.arange(160) % 10
    root = tmp_path / "small"
    write_dataset(root, x, y, shards=4)
    return root, x, y


def rewrite_shard(root: Path, i: int, images: np.ndarray, labels=None):
    """Replace shard i by hand (h5py) and fix the manifest's size and checksum, so only the content disagrees."""
    m = open_manifest(root)
    path = m.shard_path(i)
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        labels = f["labels"][:] if labels is None and "labels" in f else labels
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
        if labels is not None:
            f.create_dataset("labels", data=labels)
        f.attrs.update(attrs)
    doc = json.loads(m.path.read_text())
    doc["shards"][i].update(bytes=path.stat().st_size, sha256=data.sha256_file(path))
    m.path.write_text(json.dumps(doc))


def edit_manifest(root: Path, fn):
    p = root / "manifest.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


# ------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("compression", ["none", "gzip", "lzf"])
def test_round_trip(tmp_path, compression):
    x, y = make_images(300, c=3), np.arange(300) % 7
    m = write_dataset(tmp_path / "d", x, y, shards=3, compression=compression, label_names=list("abcdefg"))
    assert (m.count, m.channels, m.height, m.width, m.labels) == (300, 3, 32, 32, list("abcdefg"))
    m2 = open_manifest(tmp_path / "d")
    assert [s.file for s in m2.shards] == [f"shard-0000{i}-of-00003.h5" for i in range(3)]
    assert m2.compression == compression and m2.shards == m.shards
    with h5py.File(m2.shard_path(0)) as f:
        d = f["images"]
        assert d.dtype == np.uint8 and d.shape == (100, 3, 32, 32) and d.chunks == (100, 3, 32, 32)
        assert d.compression == (None if compression == "none" else compression)
        assert f.attrs["layout"] == "NCHW" and f.attrs["shards"] == 3
    images, labels = read_all(tmp_path / "d")
    assert np.array_equal(images, x) and np.array_equal(labels, y)
    for in_memory in (True, False):
        r = ShardedReader(tmp_path / "d", batch_size=20, in_memory=in_memory, shuffle_window=64)
        assert r.batches_per_epoch == 15
        if not in_memory:  # uncompressed: gathered from the mapped chunks; compressed: read through HDF5
            assert (r._view(0) is not None) == (compression == "none")
        seen = []
        for imgs, labs in r.epoch(0):
            assert imgs.dtype == torch.uint8 and imgs.shape == (20, 3, 32, 32) and imgs.is_contiguous()
            assert labs.dtype == torch.int64 and labs.shape == (20,)
            i = ids(imgs)
            assert np.array_equal(imgs.numpy(), x[i]) and np.array_equal(labs.numpy(), y[i])
            seen.append(i)
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(300))


def test_unlabelled_and_chunking(tmp_path):
    x = make_images(1000, c=3)
    m = write_dataset(tmp_path / "d", x, None, shards=2)
    assert m.labels is None and m.chunk_rows == 256  # 256 images of 3 KiB: a 768 KiB chunk
    with h5py.File(m.shard_path(0)) as f:
        assert f["images"].chunks == (256, 3, 32, 32) and "labels" not in f
    r = ShardedReader(tmp_path / "d", batch_size=100)
    batches = list(r.epoch(0))
    assert len(batches) == 10 and all(lab is None for _, lab in batches)
    assert data.chunk_rows_for(3, 64, 64) == 64
    # uncompressed shards with a partial last chunk and labels: the chunks still lie in order (mapped reads)
    x, y = make_images(1100, c=3), np.arange(1100) % 10
    write_dataset(tmp_path / "l", x, y, shards=2)
    r = ShardedReader(tmp_path / "l", batch_size=50, in_memory=False)
    assert r._view(0) is not None and np.array_equal(r._view(1), x[550:])
    for imgs, labs in r.epoch(0):
        assert np.array_equal(imgs.numpy(), x[ids(imgs)]) and np.array_equal(labs.numpy(), y[ids(imgs)])


def test_to_float():
    x = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    y = to_float(x, "cpu")
    assert y.dtype == torch.float32 and torch.allclose(y.flatten(), torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))


# ------------------------------------------------------------------------------------------ sources
def test_prepare_npy_and_npz(tmp_path):
    x = make_images(50, c=3)
    np.save(tmp_path / "x.npy", x.transpose(0, 2, 3, 1))  # channels-last on disk
    r = cli("prepare", tmp_path / "x.npy", tmp_path / "a", "--shards", 3)
    assert r.exit_code == 0, r.output
    assert "Wrote 50 images (32x32, 3 channels" in r.output and "3 shards" in r.output
    images, labels = read_all(tmp_path / "a")
    assert np.array_equal(images, x) and labels is None

    y = np.arange(50) % 3
    np.savez(tmp_path / "x.npz", images=x, labels=y, label_names=np.array(["cat", "dog", "eel"]))
    r = cli("prepare", tmp_path / "x.npz", tmp_path / "b", "--per-shard", 16, "--channels", 1, "--compression", "lzf")
    assert r.exit_code == 0, r.output
    m = open_manifest(tmp_path / "b")
    assert [s.count for s in m.shards] == [16, 16, 16, 2] and m.labels == ["cat", "dog", "eel"]
    images, labels = read_all(tmp_path / "b")
    assert np.array_equal(images, sources.fit(x, 32, 1)) and np.array_equal(labels, y)


def test_prepare_image_folder(tmp_path):
    from PIL import Image

    x = make_images(6, c=3)
    root = tmp_path / "folder"
    for k, (cls, j) in enumerate([("ant", 0), ("ant", 1), ("bee", 2), ("bee", 3), ("bee", 4), ("cow", 5)]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[j].transpose(1, 2, 0)).save(root / cls / f"{j}.png")
    Image.new("RGB", (48, 40), (200, 10, 10)).save(root / "cow" / "z.jpg")  # not square: crop + resize
    r = cli("prepare", root, tmp_path / "d", "--shards", 2)
    assert r.exit_code == 0, r.output
    m = open_manifest(tmp_path / "d")
    assert m.count == 7 and m.labels == ["ant", "bee", "cow"] and (m.height, m.channels) == (32, 3)
    images, labels = read_all(tmp_path / "d")
    assert np.array_equal(images[:6], x) and labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert np.abs(images[6].astype(int) - [[[200]], [[10]], [[10]]]).max() <= 3
    r = cli("prepare", root, tmp_path / "g", "--size", 64, "--channels", 1)
    assert r.exit_code == 0, r.output
    images, _ = read_all(tmp_path / "g")
    assert images.shape == (7, 1, 64, 64)


def write_cifar(dest: Path, per_batch: int = 4, archive: bool = True):
    """A small CIFAR-10 in the real python format: Python-2 style pickles with bytes keys."""
    rng = np.random.default_rng(1)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    files, all_x, all_y = {}, [], []
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        doc = {b"batch_label": f"batch {b}".encode(), b"labels": y, b"data": x,
               b"filenames": [f"img{b}_{i}.png".encode() for i in range(per_batch)]}
        files[name] = pickle.dumps(doc, protocol=2)
        if name != "test_batch":
            all_x.append(x)
            all_y += y
    files["batches.meta"] = pickle.dumps({b"num_cases_per_batch": per_batch, b"label_names": names,
                                          b"num_vis": 3072}, protocol=2)
    if archive:
        with tarfile.open(dest, "w:gz") as tar:
            for name, blob in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (dest / "cifar-10-batches-py").mkdir(parents=True)
        for name, blob in files.items():
            (dest / "cifar-10-batches-py" / name).write_bytes(blob)
    return np.concatenate(all_x).reshape(-1, 3, 32, 32), np.array(all_y), [n.decode() for n in names]


def test_prepare_cifar_archive_and_folder(tmp_path):
    x, y, names = write_cifar(tmp_path / "cifar-10-python.tar.gz")
    r = cli("prepare", tmp_path / "cifar-10-python.tar.gz", tmp_path / "a", "--shards", 4, "--verify")
    assert r.exit_code == 0, r.output
    assert "Verified" in r.output
    m = open_manifest(tmp_path / "a")
    assert m.count == 20 and m.labels == names and (m.channels, m.height) == (3, 32)
    images, labels = read_all(tmp_path / "a")
    assert np.array_equal(images, x) and np.array_equal(labels, y)

    (tmp_path / "ex").mkdir()
    x2, y2, _ = write_cifar(tmp_path / "ex", archive=False)
    r = cli("prepare", tmp_path / "ex", tmp_path / "b", "--shards", 2, "--size", 64)
    assert r.exit_code == 0, r.output
    images, labels = read_all(tmp_path / "b")
    assert images.shape == (20, 3, 64, 64) and np.array_equal(labels, y2)
    assert np.array_equal(images, sources.fit(x2, 64, 3))

    # a pickle that would run code is refused
    evil = tmp_path / "evil"
    (evil / "cifar-10-batches-py").mkdir(parents=True)
    for n in list(cifar.CIFAR_TRAIN) + ["batches.meta"]:
        (evil / "cifar-10-batches-py" / n).write_bytes(pickle.dumps(print))
    r = cli("prepare", evil, tmp_path / "c")
    assert r.exit_code == 2 and "data_batch_1: not a CIFAR-10 python batch" in r.output


def test_prepare_digits(tmp_path):
    r = cli("prepare", "digits", tmp_path / "digits")
    assert r.exit_code == 0, r.output
    assert "Wrote 1,797 images (32x32, 1 channel" in r.output and "10 classes" in r.output
    m = open_manifest(tmp_path / "digits")
    assert (m.count, m.channels, m.height, m.width, len(m.shards)) == (1797, 1, 32, 32, 16)
    assert m.labels == [str(d) for d in range(10)]
    images, labels = read_all(tmp_path / "digits")
    from sklearn.datasets import load_digits

    d = load_digits()
    assert np.array_equal(labels, d.target)
    raw = np.round(d.images * 255 / 16).astype(np.uint8)[:, None]
    assert np.array_equal(images, sources.fit(raw, 32, 1))
    assert images.mean() > 20 and images.max() == 255  # real strokes, not blank
    r = cli("prepare", "digits", tmp_path / "rgb", "--channels", 3, "--shards", 2)
    assert r.exit_code == 0, r.output
    assert open_manifest(tmp_path / "rgb").channels == 3
    assert cli("data", "check", tmp_path / "rgb").exit_code == 0


def test_workers_write_identical_shards(tmp_path):
    x, y = make_images(400, c=3), np.arange(400) % 10
    a = write_dataset(tmp_path / "a", x, y, shards=4, compression="gzip")
    b = write_dataset(tmp_path / "b", x, y, shards=4, compression="gzip", workers=2)  # workers get the arrays
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    np.save(tmp_path / "x.npy", x)
    prepare(str(tmp_path / "x.npy"), str(tmp_path / "c"), shards=3, size=64, progress=False)
    summary = prepare(str(tmp_path / "x.npy"), str(tmp_path / "d"), shards=3, size=64, workers=2,
                           progress=False)  # workers read (and resize) the file themselves
    assert "with 2 processes" in summary
    c, d = open_manifest(tmp_path / "c"), open_manifest(tmp_path / "d")
    assert [s.sha256 for s in c.shards] == [s.sha256 for s in d.shards] and c.height == 64


# ------------------------------------------------------------------------------------- bad inputs
def reader_error(root, **kw) -> str:
    with pytest.raises(HvdganError) as e:
        r = ShardedReader(root, batch_size=kw.pop("batch_size", 16), **kw)
        for _ in r.epoch(0):
            pass
    return e.value.message


def test_missing_shard(small):
    root, _, _ = small
    (root / "shard-00002-of-00004.h5").unlink()
    msg = reader_error(root)
    assert "shard-00002-of-00004.h5: missing" in msg and "--overwrite" in msg
    problems, _ = data.check_dataset(root)
    assert len(problems) == 1 and "shard-00002-of-00004.h5: missing" in problems[0]


def test_truncated_shard(small):
    root, _, _ = small
    p = root / "shard-00001-of-00004.h5"
    p.write_bytes(p.read_bytes()[:5000])
    assert "shard-00001-of-00004.h5: 5000 bytes but manifest.json says" in reader_error(root)
    assert "truncated" in data.check_dataset(root)[0][0]


def test_corrupt_header(small):
    root, _, _ = small
    p = root / "shard-00003-of-00004.h5"
    blob = bytearray(p.read_bytes())
    blob[:512] = b"\x00" * 512
    p.write_bytes(bytes(blob))
    assert "shard-00003-of-00004.h5: not a readable HDF5 file" in reader_error(root)
    problems, _ = data.check_dataset(root)
    assert any("sha256" in q for q in problems) and any("not a readable HDF5" in q for q in problems)


def test_checksum_mismatch(small, tmp_path):
    root, _, _ = small
    p = root / "shard-00000-of-00004.h5"
    with h5py.File(p) as f:
        offset = f["images"].id.get_chunk_info(0).byte_offset
    blob = bytearray(p.read_bytes())
    blob[offset + 100] ^= 0xFF  # one image byte: HDF5 itself cannot notice
    p.write_bytes(bytes(blob))
    problems, _ = data.check_dataset(root)
    assert len(problems) == 1 and "shard-00000-of-00004.h5: sha256" in problems[0]
    assert "sha256 does not match" in reader_error(root, verify=True)
    r = cli("data", "check", root, "-q")
    assert r.exit_code == 2 and "1 problem(s)" in r.output and "sha256" in r.output


def test_corrupt_compressed_chunk(tmp_path):
    root = tmp_path / "gz"
    write_dataset(root, make_images(64, c=3), None, shards=1, compression="gzip")
    p = root / "shard-00000-of-00001.h5"
    with h5py.File(p) as f:
        info = f["images"].id.get_chunk_info(0)
    blob = bytearray(p.read_bytes())
    blob[info.byte_offset + 10: info.byte_offset + 60] = b"\xff" * 50
    p.write_bytes(bytes(blob))
    assert "images rows 0..63 cannot be read" in reader_error(root, in_memory=False)


def test_wrong_dtype_and_shape(small):
    root, x, _ = small
    rewrite_shard(root, 1, x[40:80].astype(np.float32))
    assert "shard-00001-of-00004.h5: images have dtype float32, expected uint8" in reader_error(root)
    rewrite_shard(root, 1, x[40:80, :, :16, :16])
    assert "shard-00001-of-00004.h5: images have shape (40, 1, 16, 16) but manifest.json says (40, 1, 32, 32)" \
        in reader_error(root)
    edit_manifest(root, lambda d: d.update(dtype="float32"))
    assert "manifest.json: dtype must be 'uint8'" in reader_error(root)


def test_manifest_disagrees_with_shard(small):
    root, _, _ = small

    def grow(doc):
        doc["shards"][0]["count"] += 1
        doc["count"] += 1
    edit_manifest(root, grow)
    assert "shard-00000-of-00004.h5: images have shape (40, 1, 32, 32) but manifest.json says (41, 1, 32, 32)" \
        in reader_error(root)
    edit_manifest(root, lambda d: d.update(count=999))
    assert "manifest.json: count is 999 but the shards hold 161 images" in reader_error(root)
    edit_manifest(root, lambda d: (d.update(count=160), d["shards"][0].update(count=40),
                                   d["shards"].reverse()))
    assert re.search(r"shard-0000\d-of-00004.h5: attribute shard=\d disagrees with manifest.json \(shard=\d\)",
                     reader_error(root))
    (root / "manifest.json").write_text("{not json")
    assert "manifest.json: not valid JSON" in reader_error(root)
    (root / "manifest.json").unlink()
    assert "manifest.json: not found" in reader_error(root)


def test_bad_sources(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 32, 32, 3), np.float32))
    r = cli("prepare", tmp_path / "f.npy", tmp_path / "o")
    assert r.exit_code == 2 and "f.npy: images have dtype float32, expected uint8" in r.output
    np.save(tmp_path / "s.npy", np.zeros((4, 5, 32, 32), np.uint8))
    r = cli("prepare", tmp_path / "s.npy", tmp_path / "o")
    assert r.exit_code == 2 and "s.npy: images have shape (4, 5, 32, 32)" in r.output
    r = cli("prepare", tmp_path / "nothing", tmp_path / "o")
    assert r.exit_code == 2 and "no such file or folder" in r.output
    (tmp_path / "empty").mkdir()
    r = cli("prepare", tmp_path / "empty", tmp_path / "o")
    assert r.exit_code == 2 and "no images found" in r.output
    r = cli("prepare", "digits", tmp_path / "o", "--shards", 2000)
    assert r.exit_code == 2 and "--shards: 2000 shards for 1797 images" in r.output
    assert not (tmp_path / "o").exists()


def test_fewer_shards_than_ranks(small):
    """Images are dealt, not shards: 4 shards of 40 serve 5 ranks of 32 images each."""
    root, _, _ = small
    readers = [ShardedReader(root, rank=r, size=5, batch_size=16) for r in range(5)]
    got = np.concatenate([np.concatenate(epoch_ids(r, 0)) for r in readers])
    assert len(got) == 5 * 32 == len(np.unique(got))
    msg = reader_error(root, rank=0, size=4, batch_size=64)
    assert "160 images on 4 rank(s) give each rank 40, fewer than one batch of 64" in msg


def test_image_size_that_does_not_fit(tmp_path):
    """The data format takes any size; training refuses a size the networks are not built for, and
    `hvdgan prepare` refuses to write one."""
    write_dataset(tmp_path / "d48", make_images(20, s=48), None, shards=2)
    got = np.concatenate([b.numpy() for b, _ in ShardedReader(tmp_path / "d48", batch_size=4, seed=0).epoch(0)])
    assert got.shape[1:] == (1, 48, 48) and len(got) == 20
    train = hvdgan("train", "--data", tmp_path / "d48", "--out", tmp_path / "run", "--batch-size", "4", "--max-steps", "1",
                   check=False)
    assert train.returncode == 2 and "manifest.json: image size 48x48 does not fit DCGAN" in train.stderr
    assert "--size 32" in train.stderr and not (tmp_path / "run").exists()
    r = cli("prepare", "digits", tmp_path / "o", "--size", 48)
    assert r.exit_code == 2 and "--size 48x48 does not fit DCGAN" in r.output


def test_overwrite_policy(tmp_path, small):
    root, x, y = small
    with pytest.raises(HvdganError, match="already holds a dataset.*pass --overwrite"):
        write_dataset(root, x, y, shards=2)
    before = (root / "manifest.json").read_text()
    r = cli("prepare", "digits", root)
    assert r.exit_code == 2 and "already holds a dataset" in r.output
    assert (root / "manifest.json").read_text() == before and len(list(root.glob("shard-*"))) == 4
    write_dataset(root, x[:50], y[:50], shards=2, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "shard-00000-of-00002.h5",
                                                      "shard-00001-of-00002.h5"]
    assert data.check_dataset(root)[0] == []
    r = cli("prepare", "digits", root, "--overwrite", "--shards", 3)
    assert r.exit_code == 0 and open_manifest(root).count == 1797


# ------------------------------------------------------------------------------------------ reader
def test_determinism_and_start_batch(small):
    root, _, _ = small
    r = ShardedReader(root, batch_size=16, seed=3, shuffle_window=50)
    a, b = epoch_ids(r, 0), epoch_ids(ShardedReader(root, batch_size=16, seed=3, shuffle_window=50), 0)
    assert len(a) == r.batches_per_epoch == 10 and all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_ids(r, 1)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_ids(ShardedReader(root, batch_size=16, seed=4), 0)))
    assert np.array_equal(np.concatenate(a), r.rows(0))  # ids == global rows here (shards keep the order)
    mapped = ShardedReader(root, batch_size=16, seed=3, shuffle_window=50, in_memory=False)
    through_h5py = ShardedReader(root, batch_size=16, seed=3, shuffle_window=50, in_memory=False, direct=False)
    for reader in (r, mapped, through_h5py):  # the same order from memory, from the mapped chunks and through HDF5
        assert [q.tolist() for q in epoch_ids(reader, 0)] == [p.tolist() for p in a]
        for start in (0, 3, 9, 10):  # windows of 80 images: batches 2 and 7 straddle two windows
            assert [q.tolist() for q in epoch_ids(reader, 0, start)] == [p.tolist() for p in a[start:]]
    assert mapped._view(0) is not None and through_h5py._views == {}
    with pytest.raises(HvdganError, match="start_batch"):
        next(r.epoch(0, 11))
    # samples are shuffled, not just shards: a batch mixes shards and is not a run of consecutive images
    assert len(set(a[0] // 40)) > 1 and not np.all(np.diff(np.sort(a[0])) == 1)


@pytest.mark.parametrize("size", [2, 3])
def test_equal_batches_for_uneven_shards(tmp_path, size):
    x = make_images(250)
    m = write_dataset(tmp_path / "u", x, None, per_shard=40)  # 6 shards of 40, one of 10
    assert [s.count for s in m.shards] == [40] * 6 + [10]
    readers = [ShardedReader(tmp_path / "u", rank=r, size=size, batch_size=8, in_memory=r % 2 == 0) for r in range(size)]
    share = 250 // size  # images are dealt: every rank gets floor(N / size), whatever the shard sizes
    assert {r.batches_per_epoch for r in readers} == {share // 8}
    for epoch in range(4):
        per_rank = [epoch_ids(r, epoch) for r in readers]
        assert [len(b) for b in per_rank] == [share // 8] * size
        got = np.concatenate([np.concatenate(b) for b in per_rank])
        assert len(np.unique(got)) == len(got)  # no image twice in an epoch, across ranks
        assert 250 - len(got) < size * 8  # an epoch is one pass over the data, less fewer than size x batch
        dealt = [set(r.shards_of(epoch).tolist()) for r in readers]
        assert set().union(*dealt) == set(range(7))


def test_an_epoch_is_one_pass_whatever_the_shard_sizes(tmp_path):
    """3,010 images in shards of 1000, 1000, 1000 and 10 on 4 ranks with batch 8 used 32 images an
    epoch when whole shards were dealt; dealing images uses all but fewer than 4 x 8."""
    x = make_images(3010)
    m = write_dataset(tmp_path / "u", x, None, per_shard=1000)
    assert [s.count for s in m.shards] == [1000, 1000, 1000, 10]
    readers = [ShardedReader(tmp_path / "u", rank=r, size=4, batch_size=8, in_memory=r < 2) for r in range(4)]
    assert {r.batches_per_epoch for r in readers} == {752 // 8}
    for epoch in range(2):
        got = np.concatenate([np.concatenate(epoch_ids(r, epoch)) for r in readers])
        assert len(got) == 4 * 94 * 8 == 3008 and len(np.unique(got)) == len(got)
        assert 3010 - len(got) < 4 * 8


def _child_read(reader, q):
    q.put([b.tolist() for b in epoch_ids(reader, 2)])


def test_fork_and_pickle_safety(small):
    root, _, _ = small
    for in_memory, direct in ((True, True), (False, True), (False, False)):
        r = ShardedReader(root, batch_size=16, in_memory=in_memory, direct=direct)
        want = [b.tolist() for b in epoch_ids(r, 2)]  # files open in the parent
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_read, args=(r, q))
        p.start()
        got = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0 and got == want
        assert [b.tolist() for b in epoch_ids(r, 2)] == want  # the parent's handles still work
        clone = pickle.loads(pickle.dumps(r))
        assert clone._files == {} and [b.tolist() for b in epoch_ids(clone, 2)] == want


def test_file_locking_env_is_respected(small, monkeypatch):
    root, _, _ = small
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    assert len(epoch_ids(ShardedReader(root, batch_size=16, in_memory=False), 0)) == 10


def test_data_check_cli(small):
    root, _, _ = small
    r = cli("data", "check", root)
    assert r.exit_code == 0 and "OK: 160 images 32x32x1 in 4 shards" in r.output
    r = cli("data", "check", root / "nope")
    assert r.exit_code == 2 and "no such dataset directory" in r.output
