"""Sharded HDF5 datasets: the format, the writer (`hvdgan prepare`), the checker and the rank-aware reader.

A dataset is a directory holding `manifest.json` and shard files `shard-00000-of-00016.h5`; the format is
written down in docs/data-format.md. The source readers (CIFAR-10, image folders, .npy/.npz, digits) live
in hvdgan.sources.

This module imports neither torch nor Horovod at import time: `prepare`'s worker processes import it, and
they only need numpy and h5py. h5py files are opened lazily, in the process that reads them, never
before a fork.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import HvdganError

FORMAT = "hvdgan-shards"
VERSION = 1
MANIFEST = "manifest.json"
LAYOUT = "NCHW"
COMPRESSIONS = ("none", "gzip", "lzf")
GZIP_LEVEL = 4
CHUNK_BYTES = 1 << 20  # target size of one chunk (a block of whole images): ~1 MiB
MAX_CHUNK_ROWS = 1024
DEFAULT_SHARDS = 16
SHUFFLE_WINDOW = 4096  # samples shuffled together when streaming from the files
SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")
LAUNCHER_ENV = ("HOROVOD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
_HASH_BLOCK = 1 << 22


def shard_name(i: int, k: int) -> str:
    return f"shard-{i:05d}-of-{k:05d}.h5"


def chunk_rows_for(channels: int, height: int, width: int) -> int:
    """Rows per chunk: the largest power of two whose block of whole images stays within ~1 MiB
    (256 rows at 32x32 RGB, 64 at 64x64 RGB), so that one chunk serves a batch slice."""
    per_image = max(1, channels * height * width)
    rows = max(1, CHUNK_BYTES // per_image)
    return int(min(MAX_CHUNK_ROWS, 1 << (rows.bit_length() - 1)))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                return h.hexdigest()
            h.update(block)


def to_float(images, device):
    """uint8 [B, C, H, W] -> float in [-1, 1] on `device`: move the bytes first (4x less to copy), then
    convert there. Call it on the training device, once per batch."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1)


# ------------------------------------------------------------------------------------------ manifest
@dataclass(frozen=True)
class ShardRecord:
    file: str  # file name inside the dataset directory
    count: int  # images in the shard
    bytes: int  # file size
    sha256: str  # hex digest of the whole file (`sha256sum` prints the same)


@dataclass
class Manifest:
    root: Path
    count: int
    height: int
    width: int
    channels: int
    dtype: str
    labels: list[str] | None  # label names; None when the dataset has no labels
    shards: list[ShardRecord]
    compression: str = "none"
    chunk_rows: int = 256
    layout: str = LAYOUT
    version: int = VERSION
    source: str = ""
    seed: int | None = None  # of prepare's shuffle; None: source order kept
    created: str = ""

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def image_size(self) -> int | None:
        return self.height if self.height == self.width else None

    @property
    def bytes_per_image(self) -> int:
        return self.channels * self.height * self.width

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def offsets(self) -> np.ndarray:
        """Global row of each shard's first image (rows are numbered shard by shard)."""
        return np.concatenate([[0], np.cumsum([s.count for s in self.shards])]).astype(np.int64)

    def shard_path(self, i: int) -> Path:
        return self.root / self.shards[i].file

    def check_model_size(self) -> None:
        """Refuse images that DCGAN cannot take (32x32 or 64x64), naming the manifest."""
        from .models import check_image_size

        if self.height != self.width:
            raise HvdganError(f"{self.path}: images are {self.height}x{self.width}; DCGAN takes square 32x32 or "
                              "64x64 images (re-prepare the data with --size 32 or --size 64)")
        check_image_size(self.height, f"{self.path}: image size")

    def to_json(self) -> str:
        doc = {
            "format": FORMAT, "version": self.version, "count": self.count, "height": self.height,
            "width": self.width, "channels": self.channels, "dtype": self.dtype, "layout": self.layout,
            "compression": self.compression, "chunk_rows": self.chunk_rows, "labels": self.labels,
            "source": self.source, "seed": self.seed, "created": self.created,
            "shards": [asdict(s) for s in self.shards],
        }
        return json.dumps(doc, indent=1) + "\n"


