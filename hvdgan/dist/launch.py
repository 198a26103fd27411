"""Compose launcher command lines (horovodrun, mpirun, srun) and run them under a time-out.

Used by `hvdgan launch` and by the multi-process tests, so both start ranks the same way.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from . import stop
from .hosts import check_slots, hostfile_hosts, hostfile_slots, parse_hosts

LAUNCHERS = ("horovodrun", "mpirun", "srun")

# Variables Horovod, NCCL and hvdgan read on every rank: mpirun does not forward the environment by itself.
# The one list: slurm/train.sh repeats it (bash cannot import it) and docs/cluster.md quotes it;
# tests/test_docs.py checks both against these two tuples.
EXPORT_PREFIXES = ("HOROVOD_", "NCCL_", "HVDGAN_", "HDF5_", "OMP_", "PYTHON", "CUDA_")
EXPORT_NAMES = ("PATH", "LD_LIBRARY_PATH")

# An elastic run's Gloo collectives give up after this many seconds (patches/: the rendezvous keeps Horovod's
# 30 s): a rank that waits on a peer which left to re-form the world sees the loss that much sooner.
GLOO_OP_TIMEOUT_ENV, GLOO_OP_TIMEOUT_S = "HOROVOD_GLOO_OP_TIMEOUT_SECONDS", 10


def _tool(name: str) -> str:
    """A launcher from the running interpreter's environment first (the venv's horovodrun), then PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.access(here, os.X_OK) else (shutil.which(name) or name)


# Open MPI settings `hvdgan launch --launcher mpirun` passes by default: Horovod's documented mpirun line (the
# ob1 PML over TCP and shared memory, no openib BTL, which misbehaves with fork()). On an InfiniBand cluster
# this keeps MPI traffic on TCP: a site changes it with HVDGAN_MPIRUN_MCA (e.g. "pml=ucx"; empty: pass none)
# or `hvdgan launch --mca KEY=VALUE` (repeatable; replaces the default).
DEFAULT_MCA = "pml=ob1 btl=^openib"


def mca_settings(mca=None, env=os.environ) -> list[tuple[str, str]]:
    """(key, value) pairs from `--mca` values, else HVDGAN_MPIRUN_MCA, else DEFAULT_MCA."""
    if mca:
        items, source = list(mca), "--mca"
    else:
        items, source = env.get("HVDGAN_MPIRUN_MCA", DEFAULT_MCA).split(), "HVDGAN_MPIRUN_MCA"
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{source}: {item!r} is not KEY=VALUE (e.g. pml=ucx)")
        pairs.append((key.strip(), value.strip()))
    return pairs


def iface_args(launcher: str, iface: str | None) -> list[str]:
    """The launcher's options that put rank-to-rank TCP traffic on one network interface (`--iface`,
    HVDGAN_NET_IFACE): Horovod's Gloo (HOROVOD_GLOO_IFACE), Open MPI's TCP BTL and out-of-band channel
    (btl_tcp_if_include, oob_tcp_if_include) and NCCL's bootstrap (NCCL_SOCKET_IFNAME)."""
    if not iface:
        return []
    if launcher == "horovodrun":  # sets HOROVOD_GLOO_IFACE / btl_tcp_if_include and NCCL_SOCKET_IFNAME itself
        return ["--network-interface", iface]
    if launcher == "mpirun":
        return ["-mca", "btl_tcp_if_include", iface, "-mca", "oob_tcp_if_include", iface,
                "-x", f"NCCL_SOCKET_IFNAME={iface}"]
    return [f"--export=ALL,OMPI_MCA_btl_tcp_if_include={iface},NCCL_SOCKET_IFNAME={iface},HOROVOD_GLOO_IFACE={iface}"]


def exported_names(env=os.environ) -> list[str]:
    return sorted(k for k in env if k.startswith(EXPORT_PREFIXES) or k in EXPORT_NAMES)


