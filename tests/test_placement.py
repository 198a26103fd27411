"""Model parallelism inside a node — the placement parser, GPU groups, placed models, training
and resuming with placements, and `hvdgan info --placement`."""

import copy
import json
import re
import sys

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from conftest import HVDGAN, ROOT, flat_state, input_moves, launch, opt_tensors
from conftest import run_env as subprocess_env
from hvdgan import info
from hvdgan.models import syncbn
from hvdgan.errors import HvdganError
from hvdgan.dist.launch import run
from hvdgan.run.runlog import read_metrics
from hvdgan.models.dcgan import Discriminator, Generator
from hvdgan.models.placement import (MoveInput, Placement, block_devices, cuda_indices, describe, gpu_group,
                              launcher_gave_own_gpus, place)

WORKER = str(ROOT / "tests" / "gan_worker.py")
CPU = torch.device("cpu")


def cuda(i):
    return torch.device("cuda", i)


# ------------------------------------------------------------------------------------------- parser
@pytest.mark.parametrize("text, entries", [
    (None, {}),
    ("", {}),
    (" , ", {}),
    ("G=gpu0,D=cpu", {("G", None): "gpu0", ("D", None): "cpu"}),
    (" G = gpu0 , D.head = CPU ", {("G", None): "gpu0", ("D", "head"): "cpu"}),
    ("g=GPU0,d.trunk=gpu1", {("G", None): "gpu0", ("D", "trunk"): "gpu1"}),
    ("G=gpu0,D.trunk=gpu1,D.head=cpu", {("G", None): "gpu0", ("D", "trunk"): "gpu1", ("D", "head"): "cpu"}),
    ("G.stem=gpu00,G.body=gpu01,G.out=cpu", {("G", "stem"): "gpu0", ("G", "body"): "gpu1", ("G", "out"): "cpu"}),
    ("G=cpu,G.out=gpu0", {("G", None): "cpu", ("G", "out"): "gpu0"}),
])
def test_parse(text, entries):
    p = Placement.parse(text)
    assert p.entries == entries
    assert bool(p) == bool(entries)
    assert Placement.parse(str(p)).entries == entries  # str() is a canonical spec
    assert Placement.parse(p) is p


@pytest.mark.parametrize("text, gpus", [(None, 0), ("G=cpu,D=cpu", 0), ("G=gpu0", 1), ("G=gpu0,D=gpu1", 2),
                                        ("G=gpu1,D.trunk=gpu0,D.head=gpu2", 3), ("D.head=gpu0,G=cpu", 1)])
def test_gpus_per_rank(text, gpus):
    assert Placement.parse(text).gpus_per_rank == gpus


def test_block_entries_override_their_network():
    p = Placement.parse("D=gpu0,D.head=cpu")
    assert (p.slot_of("D", "trunk"), p.slot_of("D", "head"), p.slot_of("G", "stem")) == ("gpu0", "cpu", None)
    assert p.on_gpu() == ["D"]


@pytest.mark.parametrize("text, message", [
    ("G", r"'G' is not NET\[\.BLOCK\]=DEVICE"),
    ("G:gpu0", r"is not NET\[\.BLOCK\]=DEVICE"),
    ("X=cpu", r"unknown network 'X' in 'X=cpu'; valid targets: G, D, G\.stem, G\.body, G\.out, D\.trunk, D\.head"),
    ("=gpu0", r"unknown network ''"),
    ("G.head=cpu", r"unknown block 'G\.head'; G's blocks are G\.stem, G\.body, G\.out"),
    ("D.conv1=gpu0", r"unknown block 'D\.conv1'; D's blocks are D\.trunk, D\.head"),
    ("D.=cpu", r"unknown block 'D\.'"),
    ("G=tpu0", r"unknown device 'tpu0' in 'G=tpu0': use cpu or gpuK"),
    ("G=", r"unknown device ''"),
    ("G=gpu", r"unknown device 'gpu'"),
    ("G=gpu-1", r"unknown device 'gpu-1'"),
    ("G=cuda:1,D=cpu", r"unknown device 'cuda:1'.*gpu1 is slot 1 of the rank's GPU group"),
    ("G=gpu0,G=cpu", r"G is placed twice"),
    ("D.head=cpu,D.head=gpu0", r"D\.head is placed twice"),
    ("G=gpu1,D=cpu", r"gpu0 is not used; GPU slots count from gpu0.*not CUDA device 1"),
    ("G=gpu0,D=gpu2", r"gpu1 is not used"),
])
def test_parse_errors_name_the_option_and_value(text, message):
    with pytest.raises(HvdganError, match=message) as err:
        Placement.parse(text)
    assert err.value.message.startswith(f"--placement {text.strip()}: ")
    assert "\n" not in err.value.message


