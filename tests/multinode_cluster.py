"""A real two-node cluster on this one machine, for the multi-node tests.

Each node is a network namespace (`ip netns add`) with its own UTS namespace (hostname `node1`, `node2`), its
own address on a veth pair whose host end is on a bridge in the host's namespace, and its own /etc/hosts
(`/etc/netns/<ns>/hosts`, which `ip netns exec` bind-mounts). Each node runs a real `slurmd` (-N node1 ...)
and a real `sshd` (for horovodrun and mpirun over ssh); `munged` and `slurmctld` run in the host's namespace,
on the bridge's address. The file system is shared, as a parallel file system would be on a cluster.

    with TwoNodeCluster() as c:                                   # or the session fixture `two_nodes`
        c.run(["srun", "-N", "2", "-n", "4", "hostname"])          # Slurm clients, from the host
        subprocess.run(c.on("node1", ["horovodrun", ...]), env=c.node_env())   # a shell on node1

Addresses: one private /24 (10.R.S.0/24, chosen so that it overlaps no route of this machine), .1 the bridge
(slurmctld), .2 and .3 the nodes. The namespaces have no default route: nothing they send leaves the subnet.

ssh: a key pair, host key, sshd_config and client config in the cluster's directory; nothing in /root/.ssh or
/etc/ssh is read or written. `c.node_env()` puts a small `ssh` wrapper first on PATH
(`ssh -F <dir>/ssh/config "$@"`), as a site's ssh set-up would be, so horovodrun and mpirun reach the nodes.

Stopping (also after a failed start, and from the fixture's finalizer when a test fails) cancels the jobs,
stops the daemons, kills every process left in the two network namespaces (only this cluster's: they are
its own namespaces), deletes the namespaces, the bridge and /etc/netns/<ns>, and removes the directory
(unless HVDGAN_KEEP_SLURM=1). The only thing left behind is /run/sshd, sshd's privilege-separation
directory (what the openssh-server package creates itself).

Needs: what tests/slurm_cluster.py needs, plus openssh-server and iproute2 (NET_PACKAGES), root (network
namespaces) and the kernel's veth and bridge drivers. When one is missing the fixture fails and says what.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from slurm_cluster import REAPER, SlurmCluster, SlurmUnavailable, check_prerequisites, kill_until_gone

NET_PACKAGES = ("openssh-server", "iproute2")
NET_BINARIES = ("ip", "nsenter", "unshare", "mount", "sshd", "ssh", "ssh-keygen")
IFACE = "eth0"  # the node's interface to the cluster network (inside its namespace)


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def check_net_prerequisites() -> None:
    check_prerequisites()
    missing = [b for b in NET_BINARIES if not _which(b)]
    if missing:
        raise SlurmUnavailable(f"two-node test cluster: missing {', '.join(missing)}; install: "
                               f"apt-get install -y --no-install-recommends {' '.join(NET_PACKAGES)}")


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.R.S.0/24 that overlaps none of this machine's addresses or routes."""
    used = []
    for line in _sh("ip", "-4", "-o", "route", "show", "table", "all").stdout.splitlines() + \
            _sh("ip", "-4", "-o", "addr").stdout.splitlines():
        for word in line.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 for the test cluster")