@dataclass
class Launch:
    np: int
    launcher: str = "horovodrun"
    controller: str | None = None  # "gloo" or "mpi" (horovodrun only)
    hosts: str | None = None  # "host1:4,host2:4"
    hostfile: str | None = None
    mca: tuple[str, ...] | None = None  # mpirun's KEY=VALUE settings (None: HVDGAN_MPIRUN_MCA or DEFAULT_MCA)
    iface: str | None = None  # network interface for rank traffic (None: the launcher's own choice)
    elastic: bool = False  # horovodrun's elastic mode
    discovery: str | None = None  # elastic: the host discovery command (None: the fixed --hosts)
    min_np: int | None = None  # elastic: the fewest ranks the run goes on with
    max_np: int | None = None  # elastic: the most ranks

    def command(self, argv: list[str], env=os.environ) -> list[str]:
        if self.np < 1:
            raise ValueError(f"--np must be >= 1, got {self.np}")
        if self.elastic:
            return self.elastic_command(argv, env)
        if self.launcher == "horovodrun":
            cmd = [_tool("horovodrun"), "-np", str(self.np)]
            if self.controller:
                cmd.append(f"--{self.controller}")
            cmd += iface_args("horovodrun", self.iface)
            if self.hostfile:
                # horovodrun's own --hostfile parser fails on comments, blank lines and `host:N` lines
                # (horovod 0.28 IndexError): hand it the hosts as -H instead
                cmd += ["-H", ",".join(f"{h}:{n}" for h, n in hostfile_slots(self.hostfile))]
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
            for key, value in mca_settings(self.mca, env):
                cmd += ["-mca", key, value]
            cmd += iface_args("mpirun", self.iface)
            return cmd + argv
        if self.launcher == "srun":
            cmd = ["srun", "--mpi=pmix", f"--ntasks={self.np}"]
            # Slurm places tasks itself: hosts (from -H or an MPI/Horovod hostfile) only pick the nodes.
            names = hostfile_hosts(self.hostfile) if self.hostfile else (
                [h.split(":")[0] for h in self.hosts.split(",") if h] if self.hosts else [])
            if names:
                cmd.append("--nodelist=" + ",".join(dict.fromkeys(names)))
            return cmd + iface_args("srun", self.iface) + argv
        raise ValueError(f"unknown launcher {self.launcher!r}: choose one of {', '.join(LAUNCHERS)}")

    def elastic_command(self, argv: list[str], env=os.environ) -> list[str]:
        """horovodrun's elastic mode (Gloo only). Without --network-interface Horovod's elastic driver hangs
        at start; a host whose rank died is left out for a cool-down (HVDGAN_ELASTIC_COOLDOWN, "LOW HIGH"
        seconds, growing with each failure of it) and then tried again, instead of for the rest of the job."""
        if self.launcher != "horovodrun" or self.controller == "mpi":
            raise ValueError("--elastic needs --launcher horovodrun with Gloo (Horovod's elastic mode has no MPI)")
        lo, hi = self.min_np or 1, self.max_np or self.np
        if not lo <= self.np <= hi:
            raise ValueError(f"--elastic: need --min-np <= --np <= --max-np, got {lo} <= {self.np} <= {hi}")
        cooldown = env.get("HVDGAN_ELASTIC_COOLDOWN", "10 120").split()
        if len(cooldown) != 2 or not all(c.isdigit() for c in cooldown) or int(cooldown[0]) > int(cooldown[1]):
            raise ValueError(f"HVDGAN_ELASTIC_COOLDOWN={' '.join(cooldown)!r}: not 'LOW HIGH' seconds (e.g. '10 120')")
        if not env.get(GLOO_OP_TIMEOUT_ENV):
            argv = _with_env(argv, f"{GLOO_OP_TIMEOUT_ENV}={GLOO_OP_TIMEOUT_S}")
        return [_tool("horovodrun"), "-np", str(self.np), "--min-np", str(lo), "--max-np", str(hi), "--gloo",
                *(["--host-discovery-script", self.discovery] if self.discovery else ["-H", self.hosts]),
                "--network-interface", self.iface or "lo",
                "--blacklist-cooldown-range", *cooldown, *argv]


def _with_env(argv: list[str], assignment: str) -> list[str]:
    """argv run with NAME=VALUE in its environment (into its env(1), when it starts with one)."""
    if argv[0] != "env":
        return ["env", assignment, *argv]
    i = next(i for i, word in enumerate(argv[1:], 1) if not word.startswith("-"))
    return [*argv[:i], assignment, *argv[i:]]


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