# --------------------------------------------------------------------------------------- GPU groups
@pytest.mark.parametrize("local_size, per_rank, visible, groups", [
    (4, 2, 8, [[0, 1], [2, 3], [4, 5], [6, 7]]),  # horovodrun -np 4 on 8 GPUs, G=gpu0,D=gpu1
    (8, 1, 8, [[0], [1], [2], [3], [4], [5], [6], [7]]),
    (2, 3, 8, [[0, 1, 2], [3, 4, 5]]),  # GPUs 6 and 7 idle
    (1, 2, 2, [[0, 1]]),
    (1, 1, 4, [[0]]),
    (2, 4, 8, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    (3, 0, 0, [[], [], []]),  # everything on the CPU: no GPUs needed
])
def test_gpu_groups_follow_the_local_rank(local_size, per_rank, visible, groups):
    got = [gpu_group(r, local_size, per_rank, visible) for r in range(local_size)]
    assert got == groups
    used = [g for group in got for g in group]
    assert len(used) == len(set(used))  # no two ranks share a GPU


@pytest.mark.parametrize("local_size, per_rank, visible", [(4, 2, 2), (4, 1, 1), (2, 2, 4), (8, 2, 3)])
def test_narrowed_ranks_use_the_gpus_they_see(local_size, per_rank, visible):
    # Slurm --gpus-per-task: CUDA_VISIBLE_DEVICES holds this task's GPUs only, numbered from 0
    assert [gpu_group(r, local_size, per_rank, visible, narrowed=True) for r in range(local_size)] == \
        [list(range(per_rank))] * local_size


@pytest.mark.parametrize("local_size, per_rank, visible, fit", [(8, 2, 8, 4), (4, 2, 6, 3), (2, 2, 2, 1),
                                                                (3, 1, 2, 2)])
def test_too_many_gpus_says_how_many_ranks_fit(local_size, per_rank, visible, fit):
    with pytest.raises(HvdganError) as err:
        gpu_group(0, local_size, per_rank, visible, spec="G=gpu0,D=gpu1")
    msg = err.value.message
    assert msg.startswith("--placement G=gpu0,D=gpu1: ")
    assert f"{per_rank} GPU(s) per rank x {local_size} ranks on this node = {per_rank * local_size} GPUs" in msg
    assert f"{visible} are visible: at most {fit} rank(s) per node fit" in msg
    assert f"--ntasks-per-node={fit} --gpus-per-task={per_rank}" in msg


def test_gpu_group_errors():
    with pytest.raises(HvdganError, match="uses 3 GPUs per rank, but this node has 2 visible: no rank fits"):
        gpu_group(0, 1, 3, 2)
    with pytest.raises(HvdganError, match="sees no CUDA GPU"):
        gpu_group(0, 1, 1, 0)
    with pytest.raises(HvdganError, match="the launcher gave this rank 1; ask for --gpus-per-task=2"):
        gpu_group(1, 2, 2, 1, narrowed=True)
    with pytest.raises(ValueError):
        gpu_group(2, 2, 1, 8)


SRUN_TASK1 = {"SLURM_GPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "2,3", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("local_rank, visible, env, narrowed", [
    (1, 2, SRUN_TASK1, True),
    (1, 2, {**SRUN_TASK1, "SLURM_GPUS_PER_TASK": "a100:2"}, True),
    (1, 2, {**SRUN_TASK1, "SLURM_GPUS_PER_TASK": "a100:1,v100:1"}, True),
    (1, 8, SRUN_TASK1, False),  # --gpu-bind=none: every task sees the node's GPUs
    (1, 2, {k: v for k, v in SRUN_TASK1.items() if k != "CUDA_VISIBLE_DEVICES"}, False),
    (1, 2, {k: v for k, v in SRUN_TASK1.items() if k != "SLURM_GPUS_PER_TASK"}, False),  # horovodrun/mpirun
    (1, 2, {**SRUN_TASK1, "SLURM_LOCALID": "0"}, False),  # mpirun in an allocation: the daemon's variables
    (1, 2, {**SRUN_TASK1, "SLURM_GPUS_PER_TASK": "junk"}, False),
    (0, 2, {}, False),
])
def test_launcher_narrowing_is_detected_from_slurm(local_rank, visible, env, narrowed):
    assert launcher_gave_own_gpus(local_rank, visible, env) is narrowed