def open_manifest(root: str | os.PathLike) -> Manifest:
    """Read and validate DIR/manifest.json (the shard files are not opened)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise HvdganError(f"{root}: no such dataset directory; create it with `hvdgan prepare SOURCE {root}`")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise HvdganError(f"{path}: not found: {root} is not a dataset (or its writing did not finish); "
                          f"create it with `hvdgan prepare SOURCE {root} --overwrite`") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HvdganError(f"{path}: not valid JSON ({exc}); re-create the dataset with hvdgan prepare --overwrite") from None

    def bad(why: str):
        raise HvdganError(f"{path}: {why}; re-create the dataset with `hvdgan prepare SOURCE {root} --overwrite`")

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        bad(f"not an {FORMAT} manifest (format: {doc.get('format') if isinstance(doc, dict) else None!r})")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        bad(f"format version {doc.get('version')!r} is not supported by this hvdgan (reads <= {VERSION}); upgrade hvdgan")

    def integer(key, lo=1):
        v = doc.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            bad(f"{key} must be an integer >= {lo}, got {v!r}")
        return v

    count, height, width, channels = (integer(k) for k in ("count", "height", "width", "channels"))
    chunk_rows = integer("chunk_rows")
    if channels not in (1, 3):
        bad(f"channels must be 1 or 3, got {channels}")
    if doc.get("dtype") != "uint8":
        bad(f"dtype must be 'uint8', got {doc.get('dtype')!r}")
    if doc.get("layout") != LAYOUT:
        bad(f"layout must be {LAYOUT!r}, got {doc.get('layout')!r}")
    if doc.get("compression") not in COMPRESSIONS:
        bad(f"compression must be one of {', '.join(COMPRESSIONS)}, got {doc.get('compression')!r}")
    labels = doc.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels or
                               not all(isinstance(n, str) for n in labels)):
        bad(f"labels must be null or a non-empty list of names, got {labels!r}")
    shards_doc = doc.get("shards")
    if not isinstance(shards_doc, list) or not shards_doc:
        bad("shards must be a non-empty list")
    shards, seen = [], set()
    for i, s in enumerate(shards_doc):
        try:
            rec = ShardRecord(file=s["file"], count=s["count"], bytes=s["bytes"], sha256=s["sha256"])
        except (TypeError, KeyError) as exc:
            bad(f"shard {i}: missing field {exc}")
        if (not isinstance(rec.file, str) or os.path.basename(rec.file) != rec.file or rec.file in ("", ".", "..")
                or rec.file in seen):
            bad(f"shard {i}: file must be a unique plain file name, got {rec.file!r}")
        seen.add(rec.file)
        for key in ("count", "bytes"):
            v = getattr(rec, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(f"shard {i} ({rec.file}): {key} must be an integer >= 1, got {v!r}")
        if not isinstance(rec.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", rec.sha256):
            bad(f"shard {i} ({rec.file}): sha256 must be 64 hex digits")
        shards.append(rec)
    total = sum(s.count for s in shards)
    if total != count:
        bad(f"count is {count} but the shards hold {total} images")
    seed = doc.get("seed")
    return Manifest(root=root, count=count, height=height, width=width, channels=channels, dtype="uint8",
                    labels=labels, shards=shards, compression=doc["compression"], chunk_rows=chunk_rows,
                    layout=LAYOUT, version=doc["version"], source=str(doc.get("source", "")),
                    seed=seed if isinstance(seed, int) else None, created=str(doc.get("created", "")))


# ------------------------------------------------------------------------------------- shard checks
def _lock_hint(exc: BaseException) -> str:
    text = str(exc)
    if "lock" in text.lower():
        return (" (file locking failed: on Lustre/NFS without flock support set HDF5_USE_FILE_LOCKING=FALSE "
                "in every rank's environment)")
    return ""


def _open_h5(path: Path, mode: str = "r"):
    """Open an HDF5 file; h5py/HDF5 honour HDF5_USE_FILE_LOCKING from the environment (we do not override it).
    No chunk cache: every read here covers whole chunks, read once (a cache would only add memory and a copy)."""
    import h5py

    try:
        return h5py.File(path, mode, rdcc_nbytes=0)
    except FileNotFoundError:
        raise HvdganError(f"{path}: missing; restore it or re-create the dataset with hvdgan prepare --overwrite") from None
    except OSError as exc:
        raise HvdganError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}{_lock_hint(exc)}; "
                          "re-create the dataset with hvdgan prepare --overwrite") from None


def _check_file_size(m: Manifest, i: int) -> None:
    path, rec = m.shard_path(i), m.shards[i]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise HvdganError(f"{path}: missing ({MANIFEST} lists it as shard {i}); restore it or re-create the "
                          f"dataset with `hvdgan prepare SOURCE {m.root} --overwrite`") from None
    if size != rec.bytes:
        what = "truncated" if size < rec.bytes else "changed"
        raise HvdganError(f"{path}: {size} bytes but {MANIFEST} says {rec.bytes} ({what}); restore it or "
                          f"re-create the dataset with `hvdgan prepare SOURCE {m.root} --overwrite`")


def _check_shard_structure(m: Manifest, i: int, f) -> None:
    """The shard's datasets and attributes agree with the manifest (no image data is read)."""
    path, rec = m.shard_path(i), m.shards[i]
    fix = f"re-create the dataset with `hvdgan prepare SOURCE {m.root} --overwrite`"
    if "images" not in f:
        raise HvdganError(f"{path}: no 'images' dataset; {fix}")
    d = f["images"]
    if d.dtype != np.uint8:
        raise HvdganError(f"{path}: images have dtype {d.dtype}, expected uint8; {fix}")
    want = (rec.count, m.channels, m.height, m.width)
    if tuple(d.shape) != want:
        raise HvdganError(f"{path}: images have shape {tuple(d.shape)} but {MANIFEST} says {want} "
                          f"([count, C, H, W]); {fix}")
    if m.has_labels:
        if "labels" not in f:
            raise HvdganError(f"{path}: no 'labels' dataset but {MANIFEST} lists label names; {fix}")
        lab = f["labels"]
        if tuple(lab.shape) != (rec.count,) or lab.dtype.kind not in "iu":
            raise HvdganError(f"{path}: labels have shape {tuple(lab.shape)} and dtype {lab.dtype}, expected "
                              f"({rec.count},) integers; {fix}")
    elif "labels" in f:
        raise HvdganError(f"{path}: has 'labels' but {MANIFEST} has none (labels: null); {fix}")
    a = f.attrs
    expect = {"format": FORMAT, "shard": i, "shards": len(m.shards), "count": rec.count, "height": m.height,
              "width": m.width, "channels": m.channels, "layout": LAYOUT}
    for key, value in expect.items():
        got = a.get(key)
        if isinstance(got, bytes):
            got = got.decode()
        if isinstance(got, np.generic):
            got = got.item()
        if got != value:
            raise HvdganError(f"{path}: attribute {key}={got!r} disagrees with {MANIFEST} ({key}={value!r}); {fix}")


