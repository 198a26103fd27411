"""Model parallelism inside a node: put G and D, or their named blocks, on different devices.

A placement is a comma-separated list of `NET[.BLOCK]=DEVICE` entries, NET being G or D, BLOCK one
of the network's blocks (G: stem, body, out; D: trunk, head), DEVICE `cpu` or `gpuK`: slot K of this
rank's GPU group (not CUDA device K). The slots in use, gpu0 .. gpu(k-1), make a group of k GPUs per
rank: the rank with local rank r owns GPUs k*r .. k*r+k-1 of its node, or, when Slurm's srun already
gave each task exactly its own GPUs through CUDA_VISIBLE_DEVICES (`--gpus-per-task`), the GPUs it
sees. Entries for a block override the entry for its network; what is not named goes to the rank's
default device (the group's first GPU when the default is a GPU and the placement uses a group).

    G=gpu0,D=gpu1              G on the first GPU of the rank's group, D on the second
    G=gpu0,D=cpu               the seed's example: G on a GPU, D on the CPU
    G=gpu0,D.trunk=gpu1,D.head=cpu

Activations cross devices in forward (a pre-hook on a network's first block and on every block whose
device differs from its predecessor's moves the block's input there) and autograd carries gradients
back; the Horovod optimizers reduce parameters wherever they live. See docs/placement.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..errors import HvdganError
from .dcgan import Discriminator, Generator

BLOCKS = {"G": Generator.BLOCKS, "D": Discriminator.BLOCKS}
_DEVICE = re.compile(r"^(cpu|gpu(\d+))$")
OPTION = "--placement"


def _valid_targets() -> str:
    return ", ".join([*BLOCKS] + [f"{net}.{b}" for net, blocks in BLOCKS.items() for b in blocks])


@dataclass
class Placement:
    """Parsed placement: {(net, block or None): "cpu" | "gpuK"}."""

    entries: dict = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: "str | Placement | None") -> "Placement":
        if isinstance(text, Placement):
            return text
        entries = {}
        spec = (text or "").strip()

        def bad(why: str):
            raise HvdganError(f"{OPTION} {spec}: {why}", reason=why)

        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                bad(f"{item!r} is not NET[.BLOCK]=DEVICE (e.g. G=gpu0,D=cpu)")
            target, device = (s.strip() for s in item.split("=", 1))
            net, dot, block = (s.strip() for s in target.partition("."))
            net, device = net.upper(), device.lower()
            if net not in BLOCKS:
                bad(f"unknown network {target.partition('.')[0]!r} in {item!r}; "
                                  f"valid targets: {_valid_targets()}")
            if dot and block not in BLOCKS[net]:
                bad(f"unknown block {target!r}; {net}'s blocks are "
                                  f"{', '.join(net + '.' + b for b in BLOCKS[net])}")
            m = _DEVICE.match(device)
            if not m:
                hint = ""
                cuda = re.match(r"^cuda(?::(\d+))?$", device)
                if cuda:
                    k = int(cuda.group(1) or 0)
                    hint = f" (slots are per rank: gpu{k} is slot {k} of the rank's GPU group)"
                bad(f"unknown device {device!r} in {item!r}: use cpu or gpuK, K the "
                                  f"GPU slot of this rank: gpu0, gpu1, ...{hint}")
            if m.group(2) is not None:
                device = f"gpu{int(m.group(2))}"
            key = (net, block or None)
            if key in entries:
                bad(f"{net}{'.' + block if block else ''} is placed twice")
            entries[key] = device
        slots = sorted({int(d[3:]) for d in entries.values() if d.startswith("gpu")})
        if slots and slots != list(range(len(slots))):
            missing = next(f"gpu{i}" for i in range(slots[-1] + 1) if i not in slots)
            bad(f"{missing} is not used; GPU slots count from gpu0 within each rank's "
                              f"own group (gpu{slots[-1]} is slot {slots[-1]} of the group, not CUDA device "
                              f"{slots[-1]}): number the slots from gpu0 without gaps")
        return cls(entries, spec)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __str__(self) -> str:
        return ",".join(f"{net}{'.' + block if block else ''}={dev}" for (net, block), dev in self.entries.items())

    @property
    def gpus_per_rank(self) -> int:
        slots = [int(d[3:]) for d in self.entries.values() if d.startswith("gpu")]
        return max(slots) + 1 if slots else 0

    def slot_of(self, net: str, block: str) -> str | None:
        return self.entries.get((net, block), self.entries.get((net, None)))

    def on_gpu(self) -> list[str]:
        """The targets placed on a GPU slot, e.g. ["G", "D.head"]."""
        return [f"{net}{'.' + block if block else ''}" for (net, block), d in self.entries.items()
                if d.startswith("gpu")]


# ------------------------------------------------------------------------------------ GPU groups
def _gpus_per_task(env: Mapping[str, str]) -> int | None:
    """SLURM_GPUS_PER_TASK as a count ("2", "a100:2", "a100:1,v100:1"), or None."""
    value = env.get("SLURM_GPUS_PER_TASK", "").strip()
    if not value:
        return None
    try:
        return sum(int(part.rsplit(":", 1)[-1]) for part in value.split(","))
    except ValueError:
        return None


def launcher_gave_own_gpus(local_rank: int, visible: int, env: Mapping[str, str] | None = None) -> bool:
    """Whether srun bound this task to its own GPUs: Slurm's --gpus-per-task binds each task to its
    GPUs through CUDA_VISIBLE_DEVICES, so the task sees exactly SLURM_GPUS_PER_TASK of them. (mpirun
    inside a Slurm job starts its ranks from one daemon per node; they inherit the daemon's GPUs and
    SLURM_LOCALID, which then matches local rank 0 only: that rank gets GPUs 0..k-1 either way, and the
    others take the local-rank arithmetic, with its checks.)"""
    env = os.environ if env is None else env
    per_task = _gpus_per_task(env)
    return (env.get("CUDA_VISIBLE_DEVICES") is not None and per_task is not None and per_task == visible
            and env.get("SLURM_LOCALID") == str(local_rank))


def default_device(kind: str, local_rank: int) -> torch.device:
    """Where an unplaced network goes (`--device auto|cpu|cuda`): cuda:local_rank (modulo the GPUs this
    rank sees) when there is a GPU and the CPU otherwise, for auto."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise HvdganError("--device cuda: no CUDA device is visible to this rank")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def gpu_group(local_rank: int, local_size: int, per_rank: int, visible: int, narrowed: bool = False,
              spec: str = "") -> list[int]:
    """The CUDA device indices that rank `local_rank` of `local_size` ranks on a node owns, with
    `per_rank` GPUs each and `visible` GPUs visible to the process: k*r .. k*r+k-1, or 0 .. k-1 when
    the launcher `narrowed` the process to its own GPUs (CUDA_VISIBLE_DEVICES per task)."""
    if not 0 <= local_rank < local_size:
        raise ValueError(f"local rank {local_rank} is not in 0..{local_size - 1}")
    if per_rank < 0 or visible < 0:
        raise ValueError(f"negative GPU count: per_rank={per_rank}, visible={visible}")
    if per_rank == 0:
        return []
    label = f"{OPTION} {spec}" if spec else OPTION
    if visible == 0:
        raise HvdganError(f"{label}: places a network on a GPU, but this rank sees no CUDA GPU; "
                          "use cpu instead or run on a GPU node")
    if narrowed:
        if visible < per_rank:
            raise HvdganError(f"{label}: uses {per_rank} GPUs per rank, but the launcher gave this rank {visible}; "
                              f"ask for --gpus-per-task={per_rank}")
        return list(range(per_rank))
    need = per_rank * local_size
    if need > visible:
        fit = visible // per_rank
        if fit == 0:
            raise HvdganError(f"{label}: uses {per_rank} GPUs per rank, but this node has {visible} visible: no rank "
                              "fits; put some blocks on cpu or on fewer GPU slots")
        raise HvdganError(f"{label}: {per_rank} GPU(s) per rank x {local_size} ranks on this node = {need} GPUs, "
                          f"but {visible} are visible: at most {fit} rank(s) per node fit (horovodrun -np {fit} "
                          f"per node, or Slurm --ntasks-per-node={fit} --gpus-per-task={per_rank})")
    return list(range(per_rank * local_rank, per_rank * local_rank + per_rank))


