"""Horovod set-up shared by every command: init, the launcher sanity check, world and build facts."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass

from ..errors import HvdganError


def hvd():
    """The horovod.torch module, imported lazily so that `hvdgan --help` stays fast."""
    import horovod.torch as hvd_torch

    return hvd_torch


def init() -> None:
    """Initialise Horovod (idempotent) and refuse a world that the launcher did not mean to make."""
    h = hvd()
    if not h.is_initialized():
        check_launch()
        # Open MPI busy-polls while a call waits. Horovod's background thread makes MPI calls every cycle
        # (HOROVOD_CYCLE_TIME), and on a CPU rank it shares the core with the compute thread, which a
        # poller that never yields slows down (docs/benchmarks.md). Set it to 0 to undo.
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        h.init()
    check_world(h.size())


# The launchers that join ranks into one world, and the variables each sets on every rank: (rank, size).
# The one list that both the srun guard (check_launch) and `prepare` (launcher_world) read. PMIx does not
# export the size; srun sets SLURM_STEP_NUM_TASKS (SLURM_NTASKS) to it.
LAUNCHER_ENV = {
    "horovodrun --gloo": ("HOROVOD_RANK", "HOROVOD_SIZE"),
    "Open MPI (mpirun, horovodrun --mpi)": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    "PMIx (srun --mpi=pmix)": ("PMIX_RANK", None),
    "PMI-2 (srun --mpi=pmi2)": ("PMI_RANK", "PMI_SIZE"),
}
LAUNCHER_VARS = tuple(rank for rank, _ in LAUNCHER_ENV.values())
SLURM_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")


def check_launch(env=os.environ) -> None:
    """Before hvd.init(): a multi-task Slurm step with none of the launchers' variables is plain srun.
    Open MPI would abort in MPI_Init with its own message (or each task would make a size-1 world)."""
    step_tasks = env.get("SLURM_STEP_NUM_TASKS", "")
    if step_tasks.isdigit() and int(step_tasks) > 1 and not any(k in env for k in LAUNCHER_VARS):
        check_world(1, env)


def check_world(size: int, env=os.environ) -> None:
    """Plain `srun` (no PMIx) starts N separate size-1 worlds: each would train alone. Say so and stop.

    Inside a Slurm job step, SLURM_STEP_NUM_TASKS is the number of tasks srun started. A world smaller
    than that means the tasks never met. (mpirun inside an allocation may run in a step of a different
    size; it sets OMPI_COMM_WORLD_SIZE, which then must match Horovod's size instead.)
    """
    step_tasks = env.get("SLURM_STEP_NUM_TASKS")
    if not step_tasks or not step_tasks.isdigit() or env.get("HOROVOD_ELASTIC") == "1":
        return  # (an elastic world's size changes; its ranks do not come from srun)
    expected = int(step_tasks)
    launcher_size = next((env[v] for _, v in LAUNCHER_ENV.values() if v and env.get(v, "").isdigit()), None)
    if size > 1 and launcher_size and int(launcher_size) == size:
        return
    if size != expected:
        raise HvdganError(
            f"Slurm started {expected} tasks (SLURM_STEP_NUM_TASKS={expected}) but Horovod sees a world of "
            f"size {size}: plain srun starts separate size-1 jobs. Launch with `srun --mpi=pmix` "
            "(check `srun --mpi=list`) or with mpirun/horovodrun inside the allocation."
        )


def launcher_world(env=os.environ) -> tuple[bool, int, int]:
    """(under a launcher?, rank, size) from the launcher's environment (LAUNCHER_ENV), without initialising
    Horovod: `prepare` decides from it whether to join a world."""
    for rank_var, size_var in LAUNCHER_ENV.values():
        if rank_var in env:
            size = env.get(size_var) if size_var else None
            size = size or next((env[k] for k in SLURM_SIZE_VARS if env.get(k)), "1")
            return True, int(env[rank_var]), int(size)
    return False, 0, 1


def is_root() -> bool:
    return hvd().rank() == 0


@dataclass
class RankInfo:
    rank: int
    local_rank: int
    size: int
    local_size: int
    host: str
    pid: int
    controller: str
    gpus: int


def controller() -> str:
    h = hvd()
    if h.mpi_enabled():
        return "MPI"
    if h.gloo_enabled():
        return "Gloo"
    return "?"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def world(extra: dict | None = None) -> list[dict]:
    """Every rank's view of the world, gathered to all ranks (a collective: call it on every rank).
    `extra`: more of this rank's facts (picklable values) to add to its entry."""
    h = hvd()
    mine = asdict(RankInfo(h.rank(), h.local_rank(), h.size(), h.local_size(), socket.gethostname(), os.getpid(),
                           controller(), gpu_count()))
    mine.update(extra or {})
    return h.allgather_object(mine, name="hvdgan.world")


def build_info() -> dict:
    """What this Horovod was built with (frameworks, controllers, tensor operations)."""
    h = hvd()
    return {
        "frameworks": ["PyTorch"],
        "controllers": [name for name, ok in (("MPI", h.mpi_built()), ("Gloo", h.gloo_built())) if ok],
        "tensor_operations": [name for name, ok in (("NCCL", h.nccl_built()), ("MPI", h.mpi_built()),
                                                     ("Gloo", h.gloo_built()), ("DDL", h.ddl_built()),
                                                     ("CCL", h.ccl_built())) if ok],
        "cuda": bool(h.cuda_built()),
        "rocm": bool(h.rocm_built()),
    }
