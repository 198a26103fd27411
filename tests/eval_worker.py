"""Runs alone or on every rank under a launcher: hvdgan.eval.evaluate's distributed evaluation with a small,
deterministic feature network (no Inception), so that 1 and 2 ranks can be compared exactly.

    eval_worker.py DATA OUT.json

Rank 0's "EMA" generator differs from the G every rank holds (as in training, where only rank 0 keeps
the EMA): the evaluated numbers must be those of rank 0's EMA, whatever the number of ranks.
"""

import json
import sys

import numpy as np
import torch

from hvdgan.dist.world import World
from hvdgan.eval.evaluate import Evaluator
from hvdgan.eval.features import generated_features
from hvdgan.models.dcgan import Generator


class TinyFeatures:
    """A fixed random projection of 8x8 average-pooled images: 32-d features, a deterministic function of
    each image alone."""

    key = "tiny-test-features-v1"
    batch_size = 17  # does not divide the shares: batch boundaries differ between 1 and 2 ranks

    def __init__(self):
        self.w = torch.randn(64, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def __call__(self, images):
        x = images.double().mean(1, keepdim=True) / 255
        x = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        return torch.tanh(x @ self.w).float()


class FakeGAN:
    """What Evaluator.generator reads from hvdgan.gan.GAN: G, and sample_model() (the EMA on rank 0)."""

    def __init__(self, G, ema):
        self.G, self.ema = G, ema

    def sample_model(self):
        return self.ema if self.ema is not None else self.G


def generator(seed):
    torch.manual_seed(seed)
    return Generator(16, 8, 1, 32)


def main(data, out):
    world = World.from_horovod(threads=False)
    hvd = world.hvd
    torch.set_num_threads(1)
    gan = FakeGAN(generator(0), generator(1) if hvd.rank() == 0 else None)
    ev = Evaluator(data, num=101, metrics=("fid", "kid", "pr"), extractor=TinyFeatures(), world=world, real_num=301,
                   seed=3, batch_size=13)
    result = ev.evaluate(gan)
    fake = generated_features(ev.generator(gan), 101, ev.extractor, world, seed=3, batch_size=13, progress=False)
    if hvd.rank() == 0:
        result.pop("eval_seconds")
        np.save(out + ".real.npy", ev.real)
        np.save(out + ".fake.npy", fake)
        with open(out, "w") as f:
            json.dump({"size": hvd.size(), "metrics": result}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
