"""A real single-node Slurm for the tests: munged, slurmctld and slurmd from Debian's packages, with every
file (key, configuration, state, spool, logs, sockets) in one temporary directory, run as root.

    with SlurmCluster() as cluster:          # or the session fixture `slurm_cluster` below
        subprocess.run(["sbatch", "--wait", "job.sh"], env=cluster.env)

`cluster.env` is os.environ plus SLURM_CONF (and the munge socket, through the configuration): pass it to
every sbatch/srun/squeue call. Nothing in /etc is read or written and no system service is touched.

Stopping cancels every job, stops the three daemons, and kills whatever is left of the jobs: every process
whose environment names this cluster's SLURM_CONF (slurmstepd and the tasks inherit it), so only processes
this cluster started. The directory is removed unless HVDGAN_KEEP_SLURM=1 (or the start failed: the daemon
logs are kept and quoted in the error).

Needs the Debian packages in PACKAGES. When they are missing, or when not root, the fixture fails (not
skips) with the command that installs them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What `apt-get install` needs on a fresh Debian 12 (slurm-client comes with slurmctld; libpmix2 gives
# slurm's mpi/pmix plugin its library; Open MPI comes from scripts/setup.sh).
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "libpmix2")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
INSTALL_HINT = ("apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
                + "  (or HVDGAN_SYSTEM_PACKAGES='" + " ".join(PACKAGES) + "' scripts/setup.sh)")


# slurmd double-forks slurmstepd, whose parent then is PID 1; in containers PID 1 may never reap it. slurmd
# therefore runs under this small subreaper: it adopts the orphans, reaps them, forwards SIGTERM, and
# when slurmd has exited it kills and reaps whatever it still has (job steps and their tasks).
REAPER = r"""
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
main = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: main.send_signal(signal.SIGTERM))
def children():
    me, out = str(os.getpid()), []
    for e in os.listdir("/proc"):
        try:
            if e.isdigit() and open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()[1] == me:
                out.append(int(e))
        except (OSError, IndexError):
            pass
    return out
code = None
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == main.pid:
        code = os.waitstatus_to_exitcode(status)
        for _ in range(50):
            kids = children()
            if not kids:
                break
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
            while True:
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
        break
