"""What this rank may use of its node: CPU threads and memory, as the allocation (Slurm, cgroups,
taskset, OMP_NUM_THREADS) says, not as the node's totals say.

- Threads: OMP_NUM_THREADS when it is set; otherwise the CPUs in this process's affinity mask, shared
  among the ranks on the node whose masks overlap it (Slurm's --cpus-per-task with binding gives each rank
  its own CPUs; mpirun --bind-to none or horovodrun give all of them the node's, to be split).
- Memory: the smallest of the node's RAM, the cgroup's limit (v2 memory.max or v1 memory.limit_in_bytes)
  and Slurm's --mem / --mem-per-cpu, shared among the ranks on the node (Horovod's local size).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def omp_threads(env=os.environ) -> int | None:
    value = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def threads_for(mine: set[int], neighbours: list[set[int]], env=os.environ) -> int:
    """Threads for a rank with CPU set `mine`, given the CPU sets of every rank on its node (itself
    included)."""
    omp = omp_threads(env)
    if omp:
        return omp
    sharing = sum(1 for other in neighbours if other & mine) or 1
    return max(1, len(mine) // sharing)


def default_threads(hvd) -> int:
    """Collective (every rank calls it): this rank's share of the CPUs it may run on."""
    mine = affinity()
    everyone = hvd.allgather_object((socket.gethostname(), sorted(mine)), name="hvdgan.affinity")
    host = socket.gethostname()
    return threads_for(mine, [set(cpus) for h, cpus in everyone if h == host])


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 or v1), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: walk up from this cgroup; the tightest limit on the way counts
            p = Path("/sys/fs/cgroup") / path.lstrip("/")
            while True:
                try:
                    value = (p / "memory.max").read_text().strip()
                    if value.isdigit():
                        limits.append(int(value))
                except OSError:
                    pass
                if p == Path("/sys/fs/cgroup") or p.parent == p:
                    break
                p = p.parent
        elif "memory" in controllers.split(","):
            for base in (Path("/sys/fs/cgroup/memory") / path.lstrip("/"), Path("/sys/fs/cgroup/memory")):
                try:
                    value = int((base / "memory.limit_in_bytes").read_text().strip())
                    if value < 1 << 60:  # "unlimited" is a huge page-aligned number
                        limits.append(value)
                        break
                except (OSError, ValueError):
                    pass
    return min(limits) if limits else None


def _slurm_limit(env=os.environ) -> int | None:
    """--mem (SLURM_MEM_PER_NODE) or --mem-per-cpu x CPUs on the node, in bytes (Slurm gives MB)."""
    per_node = env.get("SLURM_MEM_PER_NODE", "")
    if per_node.isdigit() and int(per_node) > 0:
        return int(per_node) << 20
    per_cpu, cpus = env.get("SLURM_MEM_PER_CPU", ""), env.get("SLURM_CPUS_ON_NODE", "")
    if per_cpu.isdigit() and cpus.isdigit() and int(per_cpu) > 0:
        return int(per_cpu) * int(cpus) << 20
    return None


def memory_limit(env=os.environ) -> int:
    """Bytes the processes of this job on this node may use together."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 1 << 34
    return min(x for x in (ram, _cgroup_limit(), _slurm_limit(env)) if x)


def memory_budget(local_size: int, fraction: float = 0.5, env=os.environ) -> int:
    """Bytes one rank may hold in memory: half of the job's memory on the node, split among its ranks."""
    return int(memory_limit(env) * fraction) // max(1, local_size)
