"""SyncBatchNorm that also runs on the CPU.

Horovod's hvd.SyncBatchNorm uses torch.batch_norm_stats and friends, which have CUDA kernels only.
On a GPU we use it as is; on the CPU the same global statistics come from one differentiable
allreduce (Horovod's allreduce has a backward: the sum of the gradients over ranks), which is what
the CUDA path computes in its forward and backward.
"""

from __future__ import annotations

import torch
from torch import nn

import horovod.torch as hvd


class SyncBatchNorm(hvd.SyncBatchNorm):
    sync_name = "hvdgan.syncbn"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.is_cuda:
            return super().forward(input)
        if not self.training:
            return self._run_bn(input)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        # Numerically stable global statistics: each rank's mean and sum of squared deviations from it
        # (two passes over its own data, in float64), merged over ranks with one differentiable allreduce
        # (Chan et al.): M2 = sum_r [M2_r + n_r (mean_r - mean)^2], written with sums so that one Sum does it.
        # E[x^2] - mean^2 in float32 loses every digit when |mean| >> std (mean 30, std 0.003: NaN).
        x = input.double()  # (the CPU path: BatchNorm's share of a step is small, float64 costs little)
        n_local = input.numel() // c
        mean_local = x.mean(dims)
        m2_local = ((x - mean_local.view((1, c) + (1,) * (input.dim() - 2))) ** 2).sum(dims)
        count = torch.tensor([float(n_local)], dtype=torch.float64)
        local = torch.cat([mean_local * n_local, m2_local + n_local * mean_local * mean_local, count])
        # the merge's cancellation is relative to float64 (1e-16), far below float32's resolution of x
        total = hvd.allreduce(local, op=hvd.Sum, name=self.sync_name)  # differentiable
        n = total[-1]
        mean64 = total[:c] / n
        var64 = (total[c:2 * c] / n - mean64 * mean64).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                # momentum=None: a cumulative moving average, as nn.BatchNorm2d
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.lerp_(mean64.detach().to(self.running_mean.dtype), momentum)
                unbiased = var64.detach() * n / (n - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)  # unbiased, as BatchNorm2d
        shape = (1, c) + (1,) * (input.dim() - 2)
        out = (x - mean64.view(shape)) * torch.rsqrt(var64.view(shape) + self.eps)  # float64, then cast
        if self.affine:
            out = out * self.weight.double().view(shape) + self.bias.double().view(shape)
        return out.to(input.dtype)


def convert(module: nn.Module, _counter: list | None = None) -> nn.Module:
    """Replace every BatchNorm2d in `module` with SyncBatchNorm, keeping weights and statistics. Each
    layer's allreduce gets its own name, the same on every rank (layers are visited in order)."""
    counter = _counter if _counter is not None else [0]
    if isinstance(module, nn.BatchNorm2d):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.sync_name = f"hvdgan.syncbn.{counter[0]}"
        counter[0] += 1
        return new.to(module.weight.device if module.affine else module.running_mean.device)
    for name, child in module.named_children():
        module.add_module(name, convert(child, counter))
    return module
