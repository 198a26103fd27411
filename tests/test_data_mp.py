"""Sharded data under a real launcher (horovodrun -np 2, Gloo): the reader's split and `prepare`'s parallel writing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from hvdgan import data
from hvdgan.data import write_dataset
from hvdgan.prepare import prepare
from hvdgan.dist.launch import Launch, run

pytestmark = pytest.mark.mp
HERE = Path(__file__).parent


def launch(argv: list[str]):
    cmd = Launch(np=2, launcher="horovodrun", controller="gloo").command(argv)
    p = run(cmd, timeout=120, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"
    return p


def test_two_ranks_read_every_sample_once(tmp_path):
    # 4 equal shards of 48 and batches of 16: each rank is dealt 2 shards = 96 images = 6 batches, nothing dropped
    n = 192
    x = np.random.default_rng(0).integers(0, 256, size=(n, 1, 32, 32), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    write_dataset(tmp_path / "d", x, np.arange(n) % 10, shards=4)
    launch([sys.executable, str(HERE / "data_mp_rank.py"), str(tmp_path / "d"), str(tmp_path), "16"])
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["size"] for r in ranks] == [2, 2] and [r["batches_per_epoch"] for r in ranks] == [6, 6]
    for epoch in ("0", "1"):
        a, b = (r["epochs"][epoch] for r in ranks)
        assert a["batches"] == b["batches"] == 6
        assert sorted(a["ids"] + b["ids"]) == list(range(n))  # every sample exactly once across the ranks
        assert sorted(a["shards"] + b["shards"]) == [0, 1, 2, 3]
    assert ranks[0]["epochs"]["0"]["ids"] != ranks[0]["epochs"]["1"]["ids"]


def test_prepare_under_launcher_writes_the_same_dataset(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "hvdgan")
    p = launch([exe, "prepare", "digits", str(tmp_path / "par"), "--shards", "5", "--compression", "gzip"])
    assert p.stdout.count("Wrote 1,797 images") == 1 and "with 2 ranks" in p.stdout  # rank 0 reports
    assert data.check_dataset(tmp_path / "par")[0] == []
    ref = tmp_path / "ref"
    prepare("digits", str(ref), shards=5, compression="gzip", progress=False)
    par, one = data.open_manifest(tmp_path / "par"), data.open_manifest(ref)
    assert [s.sha256 for s in par.shards] == [s.sha256 for s in one.shards]  # byte-identical shards
