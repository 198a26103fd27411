"""Named training statistics, in the spirit of stylegan2-ada's `training_stats.report(name, value)`.

Each rank adds values by name during a log window; at the end of the window all ranks exchange them in
ONE allgather (a single float64 vector per rank), and the result is read back by name:

    stats = Stats(("loss_d", "loss_g", "time_compute"), device=loss_device)
    stats.add("loss_d", loss_d)           # a tensor: summed on its device, no sync per step
    stats.add("time_compute", 0.012)      # a float: summed on the host
    local = stats.pack(signum=0.0)        # this rank's sums, counts, and extra values
    every = stats.unpack(hvd.allgather(local.unsqueeze(0)))
    every.mean("loss_d")                  # the sum over ranks / the count over ranks
    every["signum"]                       # one value per rank

The names, and so the layout of the packed vector, are fixed at construction: the same on every rank.
"""

from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch


class Stats:
    """Sums and counts by name since the last `reset()`."""

    def __init__(self, names: Sequence[str], device: "torch.device | str" = "cpu"):
        self.names = tuple(names)
        self._slot = {name: i for i, name in enumerate(self.names)}
        self._device_sums = torch.zeros(len(self.names), device=device)
        self._extra: tuple[str, ...] = ()  # the names of the last pack's extra values
        self.reset()

    def reset(self) -> None:
        self._device_sums.zero_()
        self._host_sums = [0.0] * len(self.names)
        self._counts = [0] * len(self.names)

    def add(self, name: str, value: "torch.Tensor | float", n: int = 1) -> None:
        """Add `value`, the sum of `n` items (a mean over n is reported as sum / n). A tensor (a scalar)
        is added where it lives, without waiting for it; a float is added on the host."""
        i = self._slot[name]
        if torch.is_tensor(value):
            self._device_sums[i].add_(value.detach())
        else:
            self._host_sums[i] += value
        self._counts[i] += n

    def sum(self, name: str) -> float:
        """This rank's sum of `name` (waits for the device)."""
        i = self._slot[name]
        return self._device_sums[i].item() + self._host_sums[i]

    def count(self, name: str) -> int:
        return self._counts[self._slot[name]]

    def pack(self, **extra: float) -> torch.Tensor:
        """This rank's values as one float64 CPU vector: the sums, the counts, then `extra` (values that
        are not sums, e.g. a flag), in the order given. Gather it from every rank and read it with
        `unpack`, passing the same extra names."""
        sums = self._device_sums.double().cpu() + torch.tensor(self._host_sums, dtype=torch.float64)
        rest = torch.tensor([*self._counts, *extra.values()], dtype=torch.float64)
        self._extra = tuple(extra)
        return torch.cat([sums, rest])

    def unpack(self, every: torch.Tensor) -> "Gathered":
        """Name the columns of the gathered [ranks, values] tensor (as laid out by the last `pack`)."""
        k = len(self.names)
        columns = {name: every[:, i] for i, name in enumerate(self.names)}
        counts = {name: every[:, k + i] for i, name in enumerate(self.names)}
        columns.update({name: every[:, 2 * k + i] for i, name in enumerate(self._extra)})
        return Gathered(columns, counts)


class Gathered:
    """Every rank's values by name: `g[name]` is a [ranks] tensor (a sum, or an extra value),
    `g.count(name)` the total count over ranks, `g.mean(name)` the sum over ranks / that count."""

    def __init__(self, columns: dict[str, torch.Tensor], counts: dict[str, torch.Tensor]):
        self.columns, self.counts = columns, counts

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.columns[name]

    def count(self, name: str) -> float:
        return self.counts[name].sum().item()

    def mean(self, name: str) -> float:
        """Over every rank's items; 0 when there were none (e.g. no G step in the window)."""
        return self.columns[name].sum().item() / max(self.count(name), 1.0)


class Stopwatch:
    """One step's host time, split into the time spent waiting (inside `with watch.waiting():`, e.g. for
    Horovod's allreduces) and the rest."""

    def __init__(self):
        self.start, self.waited = time.perf_counter(), 0.0

    @contextlib.contextmanager
    def waiting(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.waited += time.perf_counter() - t0

    def report(self, stats: Stats, compute: str, waiting: str) -> None:
        """Add the step's time outside and inside the waits to `stats`, under the two names."""
        stats.add(compute, time.perf_counter() - self.start - self.waited)
        stats.add(waiting, self.waited)
