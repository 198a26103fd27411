"""One shard file, as the reader uses it: opened once checked against the manifest; its images read through
HDF5 (any compression), or mapped straight from the file where they are stored raw and in order (as
`hvdgan prepare` writes uncompressed shards). h5py is imported when used."""

from __future__ import annotations

import numpy as np

from ..errors import HvdganError
from .format import MANIFEST, check_file_size, check_shard_structure, labels_outside, open_shard, sha256_file


def open_checked(m, i: int, verify: bool, labels: bool):
    """Shard i of manifest `m`, opened read-only once its size (with `verify`, its sha256 too), its structure
    and (with `labels`) its labels are checked against the manifest: (the h5py file, its labels or None)."""
    check_file_size(m, i)
    if verify and sha256_file(m.shard_path(i)) != m.shards[i].sha256:
        raise HvdganError(f"{m.shard_path(i)}: sha256 does not match {MANIFEST}: the file changed or is corrupt; "
                          "restore it or re-create the dataset")
    f = open_shard(m.shard_path(i))
    try:
        check_shard_structure(m, i, f)
        lab = f["labels"][:] if labels else None
        problem = labels_outside(m, i, lab) if labels else None
        if problem:
            raise HvdganError(problem)
    except BaseException:
        f.close()
        raise
    return f, lab


def read_rows_into(dset, a: int, b: int, out: np.ndarray, path) -> None:
    """Rows a..b-1 of the images dataset `dset` into `out` (C-contiguous), through HDF5."""
    import h5py

    dsid = dset.id
    try:
        fspace = dsid.get_space()
        fspace.select_hyperslab((a, 0, 0, 0), (b - a,) + out.shape[1:])
        dsid.read(h5py.h5s.create_simple(out.shape), fspace, out)
    except Exception as exc:
        raise HvdganError(f"{path}: images rows {a}..{b - 1} cannot be read ({exc}); "
                          "the file is corrupt: run `hvdgan data check` and re-create the dataset") from None


def map_images(m, i: int, d) -> np.ndarray | None:
    """Shard i's images (dataset `d` of manifest `m`) as a read-only array mapped from the file, when they are
    stored raw and in order (contiguous, or chunks of whole images one after the other); else None."""
    row = m.bytes_per_image
    n = int(m.shards[i].count)
    try:
        dsid = d.id
        if dsid.get_create_plist().get_nfilters() != 0:
            return None
        start = dsid.get_offset()  # contiguous layout
        if start is None and d.chunks is not None and d.chunks[1:] == d.shape[1:]:
            rows = d.chunks[0]
            chunks = [dsid.get_chunk_info(j) for j in range(dsid.get_num_chunks())]
            start = chunks[0].byte_offset if chunks else None
            if len(chunks) != -(-n // rows) or any(
                    c.chunk_offset[0] != j * rows or c.byte_offset != start + j * rows * row
                    or c.size != rows * row for j, c in enumerate(chunks)):
                start = None
        if start is None or start + n * row > m.shards[i].bytes:
            return None
        import mmap

        with open(m.shard_path(i), "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(mm, dtype=np.uint8, count=n * row, offset=start).reshape(n, m.channels, m.height, m.width)
    except (OSError, ValueError, AttributeError):
        return None
