"""The GAN step's own parts (hvdgan/gan.py) that need no launcher: G's moving average, Adam's kernel."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from hvdgan.gan import EMA, adam_kernel
from hvdgan.models.dcgan import Discriminator, Generator


def tiny_g(device="cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(device)


def test_ema_ramps_its_decay_up_and_follows_the_formula():
    G, decay = tiny_g(), 0.3  # the ramp (1 + n) / (10 + n) passes 0.3 at n = 3: both branches of the min
    ema = EMA(G, decay)
    expected = None
    for n in range(6):
        with torch.no_grad():
            for p in G.parameters():
                p.copy_(torch.randn_like(p))
        G.train()(torch.randn(5, 3))  # moves BatchNorm's running statistics and its batch counter
        now = [t.detach().double().clone() for t in (*G.parameters(), *G.buffers())]
        if expected is None:
            expected = now  # the first update copies G
        else:
            d = min(decay, (1 + n) / (10 + n))
            expected = [e if not e.is_floating_point() else d * e + (1 - d) * m for e, m in zip(expected, now)]
            expected[-1] = now[-1]  # num_batches_tracked: copied, not averaged
        ema.update_parameters(G)
        got = [t.detach().double() for t in (*ema.module.parameters(), *ema.module.buffers())]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    assert int(ema.n_averaged) == 6


def test_ema_update_reads_nothing_back_from_the_device():
    """A read of a device tensor on the host waits for the GPU. With G on the meta device, any such read
    (.item(), float(), bool()) raises, so this passes only if the update never reads one."""
    G = tiny_g("meta")
    ema = EMA(G, 0.999)
    for _ in range(3):
        ema.update_parameters(G)
    assert ema.n_averaged.device.type == "cpu" and int(ema.n_averaged) == 3
    # the check can fail: an update that reads the counter on the host, as hvdgan's EMA once did
    reads = AveragedModel(G, use_buffers=True, multi_avg_fn=lambda e, m, n: min(0.999, float(n)))
    reads.update_parameters(G)  # (the first update only copies)
    with pytest.raises((NotImplementedError, RuntimeError)):
        reads.update_parameters(G)


def test_ema_checkpoints_keep_averaged_models_layout():
    G = tiny_g()
    ema = EMA(G, 0.99)
    ema.update_parameters(G)
    ema.update_parameters(G)
    keys = set(AveragedModel(G, use_buffers=True).state_dict())
    assert set(ema.state_dict()) == keys
    again = EMA(tiny_g(), 0.99)
    again.load_state_dict(ema.state_dict())
    assert int(again.n_averaged) == 2 and again.n_averaged.device.type == "cpu"


def test_cpu_adam_kernel_gives_the_for_loops_results_bitwise():
    """The GAN's CPU optimizers use Adam's foreach kernel, not torch's CPU default (a for-loop over the
    parameters). The two must agree to the bit over G and D's real layers, so that a CPU run computes what
    a plain PyTorch loop with the default Adam (bench_train.py's, a user's own) and runs made before the
    change compute."""
    assert adam_kernel(tiny_g()) == {"foreach": True}
    torch.manual_seed(0)
    nets = [Generator(16, 8, 1, 32, num_classes=10), Discriminator(8, 1, 32, num_classes=10)]
    start = [p.detach().clone() for net in nets for p in net.parameters()]
    z, y, real = torch.randn(4, 16, 1, 1), torch.randint(0, 10, (4,)), torch.randn(4, 1, 32, 32)
    results = []
    for kernel in ({}, adam_kernel(nets[0])):
        G, D = copy.deepcopy(nets)
        opts = [torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.5, 0.999), **kernel) for m in (G, D)]
        for _ in range(4):
            loss = D(G(z, y), y).mean() - D(real, y).mean()
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
        results.append([p.detach().clone() for p in (*G.parameters(), *D.parameters())])
    assert all(not torch.equal(a, s) for a, s in zip(results[0], start))  # every parameter moved
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
