"""The ResNet (SNGAN/BigGAN-style) models, class-conditional training, DiffAugment and R1,
with the equivalences that hold for DCGAN (identical ranks, SyncBatchNorm, exact resume, traffic)."""

import copy
import json
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, flat_state, hvdgan, launch, opt_tensors, run_env
from hvdgan.dist.launch import run
from hvdgan.models import parse_policy, syncbn
from hvdgan.models.augment import DiffAugment
from hvdgan.config import DataFacts, resolve
from hvdgan.dist.world import World
from hvdgan.config import build as build_config
from hvdgan.errors import HvdganError
from hvdgan.run.runlog import read_metrics
from conftest import input_moves
from hvdgan.models.placement import block_devices, place
from hvdgan.models.dcgan import ClassInput, CondBatchNorm2d, Discriminator, Generator
from hvdgan.models.zoo import architecture, build_networks, generator_from_arch

WORKER = str(ROOT / "tests" / "gan_worker.py")
TINY = ["--model", "resnet", "--ngf", "4", "--ndf", "4", "--nz", "16", "--batch-size", "16", "--log-every", "1",
        "--no-tensorboard"]


# ------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("classes", [0, 10])
def test_resnet_shapes_blocks_and_architecture(size, classes):
    G, D = build_networks("resnet", 16, 4, 4, 3, size, num_classes=classes)
    assert [n for n, _ in G.named_children()] == ["stem", "body", "out"]
    assert [n for n, _ in D.named_children()] == ["trunk", "head"]
    y = torch.arange(5) % 10 if classes else None
    cond = () if y is None else (y,)
    x = G(torch.randn(5, 16, 1, 1), *cond)
    assert x.shape == (5, 3, size, size) and x.abs().max() <= 1
    assert D(x, *cond).shape == (5,)
    assert len(G.body) == (3 if size == 32 else 4)
    # spectral norm on every weight of D; its u vectors are buffers (broadcast with the state dict)
    assert all(hasattr(m, "parametrizations") for m in D.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                         torch.nn.Linear)))
    assert any(k.endswith("_u") for k in D.state_dict())
    assert sum(isinstance(m, CondBatchNorm2d) for m in G.modules()) == (2 * len(G.body) if classes else 0)
    G2 = generator_from_arch(architecture(G))
    G2.load_state_dict(G.state_dict())
    assert architecture(D)["num_classes"] == classes and architecture(G2) == architecture(G)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("sn", [False, True])
def test_conditional_dcgan_shapes_blocks_and_architecture(size, sn):
    # conditional BatchNorm after every BatchNorm of G, a projection head in D; unconditional state-dict
    # keys unchanged (checkpoints of earlier versions still load)
    G, D = build_networks("dcgan", 16, 4, 4, 3, size, sn, num_classes=10)
    assert [n for n, _ in G.named_children()] == ["stem", "body", "out"]
    assert [n for n, _ in D.named_children()] == ["trunk", "head"]
    y = torch.arange(5) % 10
    x = G(torch.randn(5, 16, 1, 1), y)
    assert x.shape == (5, 3, size, size) and x.abs().max() <= 1 and D(x, y).shape == (5,)
    assert sum(isinstance(m, CondBatchNorm2d) for m in G.modules()) == (3 if size == 32 else 4)
    assert isinstance(G.stem[0], ClassInput) and G.stem[1].in_channels == 2 * 16  # z and the class embedding
    assert architecture(G)["num_classes"] == architecture(D)["num_classes"] == 10
    G2 = generator_from_arch(architecture(G))
    G2.load_state_dict(G.state_dict())
    plain_G, plain_D = build_networks("dcgan", 16, 4, 4, 3, size, sn)
    assert "num_classes" not in architecture(plain_G) and "num_classes" not in architecture(plain_D)
    assert list(plain_G.state_dict()) == list(Generator(16, 4, 3, size).state_dict())
    assert "stem.1.weight" in plain_G.state_dict() and "head.0.weight" in Discriminator(4, 3, size).state_dict()