def block_devices(placement: "Placement | str | None", local_rank: int, local_size: int,
                  default: "torch.device | str", visible: int | None = None,
                  env: Mapping[str, str] | None = None) -> dict[str, dict[str, torch.device]]:
    """{"G": {block: device}, "D": {block: device}} for this rank. `visible`: the CUDA devices this
    process sees (default: torch's count); `env`: the environment (default: os.environ), read to tell
    whether srun gave the rank its own GPUs."""
    placement = Placement.parse(placement)
    default = torch.device(default)
    if visible is None:
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = os.environ if env is None else env
    per_rank = placement.gpus_per_rank
    spec = placement.text or str(placement)  # as the user wrote it
    if per_rank and visible == 0:
        cvd = env.get("CUDA_VISIBLE_DEVICES")
        why = ("torch was built without CUDA" if torch.version.cuda is None
               else f"CUDA_VISIBLE_DEVICES={cvd!r}" if cvd is not None else "no CUDA device or driver")
        raise HvdganError(f"{OPTION} {spec}: puts {', '.join(placement.on_gpu())} on a GPU, but this rank sees no "
                          f"CUDA GPU ({why}); use cpu instead or run on a GPU node")
    narrowed = per_rank > 0 and launcher_gave_own_gpus(local_rank, visible, env)
    group = gpu_group(local_rank, local_size, per_rank, visible, narrowed=narrowed, spec=spec)
    if group and default.type == "cuda":
        default = torch.device("cuda", group[0])  # stay inside the rank's own group

    def device(slot: str | None) -> torch.device:
        if slot is None:
            return default
        if slot == "cpu":
            return torch.device("cpu")
        return torch.device("cuda", group[int(slot[3:])])

    return {net: {b: device(placement.slot_of(net, b)) for b in blocks} for net, blocks in BLOCKS.items()}