# ------------------------------------------------------------------------------------ block devices
def test_block_devices_for_each_rank_of_a_node():
    p = Placement.parse("G=gpu0,D.trunk=gpu1,D.head=cpu")
    for r in range(4):
        devices = block_devices(p, r, 4, cuda(r), visible=8, env={})
        assert devices == {"G": {"stem": cuda(2 * r), "body": cuda(2 * r), "out": cuda(2 * r)},
                           "D": {"trunk": cuda(2 * r + 1), "head": CPU}}
        assert cuda_indices(devices) == [2 * r, 2 * r + 1]
    assert describe(block_devices(p, 3, 4, "cuda:3", visible=8, env={})) == "G@cuda:6; D: trunk@cuda:7, head@cpu"


def test_unnamed_blocks_go_to_the_default_device_inside_the_group():
    # D is not named: with a GPU default it goes to the group's first GPU, not cuda:local_rank (another group's)
    devices = block_devices("G.stem=gpu0,G.out=gpu1", 1, 2, cuda(1), visible=4, env={})
    assert devices["D"] == {"trunk": cuda(2), "head": cuda(2)}
    assert devices["G"] == {"stem": cuda(2), "body": cuda(2), "out": cuda(3)}
    # a CPU default (no GPU, or --device cpu) stays the CPU; no placement: the default everywhere
    assert block_devices("G=gpu0", 0, 1, "cpu", visible=1, env={})["D"] == {"trunk": CPU, "head": CPU}
    assert block_devices(None, 1, 2, cuda(1), visible=2, env={}) == {
        "G": {"stem": cuda(1), "body": cuda(1), "out": cuda(1)}, "D": {"trunk": cuda(1), "head": cuda(1)}}
    assert block_devices("", 0, 1, "cpu", visible=0) == {"G": dict.fromkeys(Generator.BLOCKS, CPU),
                                                         "D": dict.fromkeys(Discriminator.BLOCKS, CPU)}