sys.exit(code if code is not None and code >= 0 else 1)
"""


class SlurmUnavailable(RuntimeError):
    pass


def kill_until_gone(pids, rounds: int = 3) -> None:
    """SIGKILL what `pids()` lists, again until it lists nothing (at most `rounds` times, 0.2 s apart)."""
    for _ in range(rounds):
        left = pids()
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def check_prerequisites() -> None:
    missing = [b for b in BINARIES if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if missing:
        raise SlurmUnavailable(f"Slurm test cluster: missing {', '.join(missing)}; install: {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm test cluster: runs its daemons as root (SlurmUser=root); run the tests as root")


class SlurmCluster:
    """A one-node cluster `hvdgan` (partition `debug`, node = this host's short name, `cpus` CPUs). A job in
    partition `urgent` (higher PriorityTier) preempts `debug`'s jobs: TERM, KILL after GraceTime, requeue."""

    grace_time = 10  # seconds a preempted job has to checkpoint (PreemptMode=REQUEUE)

    def __init__(self, cpus: int | None = None, root: str | os.PathLike | None = None, keep: bool | None = None):
        # Two tasks must fit even on one core: the node is declared with at least 2 CPUs
        # (SlurmdParameters=config_overrides lets the configuration exceed the hardware).
        self.cpus = max(cpus or os.cpu_count() or 1, 2)
        self._root_arg = root
        self.keep = keep if keep is not None else os.environ.get("HVDGAN_KEEP_SLURM") == "1"
        self.node = socket.gethostname().split(".")[0]
        try:  # Slurm's tools resolve the node name; fall back where this host's name does not resolve
            socket.gethostbyname(self.node)
        except OSError:
            self.node = "localhost"
        self.procs: dict[str, subprocess.Popen] = {}
        self.root: Path | None = None
        self.env: dict[str, str] = {}

    # ------------------------------------------------------------------------------------ set-up
    def _write_files(self) -> None:
        r = self.root
        # tmp: TmpFS, where the PMIx plugin makes its per-step directories (spmix_appdir_<uid>_<job>.<step>):
        # in /tmp they would collide with another test cluster's (job ids start at 1 in each)
        for d in ("state", "spool", "log", "run", "tmp"):
            (r / d).mkdir(mode=0o700)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = r / "run" / "munge.sock"
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        # cred_expire (default 120 s) is also how long a requeued job waits before it may start again (5: the least
        # Slurm accepts; a step's credential is checked when slurmd gets the launch, at once here).
        conf = f"""\
ClusterName=hvdgan
MailProg=/bin/true
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={r}/state
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
""" + self._host_lines()
        self.conf = r / "slurm.conf"
        self.conf.write_text(conf)

    def _host_lines(self) -> str:
        """The slurm.conf lines that name hosts and addresses: the controller, slurmd's files, the nodes
        and the partition (a multi-node cluster overrides this, see tests/multinode_cluster.py)."""
        r = self.root
        return f"""SlurmctldHost={self.node}(127.0.0.1)
SlurmdSpoolDir={r}/spool
SlurmdPidFile={r}/run/slurmd.pid
SlurmdLogFile={r}/log/slurmd.log
TmpFS={r}/tmp
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=REQUEUE GraceTime={self.grace_time}
PartitionName=urgent Nodes={self.node} MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=2 PreemptMode=OFF
"""

    @property
    def nodes(self) -> list[str]:
        """The Slurm node names (one here)."""
        return [self.node]

    def _start_slurmds(self) -> None:
        """Start every node's slurmd (here one, in this host's namespaces, under the subreaper)."""
        self._spawn("slurmd", [sys.executable, "-c", REAPER, "slurmd", "-D", "-N", self.node, "-f", str(self.conf)],
                    self.env)

    def _stop_hosts(self) -> None:
        """After the daemons stopped: tear down what _start_slurmds built besides them (nothing here)."""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
        log.close()

    def _fail(self, why: str) -> None:
        logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted((self.root / "log").iterdir()))
        self.keep = True
        self.stop()
        raise RuntimeError(f"Slurm test cluster did not start: {why}\n(files kept in {self.root})\n{logs}")

    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        check_prerequisites()
        t0 = time.monotonic()
        self.root = Path(self._root_arg) if self._root_arg else Path(tempfile.mkdtemp(prefix="hvdgan-slurm-"))
        # Unix socket paths (munge, slurmstepd, PMIx) are limited to 107 bytes: keep the root short.
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_files()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        base["PATH"] = base.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        self.env = dict(base, SLURM_CONF=str(self.conf))
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={self.root / 'munge.key'}", f"--pid-file={self.root / 'run/munged.pid'}",
                               f"--log-file={self.root / 'log/munged.log'}", f"--seed-file={self.root / 'state/munge.seed'}",
                               "--num-threads=4"], self.env)
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None:
                self._fail("munged exited")
            if time.monotonic() - t0 > timeout:
                self._fail("munged socket did not appear")
            time.sleep(0.05)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], self.env)
        self._start_slurmds()
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    self._fail(f"{name} exited with {p.returncode}")
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and all(f"{n} idle" in out.stdout for n in self.nodes):
                break
            if time.monotonic() - t0 > timeout:
                self._fail(f"node not idle after {timeout:.0f}s (sinfo: {out.stdout.strip()} {out.stderr.strip()})")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - t0
        return self

    # ------------------------------------------------------------------------------------ helpers
    def run(self, argv: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sbatch, squeue, scontrol...) against this cluster."""
        env = dict(self.env, **kw.pop("env", {}))
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(self, argv: list[str], **kw) -> int:
        """Submit (`sbatch --parsable ...`) and return the job id."""
        out = self.run(["sbatch", "--parsable", *argv], **kw).stdout.strip()
        return int(out.split(";")[0])

    def job(self, jobid: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, StdOut, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", str(jobid)]).stdout
        fields = {}
        for token in out.split():
            if "=" in token:
                k, v = token.split("=", 1)
                fields[k] = v
        return fields

    def wait(self, jobid: int, timeout: float, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                        "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")) -> dict:
        """Wait until the job reaches one of `states`; return its fields."""
        t0 = time.monotonic()
        while True:
            info = self.job(jobid)
            if info.get("JobState") in states:
                return info
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"job {jobid} still {info.get('JobState')} after {timeout:.0f}s: {info}")
            time.sleep(0.5)

    def log_tail(self, name: str = "slurmd.log", n: int = 40) -> str:
        return _tail(self.root / "log" / name, n)

    # ------------------------------------------------------------------------------------ tear-down
    def _cancel_all(self) -> None:
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        try:
            jobs = self.run(["squeue", "-h", "-o", "%i"], timeout=10, check=False).stdout.split()
            if jobs:
                self.run(["scancel", *jobs], timeout=10, check=False)
                t0 = time.monotonic()
                while time.monotonic() - t0 < 10:
                    if not self.run(["squeue", "-h", "-o", "%i"], timeout=10, check=False).stdout.split():
                        break
                    time.sleep(0.3)
        except (subprocess.TimeoutExpired, OSError):
            pass

    def _leftovers(self) -> list[int]:
        """Processes started by this cluster: their environment carries this cluster's SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        if self.root is None:
            return
        self._cancel_all()
        for name in sorted(self.procs, key=lambda n: {"slurmctld": 1, "munged": 2}.get(n, 0)):  # slurmd(s) first
            p = self.procs[name]
            if p.poll() is None:
                p.terminate()
        for name, p in self.procs.items():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        kill_until_gone(self._leftovers)
        self.procs.clear()
        self._stop_hosts()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


try:
    import pytest
except ImportError:  # usable without pytest as a context manager
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster():
        """The session's Slurm cluster (started once, stopped at the end). Fails, never skips, when Slurm
        cannot run here: the Slurm tests are part of the suite."""
        try:
            check_prerequisites()
        except SlurmUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        cluster = SlurmCluster().start()
        try:
            yield cluster
        finally:
            cluster.stop()


if __name__ == "__main__":  # python tests/slurm_cluster.py: start, show, stop
    with SlurmCluster() as c:
        print(f"started in {c.start_seconds:.1f}s: SLURM_CONF={c.conf}")
        print(c.run(["sinfo"]).stdout)
        print(c.run(["srun", "--mpi=list"]).stdout + c.run(["srun", "--mpi=list"]).stderr)
        print(c.run(["srun", "-n", "2", "hostname"]).stdout)
