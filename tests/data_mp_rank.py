"""Run by every rank of tests/test_data_mp.py: read two epochs of a sharded dataset and record what was read.

usage: data_mp_rank.py DATASET OUT_DIR BATCH_SIZE
Each batch is followed by an allreduce, as in training: ranks with unequal batch counts would hang here.
"""

import json
import sys

import numpy as np
import torch

from hvdgan.dist import horovod as distributed
from hvdgan.data import ShardedReader

root, out, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
distributed.init()
h = distributed.hvd()
rank, size = h.rank(), h.size()
reader = ShardedReader(root, rank=rank, size=size, batch_size=batch_size, seed=7, in_memory=rank == 0)
result = {"rank": rank, "size": size, "batches_per_epoch": reader.batches_per_epoch, "epochs": {}}
for epoch in (0, 1):
    seen, batches = [], 0
    for images, labels in reader.epoch(epoch):
        x = images.numpy()
        ids = x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)
        assert np.array_equal(labels.numpy(), ids % 10), "labels do not belong to their images"
        seen += ids.tolist()
        batches += 1
        h.allreduce(torch.ones(1), name=f"step.{epoch}.{batches}")
    result["epochs"][str(epoch)] = {"batches": batches, "ids": seen, "shards": reader.shards_of(epoch).tolist()}
with open(f"{out}/rank-{rank}.json", "w") as f:
    json.dump(result, f)
