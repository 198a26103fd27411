"""Host discovery for elastic runs: horovodrun's --host-discovery-script, which Horovod's driver runs every
few seconds; each line it prints is `host:slots`, and a host that disappears from it loses its ranks, a
host that (re)appears gets ranks started over ssh (docs/elastic.md).

    python -m hvdgan.dist.discover --slurm            this Slurm job's nodes, less those Slurm reports down,
                                                      drained, failed or not responding
    python -m hvdgan.dist.discover --hostfile FILE    the hostfile as it is now: edit it to add or remove hosts
    python -m hvdgan.dist.discover --hosts H1:N,H2:N  a fixed list (a lost host comes back after the cool-down)

`hvdgan launch --elastic` composes this command itself; a site's own script can replace it
(`hvdgan launch --elastic --discovery SCRIPT`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from .hosts import hostfile_slots, parse_hosts

# Slurm's node states that get no ranks (sinfo -t); a node that comes back to idle/allocated gets them again
UNUSABLE_STATES = "down,drain,fail,no_respond"


def tasks_per_node(value: str) -> list[int]:
    """SLURM_TASKS_PER_NODE ("2(x3),1") as one count per node, in the node list's order."""
    counts = []
    for part in value.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"SLURM_TASKS_PER_NODE={value!r}: not Slurm's N(xM),... form")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def slurm_hosts(env=os.environ) -> list[tuple[str, int]]:
    """This allocation's nodes with their task counts, less the nodes Slurm now reports unusable."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("--slurm: not inside a Slurm job (SLURM_JOB_NODELIST is not set)")
    nodes = _lines(["scontrol", "show", "hostnames", nodelist])
    counts = tasks_per_node(env.get("SLURM_TASKS_PER_NODE") or "1")
    if len(counts) != len(nodes):
        counts = [counts[0]] * len(nodes)  # (a step's variable on a job of another shape: each node alike)
    unusable = set(_lines(["sinfo", "-h", "-N", "-o", "%N", "-t", UNUSABLE_STATES, "-n", nodelist]))
    return [(node, n) for node, n in zip(nodes, counts) if node not in unusable]


def _lines(argv: list[str]) -> list[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ValueError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def command(slurm: bool = False, hostfile: str | None = None, hosts: str | None = None) -> str:
    """The shell command line horovodrun runs to discover hosts (one of the three sources). A fixed list is
    printed by the shell itself: the driver runs the command every second, and a Python start each time
    costs a 2-core node about a tenth of its training (docs/benchmarks.md, "Elastic")."""
    if hostfile:
        source = f"--hostfile {_q(os.path.abspath(hostfile))}"
    elif hosts:
        return "printf '%s\\n' " + " ".join(_q(f"{h}:{n}") for h, n in parse_hosts(hosts))
    else:
        source = "--slurm" if slurm else f"--hosts localhost:{os.cpu_count() or 1}"
    return f"{_q(sys.executable)} -m hvdgan.dist.discover {source}"


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdgan.dist.discover", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--slurm", action="store_true", help="this Slurm job's usable nodes")
    source.add_argument("--hostfile", help="an Open MPI / Horovod hostfile, read anew each time")
    source.add_argument("--hosts", help="HOST:SLOTS,... (a fixed list)")
    args = parser.parse_args(argv)
    try:
        if args.slurm:
            found = slurm_hosts()
        elif args.hostfile:
            found = hostfile_slots(args.hostfile)
        else:
            found = parse_hosts(args.hosts)
    except (ValueError, OSError, subprocess.SubprocessError) as exc:
        print(f"hvdgan discover: {exc}", file=sys.stderr)
        return 2
    for host, slots in found:
        print(f"{host}:{slots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