def test_block_devices_under_slurm_gpus_per_task():
    env = {"SLURM_GPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "6,7", "SLURM_LOCALID": "3"}
    devices = block_devices("G=gpu0,D=gpu1", 3, 4, cuda(0), visible=2, env=env)
    assert describe(devices) == "G@cuda:0; D@cuda:1"
    # the same numbers without Slurm's binding: 4 ranks cannot share 2 GPUs
    with pytest.raises(HvdganError, match="at most 1 rank"):
        block_devices("G=gpu0,D=gpu1", 3, 4, cuda(0), visible=2, env={})


def test_gpu_placement_without_a_gpu_is_a_clear_error():
    with pytest.raises(HvdganError) as err:
        block_devices("G=gpu0,D.head=gpu0,D.trunk=cpu", 0, 1, "cpu", visible=0, env={"CUDA_VISIBLE_DEVICES": ""})
    msg = err.value.message
    assert msg.startswith("--placement G=gpu0,D.head=gpu0,D.trunk=cpu: puts G, D.head on a GPU, but this rank sees "
                          "no CUDA GPU")
    assert "CUDA_VISIBLE_DEVICES=''" in msg or "built without CUDA" in msg
    if not torch.cuda.is_available():  # this machine: torch's own count
        with pytest.raises(HvdganError, match="sees no CUDA GPU"):
            block_devices("D=gpu0", 0, 1, "cpu")


# ------------------------------------------------------------------------------------- placed models
def nets(spectral_norm=False):
    torch.manual_seed(0)
    return Generator(nz=16, ngf=8, channels=1, image_size=32), Discriminator(8, 1, 32, spectral_norm=spectral_norm)


def run_gan_pass(G, D, z, real):
    """Two forward passes through D (spectral norm's power iteration moves on), the loss, the gradients."""
    fake = G(z)
    loss = D(real).sum() - D(fake).square().mean()
    loss.backward()
    return fake, loss


def grads_and_state(*models):
    return ([p.grad.clone() for m in models for p in m.parameters()],
            [t.clone() for m in models for t in m.state_dict().values()])


@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("placement", [
    lambda: block_devices("G=cpu,D.head=cpu", 0, 1, "cpu", visible=0),
    lambda: {"G": {"stem": "cpu", "body": CPU, "out": torch.device("cpu")}, "D": {"trunk": CPU, "head": "cpu"}},
    lambda: {"G": {"body": "cpu"}, "D": {}},  # partial: the other blocks stay where they are
    # cpu:0 is the CPU spelled another way: a "boundary" whose hook moves nothing but still runs
    lambda: {"G": {"stem": "cpu", "body": torch.device("cpu", 0), "out": "cpu"},
             "D": {"trunk": torch.device("cpu", 0), "head": "cpu"}},
])
def test_placed_model_matches_the_unplaced_one(placement, spectral_norm):
    G0, D0 = nets(spectral_norm)
    G1, D1 = copy.deepcopy(G0), copy.deepcopy(D0)
    devices = placement()
    place(G1, devices["G"])
    place(D1, devices["D"])
    gen = torch.Generator().manual_seed(1)
    z, real = torch.randn(6, 16, 1, 1, generator=gen), torch.rand(6, 1, 32, 32, generator=gen) * 2 - 1
    for _ in range(2):
        fake0, loss0 = run_gan_pass(G0, D0, z, real)
        fake1, loss1 = run_gan_pass(G1, D1, z, real)
        assert torch.equal(fake0, fake1) and torch.equal(loss0, loss1)
    g0, s0 = grads_and_state(G0, D0)
    g1, s1 = grads_and_state(G1, D1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1)) and len(g0) == len(g1)
    assert all(torch.equal(a, b) for a, b in zip(s0, s1)) and len(s0) == len(s1)  # BN statistics, SN's u and v


def test_hooks_sit_exactly_at_device_boundaries():
    G, D = nets()
    place(G, {"stem": "cpu", "body": "meta", "out": "meta"})
    place(D, {"trunk": "meta", "head": "cpu"})
    assert input_moves(G) == {"stem": CPU, "body": torch.device("meta")}  # the entry and the one boundary
    assert input_moves(D) == {"trunk": torch.device("meta"), "head": CPU}
    assert [p.device.type for p in G.parameters()] == ["cpu"] * 3 + ["meta"] * (len(list(G.parameters())) - 3)
    # the activation really crosses: stem runs on the CPU, body and out on the "meta" device
    out = G(torch.randn(4, 16, 1, 1))
    assert out.device.type == "meta" and out.shape == (4, 1, 32, 32)
    # ... which is the hook's doing: without it the CPU activation meets meta weights
    del G.body._forward_pre_hooks[next(iter(G.body._forward_pre_hooks))]
    with pytest.raises((RuntimeError, NotImplementedError)):
        G(torch.randn(4, 16, 1, 1))
    # placing again replaces the hooks (no duplicates), and one device means one hook at the entry
    G, _ = nets()
    place(G, {"stem": "cpu", "body": torch.device("cpu", 0), "out": "cpu"})
    assert input_moves(G) == {"stem": CPU, "body": torch.device("cpu", 0), "out": CPU}
    place(G, {"stem": "cpu", "body": "cpu", "out": "cpu"})
    place(G, {"stem": "cpu", "body": "cpu", "out": "cpu"})
    assert input_moves(G) == {"stem": CPU}
    assert sum(isinstance(h, MoveInput) for b in G.children() for h in b._forward_pre_hooks.values()) == 1


