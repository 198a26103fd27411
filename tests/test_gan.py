"""The GAN step's own parts (hvdgan/gan.py) that need no launcher: G's moving average."""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from hvdgan.gan import EMA


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
