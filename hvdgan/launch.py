"""Compose launcher command lines (horovodrun, mpirun, srun) and run them under a time-out.

Used by `hvdgan launch` and by the multi-process tests, so both start ranks the same way.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

LAUNCHERS = ("horovodrun", "mpirun", "srun")

# Variables Horovod, NCCL and hvdgan read on every rank: mpirun does not forward the environment by itself.
# The one list: slurm/train.sh repeats it (bash cannot import it) and docs/cluster.md quotes it;
# tests/test_docs.py checks both against these two tuples.
EXPORT_PREFIXES = ("HOROVOD_", "NCCL_", "HVDGAN_", "HDF5_", "OMP_", "PYTHON", "CUDA_")
EXPORT_NAMES = ("PATH", "LD_LIBRARY_PATH")


def _tool(name: str) -> str:
    """A launcher from the running interpreter's environment first (the venv's horovodrun), then PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.access(here, os.X_OK) else (shutil.which(name) or name)


def exported_names(env=os.environ) -> list[str]:
    return sorted(k for k in env if k.startswith(EXPORT_PREFIXES) or k in EXPORT_NAMES)


def hostfile_hosts(path: str) -> list[str]:
    """Host names of an Open MPI / Horovod hostfile (`host slots=4` or `host:4` lines, # comments)."""
    names = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line.split()[0].split(":")[0])
    return names


@dataclass
class Launch:
    np: int
    launcher: str = "horovodrun"
    controller: str | None = None  # "gloo" or "mpi" (horovodrun only)
    hosts: str | None = None  # "host1:4,host2:4"
    hostfile: str | None = None

    def command(self, argv: list[str], env=os.environ) -> list[str]:
        if self.np < 1:
            raise ValueError(f"--np must be >= 1, got {self.np}")
        if self.launcher == "horovodrun":
            cmd = [_tool("horovodrun"), "-np", str(self.np)]
            if self.controller:
                cmd.append(f"--{self.controller}")
            if self.hostfile:
                cmd += ["--hostfile", self.hostfile]
            else:
                cmd += ["-H", self.hosts or f"localhost:{self.np}"]
            return cmd + argv
        if self.launcher == "mpirun":
            cmd = [_tool("mpirun")]
            if os.geteuid() == 0:
                cmd.append("--allow-run-as-root")
            cmd += ["-np", str(self.np), "--bind-to", "none", "--map-by", "slot"]
            if self.hostfile:
                cmd += ["--hostfile", self.hostfile]
            elif self.hosts:
                cmd += ["-H", self.hosts]
            else:
                cmd.append("--oversubscribe")
            for name in exported_names(env):
                cmd += ["-x", name]
            cmd += ["-mca", "pml", "ob1", "-mca", "btl", "^openib"]
            return cmd + argv
        if self.launcher == "srun":
            cmd = ["srun", "--mpi=pmix", f"--ntasks={self.np}"]
            # Slurm places tasks itself: hosts (from -H or an MPI/Horovod hostfile) only pick the nodes.
            names = hostfile_hosts(self.hostfile) if self.hostfile else (
                [h.split(":")[0] for h in self.hosts.split(",") if h] if self.hosts else [])
            if names:
                cmd.append("--nodelist=" + ",".join(dict.fromkeys(names)))
            return cmd + argv
        raise ValueError(f"unknown launcher {self.launcher!r}: choose one of {', '.join(LAUNCHERS)}")


def run(cmd: list[str], timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group; on time-out kill the whole group (a hung collective
    must not outlive its caller) and raise subprocess.TimeoutExpired."""
    if kwargs.pop("capture_output", False):
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ------------------------------------------------------------------------------------- hvdgan launch
def hvdgan_executable() -> str:
    """The `hvdgan` console script of the running environment (the venv's), so that every rank runs the
    same install as the launching command; PATH otherwise."""
    return _tool("hvdgan")


def train_argv(job: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What each rank runs for `hvdgan launch JOB -- EXTRA...`."""
    return [hvdgan_executable(), "train", "--job", str(job), *extra]


def compose(np: int, job: str, extra=(), launcher: str = "horovodrun", controller: str | None = None,
            hosts: str | None = None, hostfile: str | None = None, env=os.environ) -> list[str]:
    """The full launcher line for `hvdgan launch`. Gloo is a horovodrun mode: mpirun and srun start MPI
    ranks, so `--gloo` with them is an error rather than silently ignored."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if controller == "gloo" and launcher != "horovodrun":
        raise ValueError(f"--gloo needs --launcher horovodrun ({launcher} starts MPI ranks; use --mpi or leave it out)")
    if hosts and hostfile:
        raise ValueError("give --hosts or --hostfile, not both")
    spec = Launch(np=np, launcher=launcher, controller=controller if launcher == "horovodrun" else None,
                  hosts=hosts, hostfile=hostfile)
    return spec.command(train_argv(job, extra), env=env)


def quote(cmd: list[str]) -> str:
    return shlex.join(cmd)


def exec_command(cmd: list[str]) -> None:
    """Replace this process with the launcher: its exit status, and signals sent to it, are the caller's."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execvp(cmd[0], cmd)  # raises OSError (e.g. FileNotFoundError) when it cannot start
