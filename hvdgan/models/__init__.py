"""The networks and where they run: one module a job.

    dcgan      the seed's DCGAN G and D (32x32 and 64x64) and the image sizes the models take
    resnet     SNGAN/BigGAN-style residual G and D, optionally class-conditional
    zoo        the families by name (`--model`): build, describe for checkpoints, rebuild from one
    placement  model parallelism inside a node: G, D or their blocks on devices (`--placement`)
    syncbn     SyncBatchNorm over Horovod that also runs on the CPU (`--sync-bn`)
    augment    DiffAugment, D's differentiable input augmentations (`--augment`)

Nothing here imports Horovod: the networks are plain PyTorch modules. The package owns the facts below
(imported without torch, e.g. by the configuration's checks).
"""

from ..errors import HvdganError

MODELS = ("dcgan", "resnet")  # the families, by `--model` name (zoo.build_networks)
SIZES = (32, 64)  # the image sizes the networks are built for


def check_image_size(size: int, what: str = "image size") -> None:
    """Refuse an image size the networks are not built for (the data's, or `hvdgan prepare --size`)."""
    if size not in SIZES:
        raise HvdganError(f"{what} {size}x{size} does not fit DCGAN: it takes 32x32 or 64x64 "
                          "(re-prepare the data with --size 32 or --size 64)")