def check_dataset(root: str | os.PathLike, progress: bool = False) -> tuple[list[str], Manifest | None]:
    """Re-read the manifest and every shard: sizes, sha256, structure, every image chunk, labels and the
    source-index permutation. Returns (problems, manifest); an empty list means the dataset is sound."""
    try:
        m = open_manifest(root)
    except HvdganError as exc:
        return [exc.message], None
    problems: list[str] = []
    seen = np.zeros(m.count, dtype=bool)
    index_ok = True
    bar = _bar(total=m.total_bytes, unit="B", unit_scale=True, desc="check", enabled=progress)
    for i, rec in enumerate(m.shards):
        path = m.shard_path(i)
        try:
            _check_file_size(m, i)
            digest = sha256_file(path)
            if digest != rec.sha256:
                problems.append(f"{path}: sha256 {digest[:16]}... does not match {MANIFEST} ({rec.sha256[:16]}...): "
                                "the file changed or is corrupt; restore it or re-create the dataset")
            with _open_h5(path) as f:
                _check_shard_structure(m, i, f)
                d = f["images"]
                step = 8 * m.chunk_rows
                for a in range(0, rec.count, step):
                    try:
                        d[a:min(a + step, rec.count)]
                    except Exception as exc:  # a filter (gzip/lzf) or I/O error inside the file
                        raise HvdganError(f"{path}: images rows {a}..{min(a + step, rec.count) - 1} cannot be "
                                          f"read ({exc}); the file is corrupt") from None
                if m.has_labels:
                    lab = f["labels"][:]
                    if lab.size and (lab.min() < 0 or lab.max() >= len(m.labels)):
                        problems.append(f"{path}: labels outside 0..{len(m.labels) - 1}")
                if "index" in f:
                    idx = f["index"][:]
                    if idx.shape != (rec.count,) or idx.size and (idx.min() < 0 or idx.max() >= m.count):
                        problems.append(f"{path}: index out of range 0..{m.count - 1}")
                        index_ok = False
                    elif seen[idx].any():
                        problems.append(f"{path}: index repeats source images already in other shards")
                        index_ok = False
                    else:
                        seen[idx] = True
                else:
                    index_ok = False
        except HvdganError as exc:
            problems.append(exc.message)
            index_ok = False
        bar.update(rec.bytes)
    bar.close()
    if index_ok and not seen.all():
        problems.append(f"{m.root}: the shards' index datasets miss {int((~seen).sum())} source image(s)")
    return problems, m


