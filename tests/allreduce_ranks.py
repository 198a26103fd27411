"""Run on every rank: allreduce of the rank numbers must equal 0 + 1 + ... + (size - 1) everywhere."""

import torch

import horovod.torch as hvd

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank())]), op=hvd.Sum, name="ranks").item()
expected = hvd.size() * (hvd.size() - 1) / 2
print(f"rank {hvd.rank()} of {hvd.size()}: sum of ranks {total:g} (expected {expected:g})", flush=True)
assert total == expected, (total, expected)
