"""`hvdgan info`: what is installed, what Horovod was built with, and the world each rank sees."""

from __future__ import annotations

import json
import platform
import sys

import click

from .dist import horovod as dist
from .errors import HvdganError


def versions() -> dict:
    import h5py
    import mpi4py
    import torch
    import torchvision
    import horovod

    try:
        from mpi4py import MPI  # noqa: F401  (imports the MPI library; fine outside a launcher too)

        mpi_lib = MPI.Get_library_version().strip().splitlines()[0]
    except Exception as exc:  # pragma: no cover - depends on the MPI install
        mpi_lib = f"unavailable ({exc})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "horovod": horovod.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "mpi4py": mpi4py.__version__,
        "mpi_library": mpi_lib,
    }


def gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = lambda values: "  ".join(str(v).ljust(widths[c]) for c, v in zip(columns, values))  # noqa: E731
    return "\n".join([line(columns), line("-" * widths[c] for c in columns)] + [line([r[c] for c in columns]) for r in rows])


def rank_placement(spec: str | None, local_rank: int, local_size: int) -> dict:
    """What `--placement spec` gives this rank: {"devices": ..., "placement_gpus": [...]}, or
    {"placement_error": message}. Never raises: it runs before a collective that every rank must join."""
    try:
        from .models.placement import Placement, block_devices, cuda_indices, default_device, describe

        devices = block_devices(Placement.parse(spec), local_rank, local_size, default_device("auto", local_rank),
                                visible=dist.gpu_count())
        return {"devices": describe(devices), "placement_gpus": cuda_indices(devices)}
    except HvdganError as exc:
        return {"placement_error": exc.message}
    except Exception as exc:  # noqa: BLE001 - shown in the table instead of leaving the other ranks waiting
        return {"placement_error": f"{type(exc).__name__}: {exc}"}


def placement_rows(world: list[dict]) -> list[dict]:
    return [{"rank": r["rank"], "local_rank": r["local_rank"], "host": r["host"],
             "gpus used": ",".join(map(str, r.get("placement_gpus") or [])) or "-",
             "devices": r["devices"] if "devices" in r else f"error: {r.get('placement_error')}"} for r in world]


def run(as_json: bool = False, placement: str | None = None) -> None:
    dist.init()
    h = dist.hvd()
    # collective: every rank takes part, with the devices its placement would give it (or why it cannot)
    world = dist.world(extra=rank_placement(placement, h.local_rank(), h.local_size()))
    if not dist.is_root():
        return
    bad = [r["rank"] for r in world if "placement_error" in r]
    failure = HvdganError(f"--placement {placement}: not usable on rank(s) {', '.join(map(str, bad))} "
                          "(see the placement table)") if bad else None
    report = {"versions": versions(), "horovod_build": dist.build_info(), "gpus": gpus(), "world": world,
              "placement": placement}
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        print()
        if failure:
            raise failure
        return
    v, b = report["versions"], report["horovod_build"]
    click.echo("hvdgan info")
    click.echo(f"  python       {v['python']}")
    click.echo(f"  torch        {v['torch']} (CUDA {v['torch_cuda'] or 'none'}), torchvision {v['torchvision']}")
    click.echo(f"  horovod      {v['horovod']}")
    click.echo(f"  h5py         {v['h5py']} (HDF5 {v['hdf5']})")
    click.echo(f"  mpi4py       {v['mpi4py']} ({v['mpi_library']})")
    click.echo(f"  frameworks   {', '.join(b['frameworks'])}")
    click.echo(f"  controllers  {', '.join(b['controllers'])} (in use: {world[0]['controller']})")
    click.echo(f"  tensor ops   {', '.join(b['tensor_operations'])}; CUDA built: {'yes' if b['cuda'] else 'no'}")
    click.echo(f"  GPUs         {', '.join(report['gpus']) or 'none'}")
    from .dist.topology import describe_nodes

    click.echo(f"world: {len(world)} rank(s) on {describe_nodes(world)}")
    click.echo(table(world, ["rank", "local_rank", "size", "local_size", "host", "pid", "controller", "gpus"]))
    click.echo("placement: " + (placement or "none (every block on the rank's default device)"))
    click.echo(table(placement_rows(world), ["rank", "local_rank", "host", "gpus used", "devices"]))
    if failure:
        sys.stdout.flush()
        raise failure