def read_all(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Every image (uint8 [N, C, H, W]) and label, in the source's order (undoing prepare's shuffle)."""
    m = open_manifest(root)
    images = np.empty((m.count, m.channels, m.height, m.width), dtype=np.uint8)
    labels = np.empty(m.count, dtype=np.int64) if m.has_labels else None
    for i, rec in enumerate(m.shards):
        _check_file_size(m, i)
        with _open_h5(m.shard_path(i)) as f:
            _check_shard_structure(m, i, f)
            idx = f["index"][:] if "index" in f else np.arange(m.offsets[i], m.offsets[i] + rec.count)
            images[idx] = f["images"][:]
            if labels is not None:
                labels[idx] = f["labels"][:]
    return images, labels


# ------------------------------------------------------------------------------------------- writer
def _bar(total: int, desc: str, enabled: bool, unit: str = "img", unit_scale: bool = False):
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a terminal (batch logs stay clean)
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=None if enabled else True,
                dynamic_ncols=True, leave=False)


class ArraySource:
    """In-memory images (uint8 [N, C, H, W]) and optional labels, as a source for the writer."""

    portable = False  # workers get slices, not the whole array

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, label_names=None, name="arrays"):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise HvdganError(f"{name}: images have dtype {images.dtype}, expected uint8 (0..255)")
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
            raise HvdganError(f"{name}: images have shape {images.shape}, expected [N, C, H, W] with C 1 or 3 and N >= 1")
        self.images = images
        self.count, self.channels, self.height, self.width = images.shape
        self.labels = None
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (self.count,) or labels.dtype.kind not in "iu":
                raise HvdganError(f"{name}: labels have shape {labels.shape} and dtype {labels.dtype}; "
                                  f"expected ({self.count},) integers")
            if labels.min() < 0:
                raise HvdganError(f"{name}: labels must be >= 0")
            self.labels = labels.astype(np.int64)
            if label_names is None:
                label_names = [str(c) for c in range(int(labels.max()) + 1)]
            elif len(label_names) <= int(labels.max()):
                raise HvdganError(f"{name}: {len(label_names)} label names but labels go up to {int(labels.max())}")
            label_names = [str(n) for n in label_names]
        elif label_names is not None:
            raise HvdganError(f"{name}: label names given without labels")
        self.label_names = label_names
        self.name = name

    def describe(self) -> str:
        return self.name

    def read(self, idx: np.ndarray):
        return self.images[idx], (self.labels[idx] if self.labels is not None else None)


@dataclass
class _ShardTask:
    out: str
    index: int
    shards: int
    idx: np.ndarray  # source indices of this shard's images (ascending)
    compression: str
    chunk_rows: int
    shape: tuple  # (C, H, W)
    has_labels: bool
    source: Any = None  # a portable source: the worker reads (and resizes) itself
    images: np.ndarray | None = None  # or the data itself
    labels: np.ndarray | None = None


def _write_shard(task: _ShardTask, progress: Callable[[int], None] | None = None) -> dict:
    """Write one shard (in the calling process: h5py is opened here, never inherited) and return its record."""
    import h5py

    name = shard_name(task.index, task.shards)
    final = Path(task.out) / name
    tmp = final.with_name(f".{name}.tmp{os.getpid()}")
    n = len(task.idx)
    c, h, w = task.shape
    rows = min(task.chunk_rows, n)
    filters = {"none": {}, "gzip": {"compression": "gzip", "compression_opts": GZIP_LEVEL},
               "lzf": {"compression": "lzf"}}[task.compression]
    step = max(task.chunk_rows, (16 << 20) // max(1, c * h * w) // task.chunk_rows * task.chunk_rows)
    raw = {}
    if task.compression == "none":
        # all chunks allocated at creation, one after the other: the reader can map them as one array
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        raw = {"dcpl": dcpl, "fill_time": "never"}
    try:
        # HDF5 >= 1.10 format: a fixed-array chunk index that does not interleave with the chunks
        with h5py.File(tmp, "w", libver=("v110", "v110")) as f:
            images = f.create_dataset("images", shape=(n, c, h, w), dtype=np.uint8, chunks=(rows, c, h, w),
                                      track_times=False, **filters, **raw)
            labels = (f.create_dataset("labels", shape=(n,), dtype=np.int64, chunks=(rows,), track_times=False,
                                       **filters) if task.has_labels else None)
            f.create_dataset("index", data=np.asarray(task.idx, dtype=np.int64), chunks=(rows,), track_times=False)
            for key, value in {"format": FORMAT, "version": VERSION, "shard": task.index, "shards": task.shards,
                               "count": n, "height": h, "width": w, "channels": c, "layout": LAYOUT,
                               "compression": task.compression}.items():
                f.attrs[key] = value
            for a in range(0, n, step):
                b = min(a + step, n)
                if task.images is not None:
                    x, y = task.images[a:b], (task.labels[a:b] if task.labels is not None else None)
                else:
                    x, y = task.source.read(task.idx[a:b])
                if x.shape != (b - a, c, h, w) or x.dtype != np.uint8:
                    raise HvdganError(f"{task.source.describe() if task.source else 'images'}: got a block of shape "
                                      f"{x.shape} and dtype {x.dtype}, expected {(b - a, c, h, w)} uint8")
                images[a:b] = x
                if labels is not None:
                    labels[a:b] = y
                if progress:
                    progress(b - a)
        record = {"file": name, "count": n, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        os.replace(tmp, final)
        return record
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_shard_worker(task: _ShardTask) -> dict:
    return _write_shard(task)


def plan_shards(count: int, shards: int | None = None, per_shard: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each shard. --shards N: N shards whose sizes differ by at most one;
    --per-shard P: ceil(count / P) shards of P images (the last one smaller)."""
    if shards is not None and per_shard is not None:
        raise HvdganError("--shards and --per-shard: give one of them, not both")
    if count < 1:
        raise HvdganError("the source holds no images")
    if per_shard is not None:
        if per_shard < 1:
            raise HvdganError(f"--per-shard: must be >= 1, got {per_shard}")
        return [(a, min(a + per_shard, count)) for a in range(0, count, per_shard)]
    k = DEFAULT_SHARDS if shards is None else shards
    if k < 1:
        raise HvdganError(f"--shards: must be >= 1, got {k}")
    if shards is None:
        k = min(k, count)
    if k > count:
        raise HvdganError(f"--shards: {k} shards for {count} images: every shard needs at least one image; "
                          f"use --shards {count} or fewer")
    return [(i * count // k, (i + 1) * count // k) for i in range(k)]


def launcher_world() -> tuple[bool, int, int]:
    """(under a launcher?, rank, size) from the launcher's environment, without initialising Horovod."""
    env = os.environ
    under = any(k in env for k in LAUNCHER_ENV)
    if not under:
        return False, 0, 1
    rank = env.get("HOROVOD_RANK") or env.get("OMPI_COMM_WORLD_RANK") or env.get("PMIX_RANK") or "0"
    size = env.get("HOROVOD_SIZE") or env.get("OMPI_COMM_WORLD_SIZE") or env.get("SLURM_NTASKS") or "1"
    return True, int(rank), int(size)


class _World:
    """Who writes which shard, and how ranks meet: Horovod under a launcher, a single process otherwise."""

    def __init__(self, use_horovod: bool):
        self.horovod = use_horovod
        if use_horovod:
            from . import distributed

            distributed.init()
            self.h = distributed.hvd()
            self.rank, self.size = self.h.rank(), self.h.size()
        else:
            self.h, self.rank, self.size = None, 0, 1

    def gather(self, obj) -> list:
        # an explicit name: Horovod's default is the object's type, which differs between a rank that
        # sends None and one that sends an error message, and then the ranks never meet
        return self.h.allgather_object(obj, name="hvdgan.prepare") if self.horovod and self.size > 1 else [obj]

    def agree(self, error: str | None) -> None:
        """A collective: if any rank failed, every rank raises (nobody is left waiting in the next collective)."""
        errors = [e for e in self.gather(error) if e]
        if errors:
            raise HvdganError(errors[0] if len(set(errors)) == 1 else "; ".join(sorted(set(errors))))


def _existing_dataset(out: Path) -> list[str]:
    if not out.exists():
        return []
    if not out.is_dir():
        raise HvdganError(f"{out}: exists and is not a directory; choose another OUT")
    return sorted(p.name for p in out.iterdir() if p.name == MANIFEST or SHARD_RE.match(p.name))


def write_source(out: str | os.PathLike, source, shards: int | None = None, per_shard: int | None = None,
                 compression: str = "none", overwrite: bool = False, workers: int = 1, shuffle_seed: int | None = 0,
                 progress: bool = False, use_horovod: bool | None = None) -> Manifest | None:
    """Write `source` (an ArraySource or a hvdgan.sources source) as a sharded dataset in `out`.

    Shards are written by `workers` processes (spawned; each opens only its own files), and under a launcher
    (mpirun/horovodrun/srun, detected from the environment) every rank writes shards i with i % size == rank
    and rank 0 writes the manifest once all shards exist. Returns the manifest (None on ranks other than 0).
    """
    out = Path(out)
    if compression not in COMPRESSIONS:
        raise HvdganError(f"--compression: {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    if workers < 1:
        raise HvdganError(f"--workers: must be >= 1, got {workers}")
    bounds = plan_shards(source.count, shards, per_shard)
    k = len(bounds)
    if use_horovod is None:
        use_horovod = launcher_world()[0]
    world = _World(use_horovod)

    # 1. overwrite policy, agreed by all ranks before anything is touched
    error = None
    try:
        existing = _existing_dataset(out)
        if existing and not overwrite:
            error = (f"{out}: already holds a dataset ({', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}); "
                     "pass --overwrite to replace it, or choose another OUT")
    except HvdganError as exc:
        error = exc.message
    world.agree(error)
    error = None
    if world.rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / MANIFEST).unlink(missing_ok=True)  # no manifest until the new shards are all there
        except OSError as exc:
            error = f"{out}: cannot create the dataset directory: {exc}"
    world.agree(error)

    # 2. the shards: which source images go where (identical on every rank: fixed seed, sorted sources)
    order = np.arange(source.count, dtype=np.int64)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(source.count)
    c, h, w = source.channels, source.height, source.width
    chunk_rows = chunk_rows_for(c, h, w)
    has_labels = source.label_names is not None
    mine = [i for i in range(k) if i % world.size == world.rank]
    tasks = []
    for i in mine:
        idx = np.sort(order[bounds[i][0]:bounds[i][1]])
        task = _ShardTask(out=str(out), index=i, shards=k, idx=idx, compression=compression, chunk_rows=chunk_rows,
                          shape=(c, h, w), has_labels=has_labels)
        if getattr(source, "portable", False) and workers > 1:
            task.source = source
        elif workers > 1:
            task.images, task.labels = source.read(idx)
        else:
            task.source = source
        tasks.append(task)

    records, error = {}, None
    total_mine = sum(len(t.idx) for t in tasks)
    bar = _bar(total=total_mine * world.size if world.size > 1 else total_mine,
               desc=f"prepare {out.name}", enabled=progress and world.rank == 0)
    try:
        if workers > 1 and len(tasks) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_write_shard_worker, t): t for t in tasks}
                for fut in as_completed(futures):
                    t = futures[fut]
                    records[t.index] = fut.result()
                    bar.update(len(t.idx) * world.size)
        else:
            for t in tasks:
                records[t.index] = _write_shard(t, progress=lambda n: bar.update(n * world.size))
    except HvdganError as exc:
        error = exc.message
    except Exception as exc:  # report, but let every rank reach the collective below
        if not world.horovod:
            raise
        error = f"{out}: rank {world.rank} failed writing its shards: {type(exc).__name__}: {exc}"
    finally:
        bar.close()
    world.agree(error)

    # 3. rank 0 writes the manifest once every shard exists
    gathered = world.gather(records)
    manifest, error = None, None
    if world.rank == 0:
        try:
            merged = {}
            for part in gathered:
                merged.update(part)
            recs = [ShardRecord(**merged[i]) for i in range(k)]
            manifest = Manifest(root=out, count=source.count, height=h, width=w, channels=c, dtype="uint8",
                                labels=source.label_names if has_labels else None, shards=recs,
                                compression=compression, chunk_rows=chunk_rows, source=source.describe(),
                                seed=shuffle_seed, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            tmp = out / f".{MANIFEST}.tmp"
            tmp.write_text(manifest.to_json())
            os.replace(tmp, out / MANIFEST)
            keep = {r.file for r in recs}
            for p in out.iterdir():  # shards of the dataset that --overwrite replaced
                if SHARD_RE.match(p.name) and p.name not in keep:
                    p.unlink()
        except Exception as exc:
            error = f"{out}: writing {MANIFEST} failed: {exc}"
    world.agree(error)
    return manifest


def write_dataset(out_dir: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None, shards: int = 4,
                  compression: str = "none", label_names: Sequence[str] | None = None, overwrite: bool = False,
                  *, per_shard: int | None = None, workers: int = 1, shuffle_seed: int | None = None,
                  progress: bool = False) -> Manifest:
    """Write uint8 images [N, C, H, W] (and optional integer labels) as a sharded dataset. The images keep
    their order (shard 0 holds the first ones) unless shuffle_seed is given. Single process (plus `workers`);
    it never joins a Horovod world. Refuses to replace an existing dataset unless overwrite=True."""
    source = ArraySource(images, labels, label_names)
    return write_source(out_dir, source, shards=None if per_shard is not None else shards, per_shard=per_shard,
                        compression=compression, overwrite=overwrite, workers=workers, shuffle_seed=shuffle_seed,
                        progress=progress, use_horovod=False)


def prepare(source: str, out: str, shards: int | None = None, per_shard: int | None = None, size: int | None = None,
            channels: int | None = None, compression: str = "none", overwrite: bool = False, workers: int = 1,
            verify: bool = False, shuffle_seed: int | None = 0, progress: bool = True) -> str | None:
    """`hvdgan prepare`: open a source, write the dataset, optionally verify it. Returns the summary
    paragraph on rank 0 (None on other ranks)."""
    from . import sources
    from .models import check_image_size

    if size is not None:
        check_image_size(size, "--size")
    if channels is not None and channels not in (1, 3):
        raise HvdganError(f"--channels: must be 1 or 3, got {channels}")
    src = sources.open_source(source, size=size, channels=channels)
    check_image_size(src.height, f"{source}: --size")
    t0 = time.perf_counter()
    m = write_source(out, src, shards=shards, per_shard=per_shard, compression=compression, overwrite=overwrite,
                     workers=workers, shuffle_seed=shuffle_seed, progress=progress)
    if m is None:
        return None
    seconds = time.perf_counter() - t0
    checked = ""
    if verify:
        problems, _ = check_dataset(out, progress=progress)
        if problems:
            raise HvdganError(f"{out}: --verify found {len(problems)} problem(s): {problems[0]}")
        checked = " Verified: every shard re-read, sizes, sha256 and structure match the manifest."
    _, rank, size_ = launcher_world()
    writers = f"{size_} ranks" if size_ > 1 else f"{workers} process{'es' if workers > 1 else ''}"
    labels = f"{len(m.labels)} classes" if m.labels else "no labels"
    return (f"Wrote {m.count:,} images ({m.height}x{m.width}, {m.channels} channel{'s' if m.channels > 1 else ''}, "
            f"uint8 NCHW; {labels}) from {m.source} into {len(m.shards)} shard{'s' if len(m.shards) > 1 else ''} "
            f"in {out}: {_human(m.total_bytes)}, compression {m.compression}, {seconds:.1f} s "
            f"({m.count / max(seconds, 1e-9):,.0f} images/s) with {writers}.{checked} "
            f"Check it any time with `hvdgan data check {out}`.")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


# ------------------------------------------------------------------------------------------- reader


class ShardedReader:
    """Batches of one rank's share of a sharded dataset.

    Every epoch the shard list is shuffled with (seed, epoch), the same on every rank, and dealt out:
    rank r gets shards order[r::size]. Within its shards a rank reads contiguous blocks (one chunk each),
    shuffles the blocks, and shuffles the images within windows of `shuffle_window` images; the images of
    one batch are then put in storage order (a batch is a set; this makes its reads runs of rows). Every
    rank yields `batches_per_epoch` = floor(S_min / batch_size) batches, where S_min is the fewest images
    any rank can be dealt (the sum of the floor(shards / size) smallest shards); the rest of a rank's images
    that epoch are dropped (they come back in other epochs, with other shards). The order depends only on
    (manifest, seed, epoch, rank, size, batch_size, shuffle_window): not on `in_memory` or `direct`.

    in_memory: hold the rank's shards of the epoch in memory (read whole, once per epoch; kept across epochs
    while the rank's shard set stays the same, e.g. always with one rank) when they fit in half the job's
    memory on the node (cgroup / Slurm limit or RAM) split between its `local_size` ranks; otherwise stream from the files, one window at a time.
    direct: when streaming uncompressed shards whose chunks lie in order in the file (as `prepare` writes
    them), map the chunks (located through HDF5's chunk index) and gather batches straight from them, instead
    of copying windows through HDF5 first. Read-only mappings; a process maps its own.
    """

    def __init__(self, root, rank: int = 0, size: int = 1, batch_size: int = 64, seed: int = 0,
                 in_memory: bool = True, *, shuffle_window: int = SHUFFLE_WINDOW, verify: bool = False,
                 check_size: bool = True, direct: bool = True, local_size: int = 1):
        self.manifest = m = open_manifest(root)
        if size < 1 or not 0 <= rank < size:
            raise HvdganError(f"rank {rank} of size {size}: need 0 <= rank < size")
        if batch_size < 1:
            raise HvdganError(f"batch_size: must be >= 1, got {batch_size}")
        if seed < 0:
            raise HvdganError(f"seed: must be >= 0, got {seed}")
        if check_size:
            m.check_model_size()
        k = len(m.shards)
        if k < size:
            raise HvdganError(f"{m.path}: {k} shard{'s' if k > 1 else ''} for {size} ranks (every rank needs at least "
                              f"one); re-shard with at least {size} shards: hvdgan prepare SOURCE {m.root} "
                              f"--shards {size} --overwrite")
        self.rank, self.size, self.batch_size, self.seed = rank, size, batch_size, seed
        self.shuffle_window = max(shuffle_window, batch_size)  # so that a batch spans at most two windows
        self.verify, self.direct = verify, direct
        counts = sorted(s.count for s in m.shards)
        self.min_rank_samples = sum(counts[: k // size])
        self.batches_per_epoch = self.min_rank_samples // batch_size
        if self.batches_per_epoch < 1:
            raise HvdganError(f"{m.path}: with {size} rank(s) a rank may be dealt only {self.min_rank_samples} images, "
                              f"fewer than one batch of {batch_size}: lower the batch size, or re-shard into a "
                              f"multiple of {size} shards of equal size (hvdgan prepare ... --shards N)")
        most = sum(counts[-math.ceil(k / size):]) * m.bytes_per_image
        self.in_memory = bool(in_memory)
        from .resources import memory_budget  # (the job's memory limit: cgroup, Slurm --mem, RAM)

        if in_memory and most > memory_budget(local_size):
            warnings.warn(f"{m.root}: a rank's shards ({most / 1e9:.1f} GB) do not fit in memory; streaming them")
            self.in_memory = False
        self._counts = np.array([s.count for s in m.shards], dtype=np.int64)
        self._offsets = m.offsets
        self._labels = np.full(m.count, -1, dtype=np.int64) if m.has_labels else None
        self._reset()

    # -- per-process state: h5py handles and mappings never travel over a fork or a pickle
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._files: dict[int, Any] = {}
        self._dsets: dict[int, Any] = {}
        self._views: dict[int, np.ndarray | None] = {}
        self._mem_key: tuple | None = None
        self._mem: np.ndarray | None = None
        self._mem_delta: np.ndarray | None = None
        self._bufs: list[np.ndarray] = []

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            # forked: the parent's handles stay referenced (never closed from here), this process opens its own
            self._orphans = getattr(self, "_orphans", []) + [self._files, self._dsets, self._views]
            self._reset()

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_files", "_dsets", "_views", "_mem", "_bufs",
                                                                     "_orphans")}
        state.update(_pid=None, _mem_key=None, _mem_delta=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def samples_per_epoch(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def close(self) -> None:
        """Close this process's files and drop mappings and memory (they reopen on the next epoch)."""
        if getattr(self, "_pid", None) == os.getpid():
            for f in self._files.values():
                try:
                    f.close()
                except Exception:
                    pass
            self._reset()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- files
    def _file(self, i: int):
        self._check_process()
        f = self._files.get(i)
        if f is None:
            m = self.manifest
            _check_file_size(m, i)
            if self.verify:
                digest = sha256_file(m.shard_path(i))
                if digest != m.shards[i].sha256:
                    raise HvdganError(f"{m.shard_path(i)}: sha256 does not match {MANIFEST}: the file changed or "
                                      f"is corrupt; restore it or re-create the dataset")
            f = _open_h5(m.shard_path(i))
            try:
                _check_shard_structure(m, i, f)
                if self._labels is not None:
                    lab = f["labels"][:]
                    if lab.size and (lab.min() < 0 or lab.max() >= len(m.labels)):
                        raise HvdganError(f"{m.shard_path(i)}: labels outside 0..{len(m.labels) - 1}")
                    self._labels[self._offsets[i]:self._offsets[i + 1]] = lab
            except BaseException:
                f.close()
                raise
            self._files[i] = f
            self._dsets[i] = f["images"]
        return f

    def _read(self, i: int, a: int, b: int, out: np.ndarray) -> None:
        """Rows a..b-1 of shard i's images into `out` (C-contiguous), through HDF5 (decompressing if needed)."""
        import h5py

        self._file(i)
        dsid = self._dsets[i].id
        try:
            fspace = dsid.get_space()
            fspace.select_hyperslab((a, 0, 0, 0), (b - a,) + out.shape[1:])
            dsid.read(h5py.h5s.create_simple(out.shape), fspace, out)
        except Exception as exc:
            raise HvdganError(f"{self.manifest.shard_path(i)}: images rows {a}..{b - 1} cannot be read ({exc}); "
                              "the file is corrupt: run `hvdgan data check` and re-create the dataset") from None

    def _view(self, i: int) -> np.ndarray | None:
        """Shard i's images as a read-only array mapped from the file, when they are stored raw and in order."""
        self._file(i)
        if i in self._views:
            return self._views[i]
        view = None
        m, d = self.manifest, self._dsets[i]
        row = m.bytes_per_image
        n = int(self._counts[i])
        try:
            dsid = d.id
            if dsid.get_create_plist().get_nfilters() == 0:
                start = dsid.get_offset()  # contiguous layout
                if start is None and d.chunks is not None and d.chunks[1:] == d.shape[1:]:
                    rows = d.chunks[0]
                    chunks = [dsid.get_chunk_info(j) for j in range(dsid.get_num_chunks())]
                    start = chunks[0].byte_offset if chunks else None
                    if len(chunks) != -(-n // rows) or any(
                            c.chunk_offset[0] != j * rows or c.byte_offset != start + j * rows * row
                            or c.size != rows * row for j, c in enumerate(chunks)):
                        start = None
                if start is not None and start + n * row <= m.shards[i].bytes:
                    import mmap

                    with open(m.shard_path(i), "rb") as fh:
                        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                    view = np.frombuffer(mm, dtype=np.uint8, count=n * row, offset=start).reshape(
                        n, m.channels, m.height, m.width)
        except (OSError, ValueError, AttributeError):
            view = None
        self._views[i] = view
        return view

    # -- the plan
    def shards_of(self, epoch: int) -> np.ndarray:
        """The shards this rank reads in `epoch` (the same deal on every rank)."""
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self._counts))
        return order[self.rank::self.size]

    def _windows(self, epoch: int):
        """[(blocks [(shard, start, stop)], permutation of the window's images)], covering this epoch's batches."""
        if epoch < 0:
            raise HvdganError(f"epoch: must be >= 0, got {epoch}")
        blk = self.manifest.chunk_rows
        blocks = [(int(s), a, min(a + blk, int(self._counts[s])))
                  for s in self.shards_of(epoch) for a in range(0, int(self._counts[s]), blk)]
        rng = np.random.default_rng([self.seed, epoch, 1, self.rank, self.size])
        blocks = [blocks[j] for j in rng.permutation(len(blocks))]
        need = self.samples_per_epoch
        windows, cur, n, total = [], [], 0, 0
        for blk_ in blocks:
            cur.append(blk_)
            n += blk_[2] - blk_[1]
            if n >= self.shuffle_window:
                windows.append((cur, rng.permutation(n)))
                total += n
                cur, n = [], 0
                if total >= need:
                    break
        if cur and total < need:
            windows.append((cur, rng.permutation(n)))
        return windows

    def _global_rows(self, blocks) -> np.ndarray:
        return np.concatenate([self._offsets[s] + np.arange(a, b) for s, a, b in blocks])

    def _plan(self, epoch: int):
        """(windows, rows): rows holds the global row of every image yielded this epoch, batch after batch,
        each batch in storage order."""
        windows = self._windows(epoch)
        rows = np.concatenate([self._global_rows(blocks)[perm] for blocks, perm in windows])
        rows = rows[: self.samples_per_epoch].reshape(self.batches_per_epoch, self.batch_size)
        rows.sort(axis=1)
        return windows, rows

    def rows(self, epoch: int) -> np.ndarray:
        """Global row numbers (shard by shard, as in the manifest) of the images this rank yields in `epoch`, in
        order; batch b is rows[b*batch_size:(b+1)*batch_size]. Reads nothing."""
        return self._plan(epoch)[1].reshape(-1)

    # -- reading
    def _memory(self, shards) -> None:
        """Load the epoch's shards of this rank into one array (unless they are there already)."""
        key = tuple(sorted(int(s) for s in shards))
        self._check_process()
        if self._mem_key == key:
            return
        m = self.manifest
        self._mem = None
        mem = np.empty((int(self._counts[list(key)].sum()), m.channels, m.height, m.width), dtype=np.uint8)
        delta = np.zeros(len(self._counts), dtype=np.int64)
        p = 0
        for s in key:
            c = int(self._counts[s])
            self._read(s, 0, c, mem[p:p + c])
            delta[s] = p - self._offsets[s]
            p += c
        self._mem, self._mem_key, self._mem_delta = mem, key, delta
        self._keep_only(key)

    def _keep_only(self, shards) -> None:
        """Close the files (and drop the mappings) of shards this rank does not read this epoch."""
        keep = {int(s) for s in shards}
        for s in [s for s in self._files if s not in keep]:
            self._dsets.pop(s, None)
            self._views.pop(s, None)
            self._files.pop(s).close()

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Any, Any]]:
        """Yield (images uint8 [B, C, H, W], labels int64 [B] or None) torch tensors: `batches_per_epoch` batches
        minus `start_batch` (skipped without reading anything for them)."""
        import torch

        if not 0 <= start_batch <= self.batches_per_epoch:
            raise HvdganError(f"start_batch: must be in 0..{self.batches_per_epoch}, got {start_batch}")
        m, B = self.manifest, self.batch_size
        shape = (B, m.channels, m.height, m.width)
        windows, rows = self._plan(epoch)
        shards = self.shards_of(epoch)
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1  # [batches, B]
        labels_all = self._labels

        def labels(b: int):
            return torch.from_numpy(labels_all[rows[b]]) if labels_all is not None else None

        if start_batch >= self.batches_per_epoch:
            return
        if self.in_memory:
            self._memory(shards)
            mem, pos = self._mem, rows + self._mem_delta[shard_of]
            for b in range(start_batch, self.batches_per_epoch):
                images = torch.empty(shape, dtype=torch.uint8)
                mem.take(pos[b], 0, images.numpy(), "clip")
                yield images, labels(b)
            return

        self._check_process()
        self._keep_only(shards)
        views = {int(s): self._view(int(s)) for s in shards} if self.direct and m.compression == "none" else {}
        if views and all(v is not None for v in views.values()):
            # runs of images of one shard within each batch (batches are in storage order): one gather per run
            nb = self.batches_per_epoch
            flat_s, flat_l = shard_of.reshape(-1), (rows - self._offsets[shard_of]).reshape(-1)
            change = np.ones(rows.shape, dtype=bool)
            change[:, 1:] = shard_of[:, 1:] != shard_of[:, :-1]
            change[:start_batch] = False
            starts = np.flatnonzero(change.reshape(-1)).tolist() + [nb * B]
            runs: list[list] = [[] for _ in range(nb)]
            for lo, hi in zip(starts[:-1], starts[1:]):
                b = lo // B
                runs[b].append((views[int(flat_s[lo])], flat_l[lo:hi], lo - b * B, hi - b * B))
            for b in range(start_batch, nb):
                images = torch.empty(shape, dtype=torch.uint8)
                out = images.numpy()
                for view, idx, lo, hi in runs[b]:
                    view.take(idx, 0, out[lo:hi], "clip")
                yield images, labels(b)
            return

        # streaming through HDF5: windows are read whole into alternating halves of a buffer
        ends = np.cumsum([len(perm) for _, perm in windows])
        cap = int(max(len(perm) for _, perm in windows))
        buf = self._bufs.pop() if self._bufs and len(self._bufs[-1]) >= 2 * cap else \
            np.empty((2 * cap,) + shape[1:], dtype=np.uint8)
        # position in buf of each of the rank's images, indexed by the image's place among the rank's shards
        base = np.zeros(len(self._counts), dtype=np.int64)
        base[shards] = np.concatenate([[0], np.cumsum(self._counts[shards])[:-1]]) - self._offsets[shards]
        where = np.full(int(self._counts[shards].sum()), -1, dtype=np.int64)
        at = rows + base[shard_of]
        loaded = -1
        try:
            for b in range(start_batch, self.batches_per_epoch):
                last = int(np.searchsorted(ends, (b + 1) * B - 1, side="right"))
                first = int(np.searchsorted(ends, b * B, side="right"))
                for w in range(max(loaded + 1, first), last + 1):
                    blocks, perm = windows[w]
                    p = (w % 2) * cap
                    for s, a, e in blocks:
                        self._read(s, a, e, buf[p:p + e - a])
                        where[self._offsets[s] + base[s] + a:self._offsets[s] + base[s] + e] = np.arange(p, p + e - a)
                        p += e - a
                    loaded = w
                images = torch.empty(shape, dtype=torch.uint8)
                buf.take(where[at[b]], 0, images.numpy(), "clip")
                yield images, labels(b)
        finally:
            self._bufs.append(buf)