def test_hook_moves_gradients_back_and_casts_to_the_block_dtype():
    # a bf16 activation (from an autocast GPU block) reaching float32 weights outside autocast
    G0, D0 = nets()
    D1 = place(copy.deepcopy(D0), {"trunk": "cpu", "head": "cpu"})
    x0 = (torch.rand(3, 1, 32, 32) * 2 - 1).bfloat16().requires_grad_()
    x1 = x0.detach().clone().requires_grad_()
    D0(x0.float()).sum().backward()
    D1(x1).sum().backward()
    assert x1.grad is not None and x1.grad.dtype == torch.bfloat16
    assert torch.equal(x0.grad, x1.grad)
    with pytest.raises(RuntimeError):  # unplaced: the dtypes clash
        D0(x0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the input is left to autocast
        assert D1(x1).dtype == torch.bfloat16


def test_placement_survives_syncbn_and_the_ema_copy():
    G, D = nets()
    place(G, {"stem": "cpu", "body": torch.device("cpu", 0), "out": "cpu"})
    place(D, {"trunk": "cpu", "head": torch.device("cpu", 0)})
    before = input_moves(G), input_moves(D)
    counter = [0]
    syncbn.convert(G, counter)
    syncbn.convert(D, counter)
    assert counter[0] == sum(isinstance(m, syncbn.SyncBatchNorm) for m in [*G.modules(), *D.modules()]) > 0
    assert (input_moves(G), input_moves(D)) == before
    ema = AveragedModel(G, use_buffers=True)
    assert input_moves(ema.module) == before[0]
    assert all(isinstance(h, MoveInput) for b in ema.module.children() for h in b._forward_pre_hooks.values())


def test_unknown_block_in_place_lists_the_valid_ones():
    G, _ = nets()
    with pytest.raises(HvdganError, match="unknown block 'head' of Generator; its blocks are stem, body, out"):
        place(G, {"head": "cpu"})


# ------------------------------------------------------------------------------ training with placements
@pytest.mark.mp
def test_two_ranks_with_a_placement_keep_identical_parameters(digits, tmp_path):
    # G's blocks and D on explicit devices, G's BatchNorm synchronised, D with spectral norm
    out = launch("gloo", [sys.executable, WORKER, "train", str(digits), str(tmp_path / "run"), "max_steps=4",
                          'placement="G.stem=cpu,G.out=cpu,D=cpu"', "sync_bn=true", "spectral_norm=true"],
                 timeout=240).stdout
    assert out.count("parameters IDENTICAL on 2 ranks") == 2, out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["placement"] == "G.stem=cpu,G.out=cpu,D=cpu" and cfg["devices"] == "G@cpu; D@cpu"


# several trainings in one process (one interpreter start instead of four; the same Trainer as `hvdgan train`)
RUNS = """
import json, shutil, sys
from hvdgan.dist import horovod as dist
from hvdgan.config import build
from hvdgan.run.loop import Trainer
dist.init()
for run in json.loads(sys.argv[1]):
    if "copy" in run:
        shutil.copytree(*run["copy"])
    else:
        Trainer(build(run)).run()
"""


def test_checkpoints_resume_across_placements(digits, tmp_path):
    straight, first, other, none = (str(tmp_path / name) for name in ("straight", "placed", "other", "none"))
    common = dict(data=str(digits), ngf=16, ndf=16, log_every=1, tensorboard=False, checkpoint_every=100,
                  sample_every=100, batch_size=64)  # 8 steps of 64 stay inside the first epoch

    runs = [dict(out=straight, max_steps=8),
            dict(out=first, max_steps=4, placement="G=cpu,D.head=cpu"),
            {"copy": [first, other]}, {"copy": [first, none]},
            dict(out=other, max_steps=8, resume="auto", placement="G.body=cpu,D=cpu"),
            dict(out=none, max_steps=8, resume="auto")]
    proc = run([sys.executable, "-c", RUNS, json.dumps([r if "copy" in r else {**common, **r} for r in runs])],
               timeout=240, capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-5000:]
    a = torch.load(f"{straight}/checkpoints/ckpt-00000008.pt", weights_only=False)
    half = torch.load(f"{first}/checkpoints/ckpt-00000004.pt", weights_only=False)
    assert half["config"]["placement"] == "G=cpu,D.head=cpu"
    for key in ("G", "D", "G_ema"):  # the same names and CPU tensors whatever the placement
        assert list(half[key]) == list(a[key]) and all(t.device == CPU for t in half[key].values())
    for out in (other, none):
        b = torch.load(f"{out}/checkpoints/ckpt-00000008.pt", weights_only=False)
        for key in ("G", "D", "G_ema"):
            assert torch.equal(flat_state(a[key]), flat_state(b[key])), (out, key)
        for key in ("opt_g", "opt_d"):
            assert torch.equal(opt_tensors(a[key]), opt_tensors(b[key])), (out, key)
        assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"])
        assert [r["step"] for r in read_metrics(f"{out}/metrics.jsonl") if "loss_d" in r] == list(range(1, 9))
    with open(f"{other}/config.json") as f:
        assert json.load(f)["placement"] == "G.body=cpu,D=cpu"
    with open(f"{none}/config.json") as f:
        assert json.load(f)["placement"] is None


# --------------------------------------------------------------------------------------- hvdgan info
def test_info_rank_placement_and_its_table():
    ok = info.rank_placement("G=cpu,D.head=cpu", 0, 2)
    assert ok == {"devices": "G@cpu; D@cpu", "placement_gpus": []}
    assert info.rank_placement(None, 1, 2)["devices"] in ("G@cpu; D@cpu", "G@cuda:1; D@cuda:1", "G@cuda:0; D@cuda:0")
    assert info.rank_placement("D.classifier=cpu", 0, 1) == {
        "placement_error": "--placement D.classifier=cpu: unknown block 'D.classifier'; D's blocks are D.trunk, D.head"}
    world = [{"rank": 0, "local_rank": 0, "host": "n1", "devices": "G@cuda:0; D@cuda:1", "placement_gpus": [0, 1]},
             {"rank": 1, "local_rank": 1, "host": "n1", "placement_error": "--placement G=gpu0,D=gpu1: no"}]
    text = info.table(info.placement_rows(world), ["rank", "local_rank", "host", "gpus used", "devices"])
    assert placement_rows("placement: G=gpu0,D=gpu1\n" + text) == {
        0: (0, "0,1", "G@cuda:0; D@cuda:1"), 1: (1, "-", "error: --placement G=gpu0,D=gpu1: no")}


def placement_rows(out: str) -> dict:
    lines = [re.sub(r"^\[[\d,]+\]<stdout>:", "", line) for line in out.splitlines()]  # launcher prefixes
    start = next(i for i, line in enumerate(lines) if line.startswith("placement: "))
    rows = {}
    for line in lines[start + 3:]:
        m = re.match(r"^(\d+)\s+(\d+)\s+\S+\s+(\S+)\s+(.*?)\s*$", line)
        if m:
            rows[int(m.group(1))] = (int(m.group(2)), m.group(3), m.group(4))
    return rows


@pytest.mark.mp
def test_info_gathers_each_ranks_placement_or_why_not():
    # G on a GPU: on this CPU machine every rank reports why not, and the gather still completes
    proc = launch("gloo", [HVDGAN, "info", "--json", "--placement", "G=gpu0,D.head=cpu"], timeout=120, check=False)
    out = re.sub(r"(?m)^\[[\d,]+\]<stdout>:", "", proc.stdout)  # launcher prefixes
    report = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert report["placement"] == "G=gpu0,D.head=cpu"
    world = report["world"]
    assert [(r["rank"], r["local_rank"]) for r in world] == [(0, 0), (1, 1)]
    if torch.cuda.device_count() >= 2:
        assert proc.returncode == 0 and world[1]["devices"] == "G@cuda:1; D: trunk@cuda:1, head@cpu"
        return
    assert proc.returncode != 0, proc.stdout + proc.stderr
    why = "at most 1 rank(s) per node fit" if torch.cuda.device_count() else "puts G on a GPU, but this rank sees no"
    for r in world:
        assert r["placement_error"].startswith("--placement G=gpu0,D.head=cpu: ") and why in r["placement_error"], r
    assert "--placement G=gpu0,D.head=cpu: not usable on rank(s) 0, 1" in proc.stderr, proc.stderr
