"""Model parallelism inside a node: put G and D, or their named blocks, on different devices.

A placement is a comma-separated list of `NET[.BLOCK]=DEVICE` entries, NET being G or D, BLOCK one
of the network's blocks (G: stem, body, out; D: trunk, head), DEVICE `cpu` or `gpuK`: slot K of this
rank's GPU group. With k GPU slots in use, the rank with local rank r owns GPUs k*r .. k*r+k-1 (or,
when the launcher already gave each rank exactly its own k GPUs through CUDA_VISIBLE_DEVICES, as
Slurm's --gpus-per-task does, the k GPUs it sees). Entries for a block override the entry for its
network; what is not named goes where the network goes, and a network not named at all goes to
the rank's default device.

    G=gpu0,D=gpu1              G on the first GPU of the rank's group, D on the second
    G=gpu0,D=cpu               the seed's example: G on a GPU, D on the CPU
    G=gpu0,D.trunk=gpu1,D.head=cpu

Activations cross devices in forward (a pre-hook moves a block's input to the block's device) and
autograd carries gradients back; the Horovod optimizers reduce parameters wherever they live.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import HvdganError
from .models import Discriminator, Generator

BLOCKS = {"G": Generator.BLOCKS, "D": Discriminator.BLOCKS}
_DEVICE = re.compile(r"^(cpu|gpu(\d+))$")


@dataclass
class Placement:
    """Parsed placement: {(net, block or None): "cpu" | "gpuK"}."""

    entries: dict = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: str | None) -> "Placement":
        entries = {}
        for item in (text or "").split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise HvdganError(f"--placement: {item!r} is not NET[.BLOCK]=DEVICE (e.g. G=gpu0,D=cpu)")
            target, device = (s.strip() for s in item.split("=", 1))
            net, _, block = target.partition(".")
            if net not in BLOCKS:
                raise HvdganError(f"--placement: unknown network {net!r} in {item!r}: use G or D")
            if block and block not in BLOCKS[net]:
                raise HvdganError(f"--placement: unknown block {target!r}: {net}'s blocks are "
                                  f"{', '.join(net + '.' + b for b in BLOCKS[net])}")
            if not _DEVICE.match(device):
                raise HvdganError(f"--placement: unknown device {device!r} in {item!r}: use cpu or gpuK "
                                  "(K = GPU slot of this rank: gpu0, gpu1, ...)")
            key = (net, block or None)
            if key in entries:
                raise HvdganError(f"--placement: {target} is placed twice")
            entries[key] = device
        return cls(entries, text or "")

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def gpus_per_rank(self) -> int:
        slots = [int(d[3:]) for d in self.entries.values() if d.startswith("gpu")]
        return max(slots) + 1 if slots else 0

    def slot_of(self, net: str, block: str) -> str | None:
        return self.entries.get((net, block), self.entries.get((net, None)))


def gpu_group(local_rank: int, local_size: int, per_rank: int, visible: int) -> list[int]:
    """The CUDA device indices that rank `local_rank` of `local_size` ranks on a node owns, with
    `per_rank` GPUs each and `visible` GPUs visible to the process."""
    if per_rank == 0:
        return []
    if visible == per_rank:  # the launcher already narrowed CUDA_VISIBLE_DEVICES to this rank's group
        return list(range(per_rank))
    need = per_rank * local_size
    if need > visible:
        fit = visible // per_rank
        raise HvdganError(
            f"--placement uses {per_rank} GPU(s) per rank and {local_size} rank(s) run on this node: "
            f"{need} GPUs needed, {visible} visible. At most {fit} rank(s) per node fit "
            f"(e.g. horovodrun -np {max(fit, 1)} ... or Slurm --gpus-per-task={per_rank}).")
    return list(range(per_rank * local_rank, per_rank * local_rank + per_rank))


def block_devices(placement: Placement, local_rank: int, local_size: int, default: torch.device,
                  visible: int | None = None) -> dict[str, dict[str, torch.device]]:
    """{"G": {block: device}, "D": {block: device}} for this rank."""
    if visible is None:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    group = gpu_group(local_rank, local_size, placement.gpus_per_rank, visible)

    def device(slot: str | None) -> torch.device:
        if slot is None:
            return default
        if slot == "cpu":
            return torch.device("cpu")
        return torch.device("cuda", group[int(slot[3:])])

    return {net: {b: device(placement.slot_of(net, b)) for b in blocks} for net, blocks in BLOCKS.items()}


def _move_input(device: torch.device):
    def hook(module, args):
        return tuple(a.to(device, non_blocking=True) if torch.is_tensor(a) else a for a in args)

    return hook


def place(model: nn.Sequential, devices: dict[str, torch.device]) -> nn.Sequential:
    """Move each named block to its device; blocks on a device other than their predecessor's get a
    forward pre-hook that moves their input there (autograd moves the gradient back)."""
    previous = None
    for name, block in model.named_children():
        dev = devices[name]
        block.to(dev)
        if previous is None or dev != previous:
            block.register_forward_pre_hook(_move_input(dev))
        previous = dev
    return model


def describe(devices: dict[str, dict[str, torch.device]]) -> str:
    return "; ".join(f"{net}: " + ", ".join(f"{b}@{d}" for b, d in blocks.items()) for net, blocks in devices.items())
