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
    """Refuse an image size the networks are not built for (`hvdgan prepare --size`, a model's)."""
    if size not in SIZES:
        raise HvdganError(f"{what} {size}x{size} does not fit DCGAN: it takes 32x32 or 64x64 "
                          "(re-prepare the data with --size 32 or --size 64)")


def check_images(height: int, width: int, where: str) -> None:
    """Refuse a dataset whose images the networks cannot take (`where`: the dataset's manifest)."""
    if height != width:
        raise HvdganError(f"{where}: images are {height}x{width}; DCGAN takes square 32x32 or 64x64 images "
                          "(re-prepare the data with --size 32 or --size 64)")
    check_image_size(height, f"{where}: image size")


def default_image_size(height: int, width: int) -> int:
    """The size `hvdgan prepare` writes a source of height x width at when no --size is given: its own when
    the networks take it, else 32."""
    return height if height == width and height in SIZES else 32


AUGMENT_OPS = ("color", "translation", "cutout")  # DiffAugment's operations, in the order applied (augment)


def parse_policy(text: str | None) -> tuple[str, ...]:
    """"translation,cutout" -> ("translation", "cutout"); "" or "none" -> (); unknown names are an error."""
    names = [s.strip().lower() for s in (text or "").split(",") if s.strip()]
    if names == ["none"]:
        return ()
    bad = [n for n in names if n not in AUGMENT_OPS]
    if bad:
        why = f"unknown operation {bad[0]!r}; choose from {', '.join(AUGMENT_OPS)} (comma-separated), or none"
        raise HvdganError(f"--augment {text}: {why}", reason=why)
    return tuple(n for n in AUGMENT_OPS if n in names)