@pytest.mark.parametrize("family", ["resnet", "dcgan"])
def test_conditional_outputs_depend_on_the_label(family):
    torch.manual_seed(0)
    G, D = build_networks(family, 16, 4, 4, 1, 32, num_classes=10)
    G.eval()
    with torch.no_grad():  # (a fresh CondBN starts at gain 1, bias 0: give the classes their own)
        for m in G.modules():
            if isinstance(m, CondBatchNorm2d):
                m.bias.weight.normal_()
    z = torch.randn(2, 16, 1, 1).repeat(2, 1, 1, 1)
    y = torch.tensor([0, 0, 1, 1])
    x = G(z, y)
    assert not torch.allclose(x[:2], x[2:])
    assert not torch.allclose(D(x[:2], y[:2]), D(x[:2], y[2:]))
    with pytest.raises(ValueError, match="labels"):
        G(z)


@pytest.mark.parametrize("family,classes", [("resnet", 0), ("resnet", 10), ("dcgan", 10)])
def test_placed_model_matches_the_unplaced_one(family, classes):
    torch.manual_seed(0)
    G0, D0 = build_networks(family, 16, 4, 4, 1, 32, num_classes=classes)
    G1, D1 = copy.deepcopy(G0), copy.deepcopy(D0)
    devices = {"G": {"stem": "cpu", "body": torch.device("cpu", 0), "out": "cpu"},
               "D": {"trunk": torch.device("cpu", 0), "head": "cpu"}}
    place(G1, devices["G"])
    place(D1, devices["D"])
    assert set(input_moves(G1)) == {"stem", "body", "out"} and set(input_moves(D1)) == {"trunk", "head"}
    assert block_devices("G.body=cpu,D.head=cpu", 0, 1, "cpu", visible=0)["D"]["head"].type == "cpu"
    gen = torch.Generator().manual_seed(1)
    z, real = torch.randn(6, 16, 1, 1, generator=gen), torch.rand(6, 1, 32, 32, generator=gen) * 2 - 1
    cond = (torch.arange(6) % 10,) if classes else ()
    for G, D in ((G0, D0), (G1, D1)):
        (D(real, *cond).sum() - D(G(z, *cond), *cond).square().mean()).backward()
    for a, b in zip([*G0.parameters(), *D0.parameters()], [*G1.parameters(), *D1.parameters()]):
        assert torch.equal(a.grad, b.grad)
    assert all(torch.equal(a, b) for a, b in zip(D0.state_dict().values(), D1.state_dict().values()))


