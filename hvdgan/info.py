"""`hvdgan info`: what is installed, what Horovod was built with, and the world each rank sees."""

from __future__ import annotations

import json
import platform
import sys

import click

from . import distributed as dist


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


def run(as_json: bool = False) -> None:
    dist.init()
    world = dist.world()  # collective: every rank takes part
    if not dist.is_root():
        return
    report = {"versions": versions(), "horovod_build": dist.build_info(), "gpus": gpus(), "world": world}
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        print()
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
    click.echo(f"world: {len(world)} rank(s)")
    click.echo(table(world, ["rank", "local_rank", "size", "local_size", "host", "pid", "controller", "gpus"]))
