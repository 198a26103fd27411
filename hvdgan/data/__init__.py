"""Sharded HDF5 datasets: one module a job (docs/data-format.md writes the format down).

    format     the format: constants, shard names, chunking, the manifest, shard-against-manifest checks
    sources    what `prepare` reads: image folders, .npy/.npz, the digits demo, in-memory arrays; which is which
    cifar      the CIFAR-10 python archive or its folder, unpickled safely
    images     the sources' transforms (to NCHW, channel conversion, crop and resize)
    write      the writer: write_source, write_dataset (workers; every rank under a launcher)
    check      `hvdgan data check` and read_all (every image back in source order)
    deal       which images each rank reads in an epoch, in which order (reads nothing)
    read       the rank-aware ShardedReader (memory, mapped and streamed read paths)
    shardio    one shard file: opened once checked, rows read through HDF5, or mapped from the file
    tensors    the torch side: to_float

Nothing here imports torch or Horovod at import time: `prepare`'s worker processes import this package
and need only numpy and h5py. h5py files are opened lazily, in the process that reads them, never before
a fork. The names below are the package's public interface.
"""

from .check import check_dataset, read_all
from .format import (COMPRESSIONS, DEFAULT_SHARDS, FORMAT, HOLDOUT, MANIFEST, SHUFFLE_WINDOW, VERSION, Manifest,
                     ShardRecord, chunk_rows_for, open_manifest, sha256_file, shard_name)
from .read import ShardedReader
from .sources import ArraySource, open_source
from .tensors import to_float
from .write import plan_shards, write_dataset, write_source

__all__ = ["ArraySource", "COMPRESSIONS", "DEFAULT_SHARDS", "FORMAT", "HOLDOUT", "MANIFEST", "Manifest",
           "SHUFFLE_WINDOW", "ShardRecord", "ShardedReader", "VERSION", "check_dataset", "chunk_rows_for",
           "open_manifest", "open_source", "plan_shards", "read_all", "sha256_file", "shard_name", "to_float",
           "write_dataset", "write_source"]
