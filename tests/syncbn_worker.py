"""Runs on every rank (np=2) or alone: SyncBatchNorm on ill-conditioned inputs (mean 30, std 0.003), against
nn.BatchNorm2d on the whole (concatenated) batch computed on each rank. Rank 0 writes the largest errors.

    syncbn_worker.py OUT MOMENTUM [OUT MOMENTUM ...]   (MOMENTUM: a number, or none for a cumulative average)"""

import json
import sys

import torch
from torch import nn

import horovod.torch as hvd

from hvdgan.models.syncbn import SyncBatchNorm


def check(out, momentum):
    gen = torch.Generator().manual_seed(0)
    full = (30 + 0.003 * torch.randn(8 * hvd.size(), 3, 5, 5, generator=gen, dtype=torch.float64)).float()
    weight_grad = torch.randn(full.shape, generator=gen, dtype=torch.float64).float()
    mine = slice(8 * hvd.rank(), 8 * (hvd.rank() + 1))

    ref = nn.BatchNorm2d(3, momentum=momentum).double()  # the reference: the whole batch, in float64
    sync = SyncBatchNorm(3, momentum=momentum)
    errors = {"out": 0.0, "grad": 0.0, "running_mean": 0.0, "running_var": 0.0}
    for step in range(3):
        batch = full + step  # a new batch each step, so that momentum=None (a cumulative average) shows
        x_ref = batch.double().requires_grad_()
        y_ref = ref(x_ref)
        (y_ref * weight_grad.double()).sum().backward()
        x = batch[mine].clone().requires_grad_()
        y = sync(x)
        (y * weight_grad[mine]).sum().backward()
        scale = x_ref.grad[mine].abs().max().item()
        errors["out"] = max(errors["out"], (y.double() - y_ref[mine]).abs().max().item())
        errors["grad"] = max(errors["grad"], (x.grad.double() - x_ref.grad[mine]).abs().max().item() / scale)
        errors["nan"] = bool(torch.isnan(y).any() or torch.isnan(x.grad).any())
    errors["running_mean"] = (sync.running_mean.double() - ref.running_mean).abs().max().item()
    errors["running_var"] = ((sync.running_var.double() - ref.running_var).abs().max()
                             / ref.running_var.abs().max()).item()
    if hvd.rank() == 0:
        with open(out, "w") as f:
            json.dump(errors, f)


hvd.init()
for i in range(1, len(sys.argv), 2):  # OUT MOMENTUM [OUT MOMENTUM ...]: one check each, in one launch
    check(sys.argv[i], None if sys.argv[i + 1] == "none" else float(sys.argv[i + 1]))
