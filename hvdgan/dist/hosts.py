"""Host lists: `--hosts H1:N,H2:N` and Open MPI / Horovod hostfiles, parsed in one place for `hvdgan launch`,
its elastic discovery (hvdgan.dist.discover) and the tests, and checked against the ranks asked for before
anything starts (horovodrun's own parser ends a bad list in a traceback, after the launch has begun)."""

from __future__ import annotations

import re

# what a host name may be: a DNS name or an address (IPv4; an IPv6 address has colons, which HOST:SLOTS cannot hold)
_HOST = re.compile(r"[A-Za-z0-9_.\-]+")


def parse_hosts(text: str, what: str = "--hosts") -> list[tuple[str, int]]:
    """`host:N,host2:N` (a host without `:N` has one slot) as (host, slots) pairs."""
    hosts = []
    for item in text.split(","):
        name, sep, slots = item.strip().partition(":")
        if not _HOST.fullmatch(name) or (sep and not slots.isdigit()) or int(slots or "1") < 1:
            raise ValueError(f"{what}: {item.strip()!r} is not HOST:SLOTS (e.g. node1:4)")
        hosts.append((name, int(slots or "1")))
    return hosts


def hostfile_slots(path: str) -> list[tuple[str, int]]:
    """(host, slots) of an Open MPI / Horovod hostfile: `host slots=4`, `host:4` or `host` (1 slot) lines,
    blank lines and # comments."""
    hosts = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--hostfile {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        name, _, slots = words[0].partition(":")
        for word in words[1:]:
            if word.startswith("slots="):
                slots = word[len("slots="):]
        if not _HOST.fullmatch(name) or not (slots or "1").isdigit() or int(slots or "1") < 1:
            raise ValueError(f"--hostfile {path}, line {number}: {raw.strip()!r} is not `host slots=N` or `host:N`")
        hosts.append((name, int(slots or "1")))
    if not hosts:
        raise ValueError(f"--hostfile {path}: no hosts in it")
    return hosts


def hostfile_hosts(path: str) -> list[str]:
    """Host names of an Open MPI / Horovod hostfile."""
    return [name for name, _ in hostfile_slots(path)]


def check_slots(np: int, hosts: str | None, hostfile: str | None, what: str = "--np") -> None:
    """`np` ranks fit the slots of --hosts or --hostfile (the launchers would refuse, or oversubscribe, later)."""
    if not (hosts or hostfile):
        return
    listed = parse_hosts(hosts) if hosts else hostfile_slots(hostfile)
    slots = sum(n for _, n in listed)
    if np > slots:
        given = f"--hosts {hosts}" if hosts else f"--hostfile {hostfile}"
        raise ValueError(f"{what} {np}: more ranks than the {slots} slot{'s' if slots > 1 else ''} of {given} "
                         f"(give {what} {slots} or fewer, or more hosts or slots)")