class TwoNodeCluster(SlurmCluster):
    """Slurm partition `debug` with nodes node1 and node2 (`cpus` CPUs each), sshd on both."""

    def __init__(self, names=("node1", "node2"), cpus: int = 2, **kw):
        super().__init__(cpus=cpus, **kw)
        self.names = list(names)
        self.tag = secrets.token_hex(2)
        self.bridge = f"hvdbr{self.tag}"
        self.subnet: ipaddress.IPv4Network | None = None
        self._made: list[tuple[str, str]] = []  # ("netns"|"link"|"etc", name): what to remove
        self._daemons: set[int] = set()

    # ---------------------------------------------------------------------------------- names
    @property
    def nodes(self) -> list[str]:
        return self.names

    def ns(self, node: str) -> str:
        return f"hvdgan-{self.tag}-{node}"

    def addr(self, node: str) -> str:
        return str(self.subnet.network_address + 2 + self.names.index(node))

    @property
    def ctld_addr(self) -> str:
        return str(self.subnet.network_address + 1)

    def on(self, node: str, argv: list[str]) -> list[str]:
        """argv run on `node`: in its network namespace (and /etc/hosts), with its hostname."""
        # Not `ip netns exec`: it remounts /sys for the namespace, which hides /sys/fs/cgroup from slurmd.
        # Its /etc/hosts bind mount is done here instead, in a mount namespace of our own (slave: the host's
        # mounts still reach it, its own do not leak out).
        return ["nsenter", f"--net=/run/netns/{self.ns(node)}", "unshare", "--uts", "--mount", "--propagation",
                "slave", "sh", "-c", f'mount --bind /etc/netns/{self.ns(node)}/hosts /etc/hosts && hostname {node} '
                '&& exec "$@"', "sh", *map(str, argv)]

    def node_env(self, **extra) -> dict[str, str]:
        """The cluster's environment (SLURM_CONF) with the ssh wrapper first on PATH."""
        env = dict(self.env)
        env["PATH"] = f"{self.root / 'bin'}:{env['PATH']}"
        env.update(extra)
        return env

    # ---------------------------------------------------------------------------------- set-up
    def start(self, timeout: float = 60.0) -> "TwoNodeCluster":
        check_net_prerequisites()
        self.subnet = free_subnet()
        return super().start(timeout=timeout)

    def _host_lines(self) -> str:
        r = self.root
        lines = [f"SlurmctldHost={self.node}({self.ctld_addr})",
                 f"SlurmdSpoolDir={r}/spool/%n", f"SlurmdPidFile={r}/run/slurmd-%n.pid",
                 f"SlurmdLogFile={r}/log/slurmd-%n.log", f"TmpFS={r}/tmp/%n"]
        lines += [f"NodeName={n} NodeAddr={self.addr(n)} NodeHostname={n} CPUs={self.cpus} RealMemory=1 "
                  "State=UNKNOWN" for n in self.names]
        lines.append(f"PartitionName=debug Nodes={','.join(self.names)} Default=YES MaxTime=INFINITE State=UP "
                     "OverSubscribe=NO")
        return "\n".join(lines) + "\n"

    def _network_up(self) -> None:
        prefix = self.subnet.prefixlen
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", self.bridge))
        _sh("ip", "addr", "add", f"{self.ctld_addr}/{prefix}", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{self.addr(n)} {n}\n" for n in self.names)
        for i, node in enumerate(self.names):
            (self.root / "spool" / node).mkdir(mode=0o700)
            (self.root / "tmp" / node).mkdir(mode=0o700)  # the node's TmpFS (PMIx's per-step directories)
            ns, outer = self.ns(node), f"hvd{self.tag}n{i}"
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            self._made.append(("etc", str(etc)))
            (etc / "hosts").write_text(hosts)
            _sh("ip", "netns", "add", ns)
            self._made.append(("netns", ns))
            _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", IFACE, "netns", ns)
            self._made.append(("link", outer))
            _sh("ip", "link", "set", outer, "master", self.bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.addr(node)}/{prefix}", "dev", IFACE)
            _sh("ip", "-n", ns, "link", "set", IFACE, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _ssh_files(self) -> None:
        d = self.root / "ssh"
        d.mkdir(mode=0o700)
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hvdgan-test", "-f", str(d / "id"))
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
        shutil.copy(d / "id.pub", d / "authorized_keys")
        (d / "config").write_text(f"""Host *
  IdentityFile {d}/id
  IdentitiesOnly yes
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  BatchMode yes
  LogLevel ERROR
""")
        for node in self.names:
            (d / f"sshd_config.{node}").write_text(f"""Port 22
HostKey {d}/host_key
PidFile {self.root}/run/sshd-{node}.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
""")
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {_which("ssh")} -F {d}/config "$@"\n')
        (bin_dir / "ssh").chmod(0o755)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory

    def _start_slurmds(self) -> None:
        try:
            self._network_up()
            self._ssh_files()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            self._fail(f"network namespaces or ssh set-up: {exc}")
        for node in self.names:
            self._spawn(f"sshd-{node}", self.on(node, [_which("sshd"), "-D", "-e", "-f",
                                                         str(self.root / "ssh" / f"sshd_config.{node}")]), self.env)
            self._spawn(f"slurmd-{node}", self.on(node, [sys.executable, "-c", REAPER, "slurmd", "-D", "-N", node,
                                                          "-f", str(self.conf)]), self.env)
        self._daemons = {p.pid for p in self.procs.values()}
        t0 = time.monotonic()
        for node in self.names:  # sshd answers on every node
            while True:
                probe = subprocess.run(self.on(self.names[0], ["ssh", node, "hostname"]), env=self.node_env(),
                                       capture_output=True, text=True, timeout=30)
                if probe.returncode == 0 and probe.stdout.strip() == node:
                    break
                if time.monotonic() - t0 > 20:
                    self._fail(f"ssh {node} from {self.names[0]}: {probe.stdout}{probe.stderr}")
                time.sleep(0.2)

    # ---------------------------------------------------------------------------------- tear-down
    def ns_pids(self) -> list[int]:
        pids = []
        for kind, name in self._made:
            if kind == "netns":
                out = _sh("ip", "netns", "pids", name, check=False).stdout.split()
                pids += [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
        return pids

    def _daemon_pids(self) -> set[int]:
        """The daemons' launch processes and their direct children (slurmd under its subreaper)."""
        keep = set(self._daemons)
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) in \
                        self._daemons and "slurmstepd" not in open(f"/proc/{entry}/comm").read():
                    keep.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
        return keep

    def reset(self) -> None:
        """Between tests: cancel every job and kill what tests left on the nodes (ranks started over ssh,
        slurmstepd of cancelled jobs); the daemons stay."""
        self._cancel_all()
        keep = self._daemon_pids()
        kill_until_gone(lambda: [p for p in self.ns_pids() if p not in keep])

    def _stop_hosts(self) -> None:
        kill_until_gone(self.ns_pids, rounds=5)
        for kind, name in reversed(self._made):
            if kind == "netns":
                _sh("ip", "netns", "del", name, check=False)
            elif kind == "link":
                _sh("ip", "link", "del", name, check=False)
            elif kind == "etc":
                shutil.rmtree(name, ignore_errors=True)
                try:
                    os.rmdir(Path(name).parent)  # /etc/netns, when nothing else is in it
                except OSError:
                    pass
        self._made.clear()


try:
    import pytest
except ImportError:
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def two_nodes_session():
        try:
            check_net_prerequisites()
        except SlurmUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        cluster = TwoNodeCluster().start()
        try:
            yield cluster
        finally:
            cluster.stop()

    @pytest.fixture
    def two_nodes(two_nodes_session):
        """The session's two-node cluster; after each test its jobs are cancelled and strays killed."""
        yield two_nodes_session
        two_nodes_session.reset()


if __name__ == "__main__":  # python tests/multinode_cluster.py: start, show, stop
    with TwoNodeCluster() as c:
        print(f"started in {c.start_seconds:.1f}s: SLURM_CONF={c.conf} subnet {c.subnet}")
        print(c.run(["sinfo", "-N"]).stdout)
        print(c.run(["srun", "-N", "2", "-n", "4", "bash", "-c", "echo $SLURM_PROCID $(hostname)"]).stdout)
        print(subprocess.run(c.on("node1", ["ssh", "node2", "hostname"]), env=c.node_env(), capture_output=True,
                             text=True).stdout)