@pytest.mark.parametrize("family,bns,conditional", [("resnet", 2 * 3 + 1, 6), ("dcgan", 3, 3)])
def test_conditional_batchnorm_becomes_sync_batchnorm(family, bns, conditional):
    # resnet: two conditional BNs per block, and out's BN; dcgan: every BN of G is conditional
    G, _ = build_networks(family, 16, 4, 4, 1, 32, num_classes=10)
    counter = [0]
    syncbn.convert(G, counter)
    found = [m for m in G.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert found and all(isinstance(m, syncbn.SyncBatchNorm) for m in found)
    assert counter[0] == len(found) == bns
    assert sum(isinstance(m, CondBatchNorm2d) and isinstance(m.bn, syncbn.SyncBatchNorm)
               for m in G.modules()) == conditional


# ------------------------------------------------------------------------------------------ DiffAugment
def test_diffaugment_is_random_per_image_reproducible_and_differentiable():
    aug = DiffAugment("translation,cutout,color")
    x = (torch.rand(8, 3, 32, 32) * 2 - 1).requires_grad_()
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    a.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # cutout blanks a 16x16 square (at most; it may be clipped at the border) of every image
    cut = DiffAugment("cutout")(torch.ones(64, 1, 32, 32), torch.Generator().manual_seed(2))
    zeros = (cut == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 256).all() and (zeros == 256).any()
    # translation moves the content by up to 4 pixels (1/8 of 32), filling with zeros
    img = torch.zeros(64, 1, 32, 32)
    img[:, :, 16, 16] = 1
    moved = DiffAugment("translation")(img, torch.Generator().manual_seed(3))
    where = moved.flatten(1).argmax(1)
    dy, dx = where // 32 - 16, where % 32 - 16
    assert dy.abs().max() <= 4 and dx.abs().max() <= 4 and len(set(zip(dy.tolist(), dx.tolist()))) > 10
    assert torch.equal(DiffAugment("")(x), x) and not DiffAugment("none")


def test_augment_policy_and_model_options_are_checked():
    assert parse_policy("cutout, translation") == ("translation", "cutout")
    with pytest.raises(HvdganError, match="unknown operation 'flip'"):
        parse_policy("translation,flip")
    with pytest.raises(HvdganError, match="augment: unknown operation .flip."):
        build_config({"data": "d", "augment": "flip"})
    build_config({"data": "d", "conditional": True})  # both families are conditional
    facts = DataFacts(channels=1, image_size=32, batches_per_epoch=1)
    loss = lambda **kw: resolve(build_config({"data": "d", "device": "cpu", **kw}), World(), facts).gan.loss  # noqa: E731
    assert loss(model="resnet") == "hinge" and loss() == "bce" and loss(model="resnet", loss="bce") == "bce"
    with pytest.raises(HvdganError, match="r1_every: must be >= 1"):
        build_config({"data": "d", "r1_every": 0})
    with pytest.raises(HvdganError, match="mode_seeking: must be >= 0"):
        build_config({"data": "d", "mode_seeking": -1})
    assert resolve(build_config({"data": "d", "device": "cpu", "mode_seeking": 0.5}), World(), facts).gan.mode_seeking == 0.5


def test_mode_seeking_is_msgans_ratio_over_the_pairs_of_one_class():
    from hvdgan.gan import mode_seeking

    torch.manual_seed(0)
    x, z, y = torch.randn(6, 1, 4, 4), torch.randn(6, 3, 1, 1), torch.tensor([0, 1, 0, 2, 1, 0])
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6) if y[i] == y[j]]  # 4 pairs of one class
    r = sum((x[i] - x[j]).abs().mean() / (z[i] - z[j]).abs().mean() for i, j in pairs) / len(pairs)
    assert torch.allclose(mode_seeking(x, z, y), 1 / (r + 1e-5))
    everyone = [(i, j) for i in range(6) for j in range(i + 1, 6)]  # unconditional: every pair
    r = sum((x[i] - x[j]).abs().mean() / (z[i] - z[j]).abs().mean() for i, j in everyone) / len(everyone)
    assert torch.allclose(mode_seeking(x, z), 1 / (r + 1e-5))
    # a G that ignores z within a class: the term is large, and its gradient pushes the images apart
    same = x[y].clone().requires_grad_(True)  # image k for every fake of class k
    assert mode_seeking(same, z, y) > 1e3 * mode_seeking(x, z, y)
    apart = torch.randn_like(same) * 1e-2
    assert mode_seeking(same.detach() + apart, z, y) < mode_seeking(same, z, y)
    assert mode_seeking(x, z, torch.arange(6)) == 0  # no two fakes of one class: nothing to compare


