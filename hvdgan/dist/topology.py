"""Where the ranks of a run are: nodes, local ranks, the shards and images each rank reads, and whether
the ranks still hold the same parameters. Written to the run directory (`world.json`, `result.json`) so
that a multi-node run can be checked after the fact.

Both functions are collectives: every rank calls them, in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path


def nodes_of(world: list[dict]) -> dict[str, list[int]]:
    """{host: [ranks]} in rank order."""
    nodes: dict[str, list[int]] = {}
    for r in sorted(world, key=lambda r: r["rank"]):
        nodes.setdefault(r["host"], []).append(r["rank"])
    return nodes


def describe_nodes(world: list[dict]) -> str:
    """'2 node(s): node1 ranks 0-1, node2 ranks 2-3'."""
    parts = []
    for host, ranks in nodes_of(world).items():
        span = f"{ranks[0]}-{ranks[-1]}" if ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 1 \
            else ",".join(map(str, ranks))
        parts.append(f"{host} rank{'s' if len(ranks) > 1 else ''} {span}")
    return f"{len(parts)} node(s): " + ", ".join(parts)


def record_world(hvd, reader, epoch: int, out: Path | None, step: int = 0) -> list[dict]:
    """Gather every rank's place (host, local rank and size, pid) and what it reads in `epoch` (its shards
    and the global row of every image); rank 0 writes them to out/world.json, whose `changes` list keeps
    every world the run had (a start, a resume, an elastic membership change: when, from which step, how
    many ranks on which nodes). Returns the world."""
    mine = {"rank": hvd.rank(), "size": hvd.size(), "local_rank": hvd.local_rank(), "local_size": hvd.local_size(),
            "cross_rank": hvd.cross_rank(), "cross_size": hvd.cross_size(), "host": socket.gethostname(),
            "pid": os.getpid(), "epoch": epoch, "shards": [int(s) for s in reader.shards_of(epoch)],
            "rows": [int(r) for r in reader.rows(epoch)]}
    world = hvd.allgather_object(mine, name="hvdgan.topology.world")
    if out is not None and hvd.rank() == 0:
        try:
            changes = json.loads((out / "world.json").read_text()).get("changes", [])
        except (OSError, ValueError, AttributeError):
            changes = []
        changes.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "size": hvd.size(),
                        "nodes": nodes_of(world)})
        doc = {"size": hvd.size(), "nodes": nodes_of(world), "images": int(reader.manifest.count),
               "shards": len(reader.manifest.shards), "ranks": world, "changes": changes}
        tmp = out / "world.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(out / "world.json")
    return world


def parameter_digest(modules) -> str:
    """sha256 of every parameter's bytes, module after module (BatchNorm's running statistics are buffers,
    each rank's own unless --sync-bn, and are left out)."""
    import torch

    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def parameters_agree(hvd, modules) -> bool:
    """True when every rank holds bit-identical parameters."""
    digests = hvd.allgather_object(parameter_digest(modules), name="hvdgan.topology.params")
    return len(set(digests)) == 1
