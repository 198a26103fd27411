"""This rank's place in the run: one object, passed explicitly, with the few collectives that set-up needs.

A `World` is Horovod's world under a launcher, or a world of one process (`World()`) where no launcher
started the command. Its collectives are the same in both, so the code that uses them has no
`if size > 1` of its own:

    world.gather(obj, name)      every rank's object, in rank order
    world.broadcast(obj, name)   rank 0's object on every rank
    world.agree(error, name)     a failure on any rank (a message, or None) raises the same error on all
    world.on_root(fn, name)      fn() on rank 0; its error raised on every rank; its result on rank 0 (or all)

Every collective takes a name: Horovod matches the collectives of the ranks by name, and its default
name is the object's type, which differs between a rank that sends None and one that sends a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from ..errors import HvdganError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    cpu_threads: int = 1  # this rank's share of the CPUs its allocation gives it (hvdgan.dist.resources)
    hvd: Any = field(default=None, repr=False, compare=False)  # horovod.torch, or None for one process

    @classmethod
    def from_horovod(cls, threads: bool = True) -> "World":
        """Horovod's world, initialised if it is not yet. Collective: every rank calls it (with `threads`,
        the CPU affinities of the ranks are gathered)."""
        from .horovod import hvd, init
        from .resources import default_threads

        init()
        h = hvd()
        return cls(h.rank(), h.size(), h.local_rank(), h.local_size(), default_threads(h) if threads else 1, hvd=h)

    @classmethod
    def join(cls, use_horovod: bool, threads: bool = False) -> "World":
        """Horovod's world when `use_horovod` (the command runs under a launcher), else a world of one."""
        return cls.from_horovod(threads) if use_horovod else cls()

    @property
    def root(self) -> bool:
        return self.rank == 0

    @property
    def horovod(self) -> bool:
        return self.hvd is not None

    def gather(self, obj: T, name: str) -> list[T]:
        if self.hvd is None or self.size == 1:
            return [obj]
        return self.hvd.allgather_object(obj, name=name)

    def broadcast(self, obj: T, name: str) -> T:
        if self.hvd is None or self.size == 1:
            return obj
        return self.hvd.broadcast_object(obj, root_rank=0, name=name)

    def agree(self, error: str | None, name: str = "hvdgan.agree") -> None:
        """If any rank failed (`error` is its message), every rank raises: the message itself where every
        rank failed alike, else each failed rank's message, named by its rank."""
        errors = [(rank, e) for rank, e in enumerate(self.gather(error, name)) if e]
        if not errors:
            return
        if len(errors) == self.size and len({e for _, e in errors}) == 1:
            raise HvdganError(errors[0][1])
        raise HvdganError("; ".join(f"rank {rank}: {e}" for rank, e in errors))

    def on_root(self, fn: Callable[[], T], name: str, share: bool = False) -> T | None:
        """fn() on rank 0 alone; an HvdganError there is raised on every rank. Returns fn's result on rank 0,
        and on the others None, or with `share` the result too (broadcast: keep it small)."""
        result, error = None, None
        if self.root:
            try:
                result = fn()
            except HvdganError as exc:
                error = exc.message
        error = self.broadcast(error, name + ".error")
        if error:
            raise HvdganError(error)
        return self.broadcast(result, name) if share else result