# ---------------------------------------------------------------------------------------- Horovod
@pytest.fixture(scope="module")
def resnet_checks(digits, tmp_path_factory):
    """One np=1 run (plain python: Horovod alone is one rank) and one np=2 launch of gan_worker's resnet
    mode, which runs every ResNet check; the tests below read what they wrote."""
    out = tmp_path_factory.mktemp("resnet-checks")
    proc = run([sys.executable, WORKER, "resnet", str(out)], timeout=180, capture_output=True, text=True,
               env=run_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = launch("gloo", [sys.executable, WORKER, "resnet", str(out), str(digits)], timeout=300).stdout
    return out, stdout


@pytest.mark.mp
def test_resnet_conditional_parameters_identical_on_both_ranks(resnet_checks):
    # conditional, DiffAugment (each rank its own draws), lazy R1, 2 D steps per G step
    _, stdout = resnet_checks
    assert stdout.count("parameters IDENTICAL on 2 ranks") == 2, stdout


@pytest.mark.mp
@pytest.mark.parametrize("family", ["", "-dcgan-cond"])  # the conditional ResNet, the conditional DCGAN
def test_conditional_sync_batchnorm_two_ranks_equal_one_rank_with_double_batch(resnet_checks, family):
    out, _ = resnet_checks
    a, b, local = (torch.load(out / f"{name}{family}.pt") for name in ("np1-sync", "np2-sync", "np2-local"))
    assert a.shape == b.shape
    if family:  # the conditional DCGAN runs in float64 (see gan_worker.resnet): measured 2e-16 (AVX512), 6e-10 (AVX2)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (local - a).abs().max() > 1e-4  # the control: per-rank (conditional) BatchNorm parts ways


@pytest.mark.mp
def test_conditional_samples_follow_their_class(resnet_checks):
    # two classes, dark and bright images: 150 steps of a tiny conditional ResNet tell them apart
    # (measured: class 0 -0.48, class 1 +0.45 mean brightness). The digits check is a benchmark:
    # benchmarks/bench_conditional.py
    out, _ = resnet_checks
    c = json.loads((out / "conditioning.json").read_text())
    assert c["class0"] < -0.2 and c["class1"] > 0.2, c


@pytest.mark.mp
def test_resnet_iteration_with_augment_and_r1_allreduces_exactly_G_and_D(resnet_checks):
    out, _ = resnet_checks
    c = json.loads((out / "traffic.json").read_text())
    params = c["params_G"] + c["params_D"]
    assert c["tensors"] == c["tensors_G_D"] and c["elements"] == params and c["bytes"] == params * 4


# ------------------------------------------------------------------------------ the loop, resume, sample
def test_conditional_resnet_resumes_exactly_and_samples_by_class(digits, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--data", str(digits), *TINY, "--conditional", "--augment", "translation,cutout,color", "--r1", "1",
              "--r1-every", "3", "--d-steps", "2", "--checkpoint-every", "100", "--sample-every", "3"]
    hvdgan("train", *common, "--out", straight, "--max-steps", "4")
    hvdgan("train", *common, "--out", split, "--max-steps", "2")
    hvdgan("train", *common, "--out", split, "--max-steps", "4", "--resume", "auto")
    a = torch.load(straight / "checkpoints" / "ckpt-00000004.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "ckpt-00000004.pt", weights_only=False)
    for key in ("G", "D", "G_ema"):
        assert torch.equal(flat_state(a[key]), flat_state(b[key])), key
    for key in ("opt_g", "opt_d"):
        assert torch.equal(opt_tensors(a[key]), opt_tensors(b[key])), key
    assert a["arch"]["G"]["num_classes"] == 10 and a["config"]["loss"] == "hinge"
    assert [r["step"] for r in read_metrics(split / "metrics.jsonl") if "loss_d" in r] == [1, 2, 3, 4]

    # the training grid has one row of 8 per class: 10 rows
    from PIL import Image

    grid = Image.open(straight / "samples" / "step-000003.png")
    assert grid.size == (2 + 8 * 34, 2 + 10 * 34)
    ckpt = straight / "checkpoints" / "ckpt-00000004.pt"
    rows = tmp_path / "rows.png"
    hvdgan("sample", ckpt, "--out", rows, "-n", "30")  # 3 per class
    assert Image.open(rows).size == (2 + 3 * 34, 2 + 10 * 34)
    seven = tmp_path / "seven"
    hvdgan("sample", ckpt, "--out", seven, "-n", "4", "--single", "--class", "7")
    assert len(list(seven.glob("*.png"))) == 4
    bad = hvdgan("sample", ckpt, "--out", tmp_path / "x.png", "--class", "10", check=False)
    assert bad.returncode != 0 and "--class 10" in bad.stderr and "0..9" in bad.stderr


def test_conditional_errors(digits, tmp_path):
    from hvdgan.data import write_dataset

    unlabelled = tmp_path / "unlabelled"
    write_dataset(unlabelled, np.zeros((40, 1, 32, 32), np.uint8), shards=2)
    proc = hvdgan("train", "--data", unlabelled, "--out", tmp_path / "u", *TINY, "--conditional", "--max-steps", "1",
                  check=False)
    assert proc.returncode != 0 and "--conditional needs class labels" in proc.stderr, proc.stderr
    assert str(unlabelled) in proc.stderr and not (tmp_path / "u").exists()
    # --class on an unconditional checkpoint
    run = tmp_path / "plain"
    hvdgan("train", "--data", digits, "--out", run, *TINY, "--max-steps", "1", "--sample-every", "100")
    proc = hvdgan("sample", run / "checkpoints" / "ckpt-00000001.pt", "--out", tmp_path / "c.png", "--class", "1",
                  check=False)
    assert proc.returncode != 0 and "unconditional" in proc.stderr


@pytest.mark.parametrize("job", ["cifar10-sngan32.yaml", "cifar10-cond-resnet32.yaml"])
def test_sngan_job_files_hold_the_published_settings(job):
    from hvdgan.config import load_job_file

    net, optim = (cfg := build_config(load_job_file(ROOT / "jobs" / job))).network, cfg.optim
    assert (net.model, optim.loss, optim.beta1, optim.beta2, optim.d_steps, optim.lr_g, optim.lr_d, net.image_size) == \
        ("resnet", "hinge", 0.0, 0.9, 5, 2e-4, 2e-4, 32)
    assert net.conditional == (job == "cifar10-cond-resnet32.yaml")
