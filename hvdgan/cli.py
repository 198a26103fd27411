"""The `hvdgan` command line. Thin: parse options, call the module that does the work, print."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .dist import stop

# `hvdgan train`: USR1, TERM, INT and HUP set the stop flag from the first moment on (hvdgan/dist/stop.py), before anything
# slow is imported. Other commands keep the default (a signal ends them).
if next((a for a in sys.argv[1:] if not a.startswith("-")), None) == "train":
    stop.install()

import click  # noqa: E402

from . import __version__
from .cli_errors import Commands
from .config import OPTIONS, build, load_job_file
from .config.sources import unknown_variables
from .dist.launch import LAUNCHERS
from .errors import HvdganError


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "HVDGAN"})
@click.version_option(__version__, prog_name="hvdgan")
def main():
    """Train GANs on clusters with Horovod (MPI or Gloo) and sharded HDF5 data.

    \b
    Launch as:  horovodrun -np 4 hvdgan train --job jobs/digits-demo.yaml
                mpirun -np 4 hvdgan train ...      sbatch slurm/train.sh JOB
    """


# --------------------------------------------------------------------------------------------- info
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--placement", metavar="SPEC", default=None, help="Show the devices this placement gives each rank, "
              "e.g. G=gpu0,D=gpu1 (docs/placement.md). Exits non-zero when a rank cannot use it.")
def info(as_json, placement):
    """Versions, Horovod's build, GPUs, and the world as each rank sees it."""
    from . import info as info_mod

    info_mod.run(as_json=as_json, placement=placement)


# ----------------------------------------------------------------------------------- prepare / data
@main.command()
@click.argument("source")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--shards", type=int, default=None, help="Number of shards (default 16, or fewer for tiny sources).")
@click.option("--per-shard", type=int, default=None, help="Images per shard (instead of --shards).")
@click.option("--size", type=int, default=None,
              help="Output size, 32 or 64 (default: the source's own when it is 32 or 64, else 32).")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="1 (grey) or 3 (RGB); default: the source's (digits: 1).")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a dataset that already exists in OUT.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes writing shards (without a launcher; under mpirun/horovodrun every rank writes its own).")
@click.option("--verify", is_flag=True, help="Re-read everything after writing (as `hvdgan data check`).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the shuffle before sharding.")
@click.option("--no-shuffle", is_flag=True, help="Keep the source's order (shard 0 holds the first images).")
@click.option("--holdout", metavar="N|P%", default=None,
              help="Hold out N images (or P% of them), chosen by --seed, in OUT/holdout: evaluate and --eval-every "
                   "measure against them.")
def prepare(source, out, shards, per_shard, size, channels, compression, overwrite, workers, verify, seed, no_shuffle,
            holdout):
    """Write SOURCE as a sharded HDF5 dataset in OUT.

    \b
    SOURCE: digits (the demo: 1,797 handwritten digits, no download), cifar-10-python.tar.gz or its
    extracted folder, a folder of images (class sub-folders become labels), or a .npy/.npz file.
    Example: hvdgan prepare digits data/digits
    """
    from .prepare import prepare as prepare_dataset

    summary = prepare_dataset(source, out, shards=shards, per_shard=per_shard, size=size,
                              channels=int(channels) if channels else None, compression=compression,
                              overwrite=overwrite, workers=workers, verify=verify,
                              shuffle_seed=None if no_shuffle else seed, holdout=holdout)
    if summary:
        click.echo(summary)


@main.group("data")
def data_group():
    """Inspect sharded datasets."""


@data_group.command("check")
@click.argument("directory", metavar="DIR")
@click.option("--quiet", "-q", is_flag=True, help="Print problems only.")
def data_check(directory, quiet):
    """Re-read DIR's manifest and every shard (sizes, sha256, structure, data); report every mismatch."""
    from . import data

    problems, m = data.check_dataset(directory, progress=not quiet)
    if m is None:  # not a dataset at all: its one problem is the error
        raise HvdganError(problems[0])
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if problems:
        raise HvdganError(f"{directory}: {len(problems)} problem(s) found; re-create the dataset with "
                          f"`hvdgan prepare SOURCE {directory} --overwrite`")
    if not quiet:
        click.echo(f"{directory}: OK: {m.count:,} images {m.height}x{m.width}x{m.channels} in {len(m.shards)} shards "
                   f"({m.total_bytes:,} bytes, compression {m.compression}); sha256 and structure match {data.MANIFEST}")


# ------------------------------------------------------------------------------------------- train
def _config_options(func):
    """One option per configuration field (hvdgan/config/options.py declares each: type, default, help)."""
    for spec in reversed(OPTIONS.values()):
        flag = "--" + spec.name.replace("_", "-")
        if spec.type is bool:
            opt = click.option(f"{flag}/--no-{spec.name.replace('_', '-')}", default=None, help=spec.help)
        else:
            shown = repr(spec.default) if spec.default not in (None, "") else False
            opt = click.option(flag, type=click.Choice(spec.choices) if spec.choices else spec.type, default=None,
                               help=spec.help, show_default=shown)
        func = opt(func)
    return func


