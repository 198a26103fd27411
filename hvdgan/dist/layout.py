"""Horovod and channels_last tensors.

Horovod's collectives refuse tensors that are not contiguous ("Tensor is required to be contiguous."), and a
channels_last conv weight, its gradient and its Adam moments are not. On a GPU hvdgan trains channels_last by
default, so every tensor that goes through Horovod goes as a contiguous copy and comes back in its own layout:
  Contiguous                a Horovod compression wrapper, for the gradients' allreduce (hvd.DistributedOptimizer)
  broadcast_parameters      hvd.broadcast_parameters of a state dict
  broadcast_optimizer_state hvd.broadcast_optimizer_state
Contiguous tensors go through untouched (no copy): the CPU default and every 1-D or 2-D tensor.
"""

from __future__ import annotations

import torch


class Contiguous:
    """Wraps a Horovod compression (hvd.Compression.none / .fp16): the allreduce gets a contiguous tensor, and
    the gradient that comes back has the parameter's layout again (Adam then sees matching layouts)."""

    def __init__(self, inner):
        self.inner = inner

    def compress(self, tensor: torch.Tensor):
        compressed, ctx = self.inner.compress(tensor)
        if compressed.is_contiguous():
            return compressed, (ctx, None)
        return compressed.contiguous(), (ctx, tensor)

    def decompress(self, tensor: torch.Tensor, ctx) -> torch.Tensor:
        inner_ctx, like = ctx
        out = self.inner.decompress(tensor, inner_ctx)
        if like is None:
            return out
        return torch.empty_like(like, dtype=out.dtype).copy_(out)  # (empty_like keeps the strides)


def broadcast_parameters(hvd, state: dict, root_rank: int = 0) -> None:
    """hvd.broadcast_parameters(state, root_rank), also for non-contiguous tensors (written back in place)."""
    copies = {k: v.contiguous() for k, v in state.items() if torch.is_tensor(v) and not v.is_contiguous()}
    hvd.broadcast_parameters({**state, **copies}, root_rank=root_rank)
    for k, c in copies.items():
        state[k].copy_(c)


def broadcast_optimizer_state(hvd, optimizer, root_rank: int = 0) -> None:
    """hvd.broadcast_optimizer_state, with non-contiguous state tensors (Adam's moments of channels_last
    weights) broadcast as contiguous copies and put back in their layout."""
    if not optimizer.state_dict()["state"]:
        # a rank without state (not rank 0, after a resume) creates it as Horovod would, with a zero-gradient
        # step of the wrapped optimizer (no allreduce), but with gradients in the parameters' own layout
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        if type(optimizer).__module__.startswith("horovod."):
            super(type(optimizer), optimizer).step()
        else:
            optimizer.step()
    swapped = []
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and not value.is_contiguous():
                state[key] = value.contiguous()
                swapped.append((state, key, value))
    try:
        hvd.broadcast_optimizer_state(optimizer, root_rank=root_rank)
    finally:
        for state, key, original in swapped:
            original.copy_(state[key])
            state[key] = original
