"""The configuration, resolved once (hvdgan.config.resolve), and the named statistics (hvdgan.run.stats)."""

import dataclasses
import math
import os

import pytest
import torch

from hvdgan.config import DataFacts, build, resolve
from hvdgan.dist.world import World
from hvdgan.errors import HvdganError
from hvdgan.run.stats import Stats

DIGITS = DataFacts(channels=1, image_size=32, batches_per_epoch=28)


def test_build_is_the_one_way_and_names_where_a_value_came_from():
    cfg = build({"data": "d", "batch_size": 32, "amp": None})  # None: not given, the default stays
    assert (cfg.schedule.batch_size, cfg.distribution.amp, cfg.schedule.epochs) == (32, None, 5)
    with pytest.raises(HvdganError, match=r"^jobs/x.yaml: unknown key\(s\) batch$"):
        build({"data": "d", "batch": 32}, "jobs/x.yaml")
    with pytest.raises(HvdganError, match="^HVDGAN_TRAIN_BATCH_SIZE: must be >= 1, got 0$"):
        build({"data": "d", "batch_size": 0}, lambda key: f"HVDGAN_TRAIN_{key.upper()}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.distribution.amp = True


def test_resolve_fills_in_what_depends_on_devices_data_and_world():
    cfg = build({"data": "d", "device": "cpu", "lr_scaling": "linear", "epochs": 3, "d_steps": 2})
    r = resolve(cfg, World(rank=1, size=4, local_rank=1, local_size=2), DIGITS)
    # on the CPU: no autocast, no channels_last; threads shared by the node's ranks
    assert (r.gan.amp, r.channels_last, r.image_size, r.channels) == (False, False, 32, 1)
    assert r.threads == max(1, (os.cpu_count() or 1) // 2)
    assert r.total_steps == 3 * 28 // 2
    assert str(r.devices["G"]["stem"]) == "cpu" and not r.on_cuda
    # the GAN receives its own settings: learning rates scaled with the world, the EMA on rank 0 only
    assert (r.gan.lr_g, r.gan.lr_d, r.gan.betas, r.gan.d_steps, r.gan.ema) == (8e-4, 8e-4, (0.5, 0.999), 2, 0.0)
    assert resolve(cfg, World(0, 4, 0, 2), DIGITS).gan.ema == 0.999
    assert resolve(build({"data": "d", "lr_scaling": "sqrt"}), World(0, 4, 0, 2), DIGITS).gan.lr_g == 2e-4 * 2
    # what the user gave wins; the options as given stay as they were (frozen)
    given = build({"data": "d", "device": "cpu", "channels_last": True, "amp": True, "threads": 3, "max_steps": 7})
    r = resolve(given, World(), DIGITS)
    assert (r.channels_last, r.threads, r.total_steps) == (True, 3, 7)
    assert r.gan.amp is False  # bf16 autocast only changes CUDA ops: off without one
    assert given.distribution.amp is True and given.network.image_size is None and r.network is given.network
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.total_steps = 1
    d = r.to_dict()
    assert (d["world_size"], d["devices"], d["total_steps"], d["amp"], d["image_size"]) == (1, "G@cpu; D@cpu", 7,
                                                                                          False, 32)
    assert (d["lr_g"], d["lr_scale"], d["batch_size"]) == (2e-4, 1.0, 64) and "gan" not in d  # every value once


def test_resolve_refuses_an_image_size_the_data_does_not_have():
    with pytest.raises(HvdganError, match=r"^--image-size 64 but d holds 32x32 images \(re-prepare it with --size "
                                          r"64\)$"):
        resolve(build({"data": "d", "image_size": 64}), World(), DIGITS)


def test_stats_by_name_in_one_vector_per_rank():
    ranks = []
    for r in range(2):  # two ranks' windows, gathered as hvd.allgather would stack them
        s = Stats(("loss_d", "loss_g", "time_compute"))
        for step in range(3):
            s.add("loss_d", torch.tensor(float(r + step)))
            if step % 2 == 0:
                s.add("loss_g", torch.tensor(10.0 * (r + 1)))
            s.add("time_compute", 0.5)
        assert (s.sum("loss_d"), s.count("loss_d"), s.count("loss_g")) == (3.0 + 3 * r, 3, 2)
        ranks.append(s.pack(signum=float(10 * r), bad_step=0.0))
    every = s.unpack(torch.stack(ranks))
    assert every.mean("loss_d") == (3.0 + 6.0) / 6
    assert every.mean("loss_g") == (20.0 + 40.0) / 4
    assert every["time_compute"].tolist() == [1.5, 1.5]
    assert every["signum"].tolist() == [0.0, 10.0] and every["bad_step"].tolist() == [0.0, 0.0]
    s.reset()
    assert (s.sum("loss_d"), s.count("loss_g")) == (0.0, 0)
    assert s.unpack(s.pack().unsqueeze(0)).mean("loss_g") == 0.0  # no G step in a window: 0, not a division error
    assert math.isnan(Stats(("x",)).unpack(torch.tensor([[math.nan, 1.0]])).mean("x"))
