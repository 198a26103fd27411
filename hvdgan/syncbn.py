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
        count = torch.tensor([input.numel() // c], dtype=input.dtype)
        local = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        total = hvd.allreduce(local, op=hvd.Sum, name=self.sync_name)  # differentiable
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)  # unbiased, as BatchNorm2d
        shape = (1, c) + (1,) * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


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