@functools.lru_cache(maxsize=None)
def _env_blocks_signals() -> bool:
    """Whether env(1) here has --block-signal (GNU coreutils 8.31 and later)."""
    try:
        return subprocess.run(["env", "--block-signal=USR1", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def train_argv(job: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What each rank runs for `hvdgan launch JOB -- EXTRA...`: `hvdgan train`, with the stop signals blocked
    (pending, not lost) until it has its handlers, as slurm/train.sh starts it: `hvdgan launch` repeats a
    stop until the launcher ends, and a rank just starting would otherwise die of it."""
    block = ["env", "--block-signal=" + ",".join(stop.name(s)[3:] for s in stop.SIGNALS)] \
        if _env_blocks_signals() else []
    return [*block, hvdgan_executable(), "train", "--job", str(job), *extra]


def compose(np: int, job: str, extra=(), launcher: str = "horovodrun", controller: str | None = None,
            hosts: str | None = None, hostfile: str | None = None, env=os.environ, mca=None,
            iface: str | None = None, elastic: tuple | None = None) -> list[str]:
    """The full launcher line for `hvdgan launch`. Gloo is a horovodrun mode: mpirun and srun start MPI
    ranks, so `--gloo` with them is an error rather than silently ignored. `elastic`: (min_np, max_np,
    discovery script or None) for horovodrun's elastic mode; its hosts come from the script, else
    --hostfile (read anew each time), --hosts, the Slurm job's nodes, or this host."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if controller == "gloo" and launcher != "horovodrun":
        raise ValueError(f"--gloo needs --launcher horovodrun ({launcher} starts MPI ranks; use --mpi or leave it out)")
    if hosts and hostfile:
        raise ValueError("give --hosts or --hostfile, not both")
    if mca and launcher != "mpirun":
        raise ValueError(f"--mca is mpirun's (with {launcher}, set OMPI_MCA_<key> in the environment)")
    iface = iface if iface is not None else (env.get("HVDGAN_NET_IFACE") or None)
    if hosts:
        parse_hosts(hosts)  # (a bad list fails here, not in the launcher, after the start)
    if launcher != "srun":  # (srun places the tasks itself: the hosts only pick the nodes)
        check_slots((elastic[0] or 1) if elastic else np, hosts, hostfile, "--min-np" if elastic else "--np")
    discovery = min_np = max_np = None
    if elastic:
        from . import discover

        min_np, max_np, script = elastic
        listed = parse_hosts(hosts) if hosts else []
        in_slurm = bool(env.get("SLURM_JOB_NODELIST"))
        if script or hostfile or in_slurm or len(listed) < 2:
            # (Horovod takes a fixed list of two or more hosts itself, with no process started every second)
            discovery = script or discover.command(slurm=in_slurm, hostfile=hostfile,
                                                   hosts=hosts or (None if in_slurm else f"localhost:{max_np or np}"))
        remote = any(name not in ("localhost", "127.0.0.1") for name, _ in listed)
        if not iface and (script or hostfile or in_slurm or remote):
            raise ValueError("--elastic on several hosts needs --iface NAME (or $HVDGAN_NET_IFACE): the network "
                             "interface the ranks reach each other through; Horovod's elastic start hangs without it")
        hostfile = None
        hosts = None if discovery else hosts
        extra = [*extra, "--elastic"] if "--elastic" not in extra else list(extra)
    spec = Launch(np=np, launcher=launcher, controller=controller if launcher == "horovodrun" else None,
                  hosts=hosts, hostfile=hostfile, mca=tuple(mca) if mca else None, iface=iface,
                  elastic=bool(elastic), discovery=discovery, min_np=min_np, max_np=max_np)
    return spec.command(train_argv(job, extra), env=env)


def quote(cmd: list[str]) -> str:
    return shlex.join(cmd)


def exec_command(cmd: list[str]) -> None:
    """Replace this process with the launcher: its exit status, and signals sent to it, are the caller's."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execvp(cmd[0], cmd)  # raises OSError (e.g. FileNotFoundError) when it cannot start
