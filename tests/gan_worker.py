"""Runs on every rank of a multi-process test (or alone) and checks one property of the GAN step.

    train DATA OUT [options]   hvdgan's Trainer; then every rank's parameters are compared
    syncbn OUT B [sync] [model] fixed global batch of 2B (np=1) or B per rank (np=2), SyncBatchNorm;
                               rank 0 saves the flattened parameters after a few steps
    syncbn-pair OUT LOCAL B    syncbn OUT B, then syncbn LOCAL B 0 (per-rank BatchNorm) in the same launch
    traffic-pair DIR           traffic DIR/traffic-0.json 0, then traffic DIR/traffic-1.json 1 (fp16)
    traffic OUT [fp16] [model] counts the tensors and bytes all-reduced in one iteration

    resnet DIR [DATA]          the ResNet checks in one launch: syncbn (DIR/npN-sync.pt; with 2 ranks also
                               DIR/np2-local.pt; with 1, the conditioning toy: DIR/conditioning.json), then,
                               with DATA, train, then traffic (DIR/traffic.json)

`model`: dcgan (default), dcgan-cond (the conditional DCGAN) or resnet-cond (the conditional ResNet:
conditional BatchNorm in G, projection D; for traffic also DiffAugment and an R1 penalty due in the counted
iteration). The resnet launch also writes DIR/npN-sync-dcgan-cond.pt (and -local) for the conditional DCGAN,
in float64 (`dtype`).
"""

import json
import sys

import torch

import horovod.torch as hvd
import horovod.torch.optimizer as hvd_optimizer

from hvdgan.dist import horovod as dist
from hvdgan.config import DataFacts, build, resolve
from hvdgan.dist.world import World
from hvdgan.gan import GAN
from hvdgan.models.zoo import build_networks as build_nets


def flat(*models) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten().cpu() for m in models for t in m.state_dict().values()
                      if t.is_floating_point()])


def settings(values, channels):
    """The configuration of a GAN built here on the CPU, resolved as the trainer resolves its own."""
    return resolve(build({"data": "-", "device": "cpu", **values}), World.from_horovod(),
                   DataFacts(channels=channels, image_size=32, batches_per_epoch=1))


def train(data, out, *opts):
    from hvdgan.run.loop import Trainer

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


def nets(model, cfg, channels):
    """(G, D, number of classes) for `model`: dcgan, dcgan-cond or resnet-cond (10 classes, tiny widths)."""
    classes = 10 if model.endswith("-cond") else 0
    G, D = build_nets(cfg.network.model, cfg.network.nz, cfg.network.ngf, cfg.network.ndf, channels, 32, num_classes=classes)
    return G, D, classes


def syncbn(out, per_rank, sync="1", model="dcgan", dtype="float32"):
    per_rank = int(per_rank)
    family = {"resnet-cond": dict(model="resnet", ngf=4, ndf=4, conditional=True),
              "dcgan-cond": dict(conditional=True)}.get(model, {})
    cfg = settings({"ngf": 8, "ndf": 8, "nz": 16, "sync_bn": sync == "1", "ema": 0.0, **family}, channels=1)
    torch.manual_seed(0)
    G, D, classes = nets(model, cfg, 1)
    if dtype == "float64":  # the arithmetic alone, without float32 rounding (which Adam amplifies, below)
        G.double(), D.double()
        torch.set_default_dtype(torch.float64)
    gan = GAN(G, D, cfg.gan, hvd)
    gen = torch.Generator().manual_seed(1)
    global_batch = per_rank * 2
    for _ in range(3):
        real = torch.rand(global_batch, 1, 32, 32, generator=gen) * 2 - 1
        z = torch.randn(global_batch, cfg.network.nz, 1, 1, generator=gen)
        y = torch.randint(0, max(classes, 1), (global_batch,), generator=gen)
        # np=1 takes the whole global batch; np=2 gives each rank its half
        lo, hi = (0, global_batch) if hvd.size() == 1 else (hvd.rank() * per_rank, (hvd.rank() + 1) * per_rank)
        gan.step(real[lo:hi], z[lo:hi], 0, y[lo:hi] if classes else None)
    if hvd.rank() == 0:
        torch.save(flat(G, D), out)
    torch.set_default_dtype(torch.float32)
    print(f"rank {hvd.rank()}: syncbn done", flush=True)


def syncbn_pair(out, local, per_rank):
    """The SyncBatchNorm run and its control (per-rank BatchNorm) in one launch (a launch costs more than both)."""
    syncbn(out, per_rank, "1")
    syncbn(local, per_rank, "0")