def _load_job(ctx, param, value):
    if value:
        ctx.default_map = {**(ctx.default_map or {}), **load_job_file(value)}
        ctx.meta["hvdgan.job"] = value
    return value


def _config(ctx, values: dict):
    """Merge options over the job file over the defaults; errors name where the bad value came from."""
    from click.core import ParameterSource

    def where(key):
        source = ctx.get_parameter_source(key)
        if source == ParameterSource.DEFAULT_MAP:
            return f"{ctx.meta.get('hvdgan.job')}: {key}"
        if source == ParameterSource.ENVIRONMENT:
            return f"HVDGAN_{ctx.info_name.upper()}_{key.upper()}"
        return "--" + key.replace("_", "-")

    for warning in unknown_variables(os.environ, f"{ctx.auto_envvar_prefix}_"):
        click.echo(f"warning: {warning}", err=True)
    return build(values, where)


@main.command()
@click.option("--job", "-j", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
              callback=_load_job, help="YAML job file (jobs/*.yaml); options given here override it.")
@_config_options
@click.pass_context
def train(ctx, **values):
    """Train a GAN (DCGAN or ResNet) on a sharded HDF5 dataset, data-parallel over Horovod.

    \b
      hvdgan train --data data/digits --max-steps 200            # one process
      horovodrun -np 2 hvdgan train --job jobs/digits-demo.yaml   # two ranks

    \b
    USR1, TERM, INT or HUP: every rank stops after the same step (at most one more), with a
    checkpoint. Exit status: 0 finished; 75 stopped on a signal (resume with --resume auto);
    2 bad input or a training error (e.g. NaN); 1 a crash, e.g. another rank died.
    """
    from .run.loop import train as run_training

    try:
        result = run_training(_config(ctx, values))
    finally:
        stop.ignore_from_now()
    if result.get("status") == "preempted":
        click.echo(f"preempted at step {result.get('step')} (signal {result.get('signal')}): resume with "
                   f"--resume auto; exit status {stop.EXIT_STOPPED}", err=True)
        ctx.exit(stop.EXIT_STOPPED)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(), default="samples.png", show_default=True,
              help="PNG grid to write, or a directory for --single images.")
@click.option("-n", "--num", type=click.IntRange(1, 100_000), default=64, show_default=True, help="Images to generate.")
@click.option("--single", is_flag=True, help="Write N single PNG files into --out instead of one grid.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--no-ema", is_flag=True, help="Use G's raw weights instead of their moving average.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--class", "class_", type=int, default=None, metavar="K",
              help="Only class K (conditional checkpoints); without it a conditional grid has one row per class.")
def sample(checkpoint, out, num, single, seed, no_ema, overwrite, class_):
    """Generate images from a checkpoint: one grid, or N single images."""
    from .sample import sample_checkpoint

    written = sample_checkpoint(checkpoint, out, num=num, single=single, seed=seed, ema=not no_ema,
                                overwrite=overwrite, class_=class_)
    click.echo(f"wrote {written}")


