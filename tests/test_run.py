"""One run's parts, in this process at one rank (no launcher): the GAN step, the World's collectives, the
RunState and Checkpointer round trip, the loop's periodic actions, and the evaluator's device."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import flat_state, opt_tensors
from hvdgan.config import DataFacts, build, resolve
from hvdgan.dist.world import World
from hvdgan.errors import HvdganError
from hvdgan.gan import GAN
from hvdgan.models.placement import Placement, block_devices, default_device, evaluation_device
from hvdgan.models.zoo import architecture, build_networks as build_nets
from hvdgan.run.actions import Action, Tick
from hvdgan.run.checkpointer import Checkpointer
from hvdgan.run.state import RunState

FACTS = DataFacts(channels=1, image_size=32, batches_per_epoch=28)


@pytest.fixture(scope="module")
def world() -> World:
    return World.from_horovod()  # a world of one: this process, no launcher


def make_gan(world: World, seed: int, **options) -> tuple[GAN, RunState]:
    cfg = resolve(build({"data": "d", "device": "cpu", "ngf": 8, "ndf": 8, "nz": 16, **options}), world, FACTS)
    torch.manual_seed(seed)
    G, D = build_nets(cfg.network.model, cfg.network.nz, cfg.network.ngf, cfg.network.ndf, cfg.channels, cfg.image_size, cfg.network.spectral_norm, 0)
    state = RunState(noise=torch.Generator().manual_seed(seed))
    return GAN(G, D, cfg.gan, world.hvd, rng=state.noise), state


def test_gan_step_at_one_rank(world):
    gan, state = make_gan(world, 0, d_steps=2)
    weights = lambda net: torch.cat([p.detach().flatten() for p in net.parameters()])  # noqa: E731
    before = weights(gan.G).clone(), weights(gan.D).clone()
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    assert gan.step(real, gan.noise(4, state.noise), 1) is False  # d_steps=2: a D update only
    assert torch.equal(weights(gan.G), before[0]) and not torch.equal(weights(gan.D), before[1])
    assert gan.step(real, gan.noise(4, state.noise), 1) is True
    assert not torch.equal(weights(gan.G), before[0])
    assert gan.d_updates == 2 and gan.stats.count("loss_d") == 2 and gan.stats.count("loss_g") == 1
    assert math.isfinite(gan.stats.sum("loss_d")) and gan.pop_bad_step() == 0
    assert gan.stats.sum("time_compute") > 0 and gan.stats.sum("time_allreduce_wait") >= 0


def test_world_of_one_process():
    one = World()
    assert (one.root, one.horovod, one.gather(3, "x"), one.broadcast("a", "x")) == (True, False, [3], "a")
    one.agree(None)
    with pytest.raises(HvdganError, match="^disk full$"):
        one.agree("disk full")
    assert one.on_root(lambda: 5, "x") == 5 and one.on_root(lambda: 5, "x", share=True) == 5

    def fails():
        raise HvdganError("no such file")

    with pytest.raises(HvdganError, match="^no such file$"):
        one.on_root(fails, "x")


def test_checkpointer_round_trip(world, tmp_path):
    gan, state = make_gan(world, 0)
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    for step in range(1, 4):
        gan.step(real, gan.noise(4, state.noise), step)
    state.step, state.epoch, state.batch, state.best_fid = 3, 1, 5, 42.0
    arch = {"G": architecture(gan.G), "D": architecture(gan.D)}
    config = {"batch_size": 4, "batches_per_epoch": 28}
    saver = Checkpointer(tmp_path, keep=2, world=world)
    path = saver.save(gan, state, config, arch)
    assert path.name == "ckpt-00000003.pt" and saver.last == path
    expected_noise = torch.randn(3, generator=state.noise)

    other, other_state = make_gan(world, 1)  # other weights, other streams
    assert not torch.equal(flat_state(other.G.state_dict()), flat_state(gan.G.state_dict()))
    loader = Checkpointer(tmp_path, keep=2, world=world)
    assert loader.restore("auto", other, other_state, arch, batch_size=4, batches_per_epoch=28)
    for key in ("G", "D", "G_ema"):
        assert torch.equal(flat_state(other.state_dict()[key]), flat_state(gan.state_dict()[key])), key
    for key in ("opt_g", "opt_d"):
        assert torch.equal(opt_tensors(other.state_dict()[key]), opt_tensors(gan.state_dict()[key])), key
    assert (other_state.step, other_state.epoch, other_state.batch, other_state.best_fid) == (3, 1, 5, 42.0)
    assert other.d_updates == 3 and loader.resumed_from == path
    assert torch.equal(torch.randn(3, generator=other_state.noise), expected_noise)  # the stream goes on

    # another batch size: the same images done, counted in batches of the new size
    third, third_state = make_gan(world, 2)
    Checkpointer(tmp_path, keep=2, world=world).restore("auto", third, third_state, arch, batch_size=2,
                                                        batches_per_epoch=56)
    assert third_state.batch == 10
    # a fresh start in a directory that holds a run is refused; a network of another shape too
    with pytest.raises(HvdganError, match="holds an earlier run; continue it with --resume auto"):
        Checkpointer(tmp_path, keep=2, world=world).restore("none", third, third_state, arch, 4, 28)
    wider = {**arch, "G": {**arch["G"], "ngf": 16}}
    with pytest.raises(HvdganError, match="written for another G architecture"):
        Checkpointer(tmp_path, keep=2, world=world).restore(str(path), third, third_state, wider, 4, 28)


def test_actions_run_by_count_at_the_last_step_and_at_a_stop():
    every5, only_stop = Action("a", 5), Action("stop", 0, at_last=False, at_stop=True)
    quiet_at_stop = Action("sample", 5, at_last=True, at_stop=False)
    assert [s for s in range(1, 13) if every5.due(Tick(s, s == 12, False))] == [5, 10, 12]
    assert not only_stop.due(Tick(5, False, False)) and not only_stop.due(Tick(12, True, False))
    assert only_stop.due(Tick(7, False, True)) and every5.due(Tick(7, False, True)) is False
    assert not quiet_at_stop.due(Tick(10, False, True))  # a stop skips it, even at its own count
    assert Action("log", 5, at_stop=True).due(Tick(7, False, True))


def test_a_trainer_runs_added_actions_after_every_step(world, digits, tmp_path):
    from hvdgan.run.loop import Trainer

    seen = []
    options = build({"data": str(digits), "out": str(tmp_path / "run"), "ngf": 8, "ndf": 8, "nz": 16,
                     "batch_size": 8, "max_steps": 4, "log_every": 2, "sample_every": 100, "tensorboard": False,
                     "device": "cpu"})
    threads = torch.get_num_threads()
    try:
        result = Trainer(options, actions=[Action("spy", 1, lambda tick: seen.append((tick.step, tick.last)))]).run()
    finally:
        torch.set_num_threads(threads)  # (the Trainer sets this process's)
    assert seen == [(1, False), (2, False), (3, False), (4, True)]
    assert result["status"] == "done" and result["step"] == 4


def test_the_evaluator_runs_on_the_ranks_own_gpu_group():
    """Two ranks on a node, each with two GPUs (G on the first, D on the second): rank 1's G, and so its
    Inception network, is on cuda:2; the device named by the local rank alone, cuda:1, is rank 0's D's."""
    devices = block_devices(Placement.parse("G=gpu0,D=gpu1"), local_rank=1, local_size=2,
                            default=torch.device("cpu"), visible=4, env={})
    assert devices["D"] == {name: torch.device("cuda", 3) for name in devices["D"]}
    assert evaluation_device(devices) == torch.device("cuda", 2)
    assert evaluation_device(block_devices(None, 0, 1, default_device("cpu", 0), visible=0, env={})) == \
        torch.device("cpu")