# ------------------------------------------------------------------------------------ placing a model
class MoveInput:
    """Forward pre-hook: move a block's tensor inputs to `device`. Floating inputs also take the dtype
    of the block's parameters unless autocast runs on that device (a bf16 activation from an autocast
    GPU block meets float32 weights on the CPU). Copies to the CPU are blocking: a non-blocking GPU to
    CPU copy would hand the CPU block memory that the GPU may still be writing."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def __call__(self, module: nn.Module, args: tuple):
        dev = self.device
        dtype = None
        if not (torch.amp.is_autocast_available(dev.type) and torch.is_autocast_enabled(dev.type)):
            param = next((p for p in module.parameters() if p.is_floating_point()), None)
            dtype = param.dtype if param is not None else None
        non_blocking = dev.type == "cuda"

        def move(a):
            if not torch.is_tensor(a):
                return a
            if dtype is not None and a.is_floating_point() and a.dtype != dtype:
                return a.to(device=dev, dtype=dtype, non_blocking=non_blocking)
            return a.to(dev, non_blocking=non_blocking)

        return tuple(move(a) for a in args)

    def __repr__(self) -> str:
        return f"MoveInput({self.device})"


def _device_of(block: nn.Module, fallback: torch.device | None) -> torch.device:
    for t in list(block.parameters()) + list(block.buffers()):
        return t.device
    return fallback or torch.device("cpu")


def place(model: nn.Sequential, devices: Mapping[str, "torch.device | str"]) -> nn.Sequential:
    """Move each named block to its device (a torch.device or a string such as "cpu" or "cuda:1"); a
    block not in `devices` stays where it is. The first block, and every block on a device other than
    its predecessor's, gets a forward pre-hook that moves its input there (autograd moves the gradient
    back). Placing again replaces the hooks of the earlier placement."""
    names = [name for name, _ in model.named_children()]
    unknown = [name for name in devices if name not in names]
    if unknown:
        raise HvdganError(f"{OPTION}: unknown block {unknown[0]!r} of {type(model).__name__}; its blocks are "
                          f"{', '.join(names)}")
    previous = None
    for name, block in model.named_children():
        for key, hook in list(block._forward_pre_hooks.items()):  # an earlier placement's hook
            if isinstance(hook, MoveInput):
                del block._forward_pre_hooks[key]
        dev = torch.device(devices[name]) if name in devices else _device_of(block, previous)
        block.to(dev)
        if previous is None or dev != previous:
            block.register_forward_pre_hook(MoveInput(dev))
        previous = dev
    return model


def evaluation_device(devices: dict[str, dict[str, torch.device]]) -> torch.device:
    """Where the run's evaluation (Inception) runs: with G's first block, whose output it reads, on this
    rank's own devices (its GPU group under a multi-GPU placement, not the GPU numbered by its local rank)."""
    return next(iter(devices["G"].values()))


def describe(devices: dict[str, dict[str, torch.device]]) -> str:
    """"G@cuda:0; D: trunk@cuda:1, head@cpu": one device per network when all its blocks share it."""
    parts = []
    for net, blocks in devices.items():
        where = {str(d) for d in blocks.values()}
        if len(where) == 1:
            parts.append(f"{net}@{where.pop()}")
        else:
            parts.append(f"{net}: " + ", ".join(f"{b}@{d}" for b, d in blocks.items()))
    return "; ".join(parts)


def cuda_indices(devices: dict[str, dict[str, torch.device]]) -> list[int]:
    """The CUDA device indices a rank's placement uses, in order."""
    return sorted({d.index for blocks in devices.values() for d in blocks.values()
                   if d.type == "cuda" and d.index is not None})
