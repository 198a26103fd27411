"""The sharded HDF5 format: constants, shard names and chunking, the manifest, and the checks that a shard
file agrees with its manifest (docs/data-format.md writes the format down).

No torch and no Horovod here: `prepare`'s worker processes import this package and need only numpy and
h5py. h5py files are opened lazily, in the process that reads them, never before a fork.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import HvdganError

FORMAT = "hvdgan-shards"
VERSION = 1
MANIFEST = "manifest.json"
HOLDOUT = "holdout"  # the held-out split of `hvdgan prepare --holdout`: a dataset of its own in DIR/holdout
LAYOUT = "NCHW"
COMPRESSIONS = ("none", "gzip", "lzf")
GZIP_LEVEL = 4
CHUNK_BYTES = 1 << 20  # target size of one chunk (a block of whole images): ~1 MiB
MAX_CHUNK_ROWS = 1024
DEFAULT_SHARDS = 16
SHUFFLE_WINDOW = 4096  # samples shuffled together when streaming from the files
SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")
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
    if root.exists() and not root.is_dir():
        raise HvdganError(f"{root}: a file, not a dataset directory (one that `hvdgan prepare SOURCE DIR` wrote)")
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


def open_shard(path: Path, mode: str = "r"):
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


def check_file_size(m: Manifest, i: int) -> None:
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


def check_shard_structure(m: Manifest, i: int, f) -> None:
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


def labels_outside(m: Manifest, i: int, labels: np.ndarray) -> str | None:
    """The problem with shard i's labels, if any is not the index of one of the manifest's label names."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(m.labels)):
        return f"{m.shard_path(i)}: labels outside 0..{len(m.labels) - 1}"
    return None