def traffic(out, fp16="0", model="dcgan"):
    counted = {"tensors": 0, "elements": 0, "bytes": 0}
    real_allreduce = hvd_optimizer.allreduce_async_

    def counting(tensor, *args, **kwargs):
        counted["tensors"] += 1
        counted["elements"] += tensor.numel()
        counted["bytes"] += tensor.numel() * tensor.element_size()
        return real_allreduce(tensor, *args, **kwargs)

    hvd_optimizer.allreduce_async_ = counting  # a spy: the real allreduce still runs
    resnet = (dict(model="resnet", ngf=4, ndf=4, conditional=True, augment="color,translation,cutout", r1=1.0)
              if model == "resnet-cond" else {})
    cfg = settings({"ngf": 16, "ndf": 16, "fp16_allreduce": fp16 == "1", **resnet}, channels=3)
    G, D, classes = nets(model, cfg, 3)
    gan = GAN(G, D, cfg.gan, hvd)
    y = torch.arange(8) % classes if classes else None
    gan.step(torch.rand(8, 3, 32, 32) * 2 - 1, torch.randn(8, cfg.network.nz, 1, 1), 0, y)  # (R1 is due at step 0)
    counted["params_G"] = sum(p.numel() for p in G.parameters())
    counted["params_D"] = sum(p.numel() for p in D.parameters())
    counted["tensors_G_D"] = len(list(G.parameters())) + len(list(D.parameters()))
    if hvd.rank() == 0:
        with open(out, "w") as f:
            json.dump(counted, f)
    print(f"rank {hvd.rank()}: {counted}", flush=True)


def traffic_pair(directory):
    """traffic without and with fp16 compression in one launch, each with its own spy."""
    real = hvd_optimizer.allreduce_async_
    traffic(f"{directory}/traffic-0.json", "0")
    hvd_optimizer.allreduce_async_ = real  # (the first spy out of the way)
    traffic(f"{directory}/traffic-1.json", "1")


def conditioning(out, steps=150):
    """A two-class toy (class 0: dark images, class 1: bright ones): after `steps` steps the conditional
    ResNet's samples for class 0 are darker than those for class 1. Writes their mean brightness."""
    cfg = settings(dict(model="resnet", conditional=True, ngf=4, ndf=4, nz=8, ema=0.0, beta1=0.0, beta2=0.9),
                   channels=1)
    torch.manual_seed(0)
    G, D = build_nets("resnet", cfg.network.nz, cfg.network.ngf, cfg.network.ndf, 1, 32, num_classes=2)
    gan = GAN(G, D, cfg.gan, hvd)
    gen = torch.Generator().manual_seed(0)
    for i in range(steps):
        y = torch.randint(0, 2, (16,), generator=gen)
        real = (y.float() * 1.6 - 0.8).view(16, 1, 1, 1) + 0.1 * torch.randn(16, 1, 32, 32, generator=gen)
        gan.step(real, gan.noise(16, gen), i, y)
    G.eval()
    with torch.no_grad():
        z = torch.randn(64, cfg.network.nz, 1, 1, generator=gen)
        means = [G(z, torch.full((64,), k)).mean().item() for k in (0, 1)]
    with open(out, "w") as f:
        json.dump({"class0": means[0], "class1": means[1], "steps": steps}, f)


def resnet(directory, data=None):
    """Every ResNet check in one launch (a launch costs more than the checks on tiny models)."""
    syncbn(f"{directory}/np{hvd.size()}-sync.pt", "8", "1", "resnet-cond")
    if hvd.size() == 1:
        conditioning(f"{directory}/conditioning.json")
    if hvd.size() > 1:
        syncbn(f"{directory}/np{hvd.size()}-local.pt", "8", "0", "resnet-cond")
    # the conditional DCGAN in float64: in float32 its two runs differ by up to 8e-5 after 3 steps (its
    # class embedding, appended to z, leaves directions of the stem's weights that G's BatchNorm removes:
    # their gradients are rounding noise, which Adam scales up); in float64 by 2e-16
    syncbn(f"{directory}/np{hvd.size()}-sync-dcgan-cond.pt", "8", "1", "dcgan-cond", "float64")
    if hvd.size() > 1:
        syncbn(f"{directory}/np{hvd.size()}-local-dcgan-cond.pt", "8", "0", "dcgan-cond", "float64")
    if data:
        train(data, f"{directory}/run", 'model="resnet"', "ngf=4", "ndf=4", "nz=16", "conditional=true",
              'augment="translation,cutout,color"', "r1=1.0", "r1_every=2", "mode_seeking=1.0", "d_steps=2",
              "max_steps=3")
        traffic(f"{directory}/traffic.json", "0", "resnet-cond")  # (last: it leaves its spy in place)


if __name__ == "__main__":
    dist.init()
    {"train": train, "syncbn": syncbn, "syncbn-pair": syncbn_pair, "traffic": traffic, "traffic-pair": traffic_pair,
     "resnet": resnet}[sys.argv[1]](*sys.argv[2:])