# ---------------------------------------------------------------------------------------- evaluate
@main.command()
@click.argument("target", metavar="[CHECKPOINT_OR_RUN_DIR]", required=False, type=click.Path())
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Reference dataset (default: the one the checkpoint was trained on).")
@click.option("--real", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Twice, instead of a checkpoint: the distance between two datasets (the first is the reference).")
@click.option("-n", "--num", type=click.IntRange(2, None), default=10_000, show_default=True,
              help="Generated images (shared among the ranks).")
@click.option("--real-num", type=click.IntRange(2, None), default=None,
              help="Reference images: the dataset's first N (default: all).")
@click.option("--metrics", default="fid,pr", show_default=True, help="Comma-separated: fid, kid, pr (precision/recall).")
@click.option("--split", type=click.Choice(["auto", "holdout", "train"]), default="auto", show_default=True,
              help="Reference split of the data: auto takes its held-out split (prepare --holdout) when it has one.")
@click.option("--inception", type=click.Path(dir_okay=False), default=None,
              help="Inception weights file (default: $HVDGAN_INCEPTION, else the one scripts/setup.sh fetched).")
@click.option("--batch-size", type=click.IntRange(1, None), default=32, show_default=True,
              help="Images per Inception batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed of the generated images.")
@click.option("--no-ema", is_flag=True, help="Evaluate G's raw weights instead of their moving average.")
@click.option("--device", type=click.Choice(OPTIONS["device"].choices), default="auto", show_default=True)
@click.option("--no-cache", is_flag=True, help="Recompute the reference features (and do not write them).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None, help="Also write the JSON result here.")
def evaluate(target, data, real, num, real_num, metrics, inception, batch_size, seed, no_ema, device, no_cache, out,
             split):
    """FID, KID and precision/recall with Inception features, alone or under a launcher.

    \b
      hvdgan evaluate runs/digits-demo --num 2000                 # newest checkpoint vs its data
      horovodrun -np 2 hvdgan evaluate runs/digits-demo/checkpoints/ckpt-best.pt -n 2000 --metrics fid,kid,pr
      hvdgan evaluate --real data/digits --real data/digits-test  # two datasets
    Prints one JSON document (rank 0). Under horovodrun write -n, not --num (horovodrun's own parser
    takes --num for an abbreviation of its --num-proc).
    """
    import json

    from .eval import evaluate as evaluate_mod
    from .eval import parse_metrics

    try:
        names = parse_metrics(metrics)
    except HvdganError as exc:
        raise click.BadParameter(exc.reason, param_hint="'--metrics'") from None
    result = evaluate_mod.run(target, real, data, num=num, real_num=real_num, metrics=names, inception=inception,
                              batch_size=batch_size, seed=seed, ema=not no_ema, device=device,
                              use_cache=not no_cache, out=out, split=split)
    if result is not None:
        click.echo(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------------------ launch
@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--np", "-np", "np_", type=int, required=True, help="Number of ranks (processes) to start.")
@click.option("--hosts", "-H", metavar="H1:N,H2:N", help="Hosts and slots (default: this host).")
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False), help="Open MPI / Horovod hostfile.")
@click.option("--launcher", type=click.Choice(LAUNCHERS), default="horovodrun", show_default=True,
              help="srun runs with --mpi=pmix (inside or outside an allocation).")
@click.option("--gloo/--mpi", "gloo", default=None, help="horovodrun's controller (default: horovodrun's choice).")
@click.option("--mca", multiple=True, metavar="KEY=VALUE", help="mpirun's Open MPI settings, repeatable; replace "
              "the default $HVDGAN_MPIRUN_MCA or 'pml=ob1 btl=^openib' (e.g. --mca pml=ucx on InfiniBand).")
@click.option("--iface", metavar="NAME", default=None, help="Network interface for the ranks' traffic (Gloo, Open "
              "MPI TCP, NCCL bootstrap); default $HVDGAN_NET_IFACE, else the launcher's own choice.")
@click.option("--elastic", is_flag=True, help="Horovod elastic: the run goes on when ranks are lost (docs/elastic.md).")
@click.option("--min-np", type=click.IntRange(min=1), help="--elastic: the fewest ranks to go on with [1].")
@click.option("--max-np", type=click.IntRange(min=1), help="--elastic: the most ranks [--np].")
@click.option("--discovery", metavar="SCRIPT", help="--elastic: a script printing host:slots lines [the hosts of "
              "--hostfile (read anew), --hosts, the Slurm job, or this host].")
@click.option("--dry-run", is_flag=True, help="Print the command and exit.")
@click.argument("job", metavar="JOB")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRAIN OPTIONS...]")
def launch(np_, hosts, hostfile, launcher, gloo, mca, iface, elastic, min_np, max_np, discovery, dry_run, job, extra):
    """Start `hvdgan train --job JOB` on N ranks with horovodrun, mpirun or srun.

    \b
    Prints the composed command line, then runs it and waits. Options after `--` go to `hvdgan train`, e.g.
        hvdgan launch --np 4 --launcher mpirun jobs/cifar10-dcgan64.yaml -- --max-steps 1000
    TERM, INT (Ctrl-C), HUP or USR1: every rank stops after the step in progress, with a checkpoint. Exit
    status: `hvdgan train`'s (0 finished, 75 stopped: resume with --resume auto); a launcher's failure else.
    """
    from .dist import launch as launch_mod
    from .dist.supervise import supervise
    extra = list(extra[1:] if extra[:1] == ("--",) else extra)  # (options stop at JOB: click hands `--` on)
    out = _train_config(job, extra).output.out  # the options `hvdgan train` will get: a bad one stops here
    try:
        cmd = launch_mod.compose(np_, job, extra, launcher=launcher, hosts=hosts, hostfile=hostfile, mca=mca,
                                 iface=iface, controller=None if gloo is None else ("gloo" if gloo else "mpi"),
                                 elastic=(min_np, max_np, discovery) if elastic else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(launch_mod.quote(cmd))
    if dry_run:
        return
    sys.exit(supervise(cmd, Path(out)))


def _train_config(job: str, extra: list[str]):
    """What `hvdgan train --job JOB EXTRA...` will run with, checked the same way (HVDGAN_TRAIN_* included)."""
    with train.make_context("train", ["--job", job, *extra], auto_envvar_prefix="HVDGAN_TRAIN") as ctx:
        return _config(ctx, ctx.params)
