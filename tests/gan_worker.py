"""Runs on every rank of a multi-process test (or alone) and checks one property of the GAN step.

    train DATA OUT [options]   hvdgan's Trainer; then every rank's parameters are compared
    syncbn OUT B               fixed global batch of 2B (np=1) or B per rank (np=2), SyncBatchNorm;
                               rank 0 saves the flattened parameters after a few steps
    traffic OUT [fp16]         counts the tensors and bytes all-reduced in one iteration
"""

import json
import sys

import torch

import horovod.torch as hvd
import horovod.torch.optimizer as hvd_optimizer

from hvdgan import distributed as dist
from hvdgan.config import DataFacts, World, build, resolve
from hvdgan.gan import GAN
from hvdgan.models import Discriminator, Generator


def flat(*models) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten().cpu() for m in models for t in m.state_dict().values()
                      if t.is_floating_point()])


def settings(values, channels):
    """The configuration of a GAN built here on the CPU, resolved as the trainer resolves its own."""
    return resolve(build({"data": "-", "device": "cpu", **values}), World.from_horovod(),
                   DataFacts(channels=channels, image_size=32, batches_per_epoch=1))


def train(data, out, *opts):
    from hvdgan.train import Trainer

    values = dict(data=data, out=out, ngf=16, ndf=16, batch_size=16, max_steps=6, log_every=2,
                  sample_every=1000, checkpoint_every=1000, tensorboard=False)
    for opt in opts:
        key, value = opt.split("=", 1)
        values[key] = json.loads(value)
    trainer = Trainer(build(values))
    trainer.run()
    # parameters (BatchNorm's running statistics are buffers: each rank's own, unless --sync-bn)
    mine = torch.cat([p.detach().double().flatten() for m in (trainer.gan.G, trainer.gan.D) for p in m.parameters()])
    every = hvd.allgather(mine.unsqueeze(0))
    same = all(torch.equal(every[0], every[r]) for r in range(hvd.size()))
    print(f"rank {hvd.rank()}: parameters {'IDENTICAL' if same else 'DIFFERENT'} on {hvd.size()} ranks", flush=True)


def syncbn(out, per_rank, sync="1"):
    per_rank = int(per_rank)
    cfg = settings(dict(ngf=8, ndf=8, nz=16, sync_bn=sync == "1", ema=0.0), channels=1)
    torch.manual_seed(0)
    G, D = Generator(cfg.nz, cfg.ngf, 1, 32), Discriminator(cfg.ndf, 1, 32)
    gan = GAN(G, D, cfg.gan, hvd)
    gen = torch.Generator().manual_seed(1)
    global_batch = per_rank * 2
    for _ in range(3):
        real = torch.rand(global_batch, 1, 32, 32, generator=gen) * 2 - 1
        z = torch.randn(global_batch, cfg.nz, 1, 1, generator=gen)
        # np=1 takes the whole global batch; np=2 gives each rank its half
        lo, hi = (0, global_batch) if hvd.size() == 1 else (hvd.rank() * per_rank, (hvd.rank() + 1) * per_rank)
        gan.step(real[lo:hi], z[lo:hi])
    if hvd.rank() == 0:
        torch.save(flat(G, D), out)
    print(f"rank {hvd.rank()}: syncbn done", flush=True)


def traffic(out, fp16="0"):
    counted = {"tensors": 0, "elements": 0, "bytes": 0}
    real_allreduce = hvd_optimizer.allreduce_async_

    def counting(tensor, *args, **kwargs):
        counted["tensors"] += 1
        counted["elements"] += tensor.numel()
        counted["bytes"] += tensor.numel() * tensor.element_size()
        return real_allreduce(tensor, *args, **kwargs)

    hvd_optimizer.allreduce_async_ = counting  # a spy: the real allreduce still runs
    cfg = settings(dict(ngf=16, ndf=16, fp16_allreduce=fp16 == "1"), channels=3)
    G, D = Generator(cfg.nz, cfg.ngf, 3, 32), Discriminator(cfg.ndf, 3, 32)
    gan = GAN(G, D, cfg.gan, hvd)
    gan.step(torch.rand(8, 3, 32, 32) * 2 - 1, torch.randn(8, cfg.nz, 1, 1))
    counted["params_G"] = sum(p.numel() for p in G.parameters())
    counted["params_D"] = sum(p.numel() for p in D.parameters())
    counted["tensors_G_D"] = len(list(G.parameters())) + len(list(D.parameters()))
    if hvd.rank() == 0:
        with open(out, "w") as f:
            json.dump(counted, f)
    print(f"rank {hvd.rank()}: {counted}", flush=True)


if __name__ == "__main__":
    dist.init()
    {"train": train, "syncbn": syncbn, "traffic": traffic}[sys.argv[1]](*sys.argv[2:])
