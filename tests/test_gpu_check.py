"""`make gpu-bundle` and `make gpu-check` without a GPU: the bundle's contents, size and checksums
(built once from the package index), installing from it into a fresh environment with no index, the
report's format, and the CPU dry run of the whole gpu-check sequence."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import HVDGAN, ROOT, flat_state, launch, run_env

sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_report import render_markdown  # noqa: E402

# What the fake node's Python has (with everything these pull in): torch and torchvision (a node's own),
# the scientific stack a GPU image usually has, and the build basics. The rest hvdgan and Horovod need comes
# from the bundle: click, pyyaml, tqdm, h5py, cffi, cloudpickle, psutil, cmake<4 (and their dependencies).
NODE_HAS = ["torch", "torchvision", "numpy", "scipy", "matplotlib", "pillow", "mpi4py", "pip", "setuptools", "wheel",
            "packaging"]
FROM_BUNDLE = ["click", "pyyaml", "tqdm", "h5py", "cffi", "cloudpickle", "psutil", "cmake"]


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: list[str]) -> list[md.Distribution]:
    """These installed distributions and everything they require (markers evaluated here, no extras)."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = canon(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A fresh Python environment that has only NODE_HAS (linked from this one): a GPU node's Python."""
    root = tmp_path_factory.mktemp("node")
    farm = root / "farm" / "site-packages"
    farm.mkdir(parents=True)
    have = []
    for dist in closure(NODE_HAS):
        have.append(f"{dist.metadata['Name']}=={dist.version}")
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = base / top
            if src.exists() and not (farm / top).exists() and top not in ("bin", "__pycache__"):
                (farm / top).symlink_to(src)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "py")], check=True)
    site = subprocess.run([str(root / "py" / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "farm.pth").write_text(f"import site; site.addsitedir({str(farm)!r})\n")
    (root / "have.txt").write_text("\n".join(sorted(have)) + "\n")
    out = subprocess.run([str(root / "py" / "bin" / "python"), "-c", "import torch, numpy; import click"],
                         capture_output=True, text=True)
    assert "No module named 'click'" in out.stderr, out.stderr  # torch is there, click is not
    return root


@pytest.fixture(scope="module")
def bundle(node, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "gpu-bundle"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bundle.py"), "--out", str(out),
                           "--have", str(node / "have.txt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_bundle_contents_size_and_checksums(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    files = m["files"]
    assert m["total_bytes"] == sum(f["bytes"] for f in files.values()) <= 60 * 2**20
    assert sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) <= 60 * 2**20
    assert (bundle / "horovod-0.28.1.tar.gz").is_file() and "horovod-0.28.1.tar.gz" in files
    patch = bundle / "patches" / "horovod-0.28.1-cxx20.patch"
    assert patch.read_bytes() == (ROOT / "patches" / "horovod-0.28.1-cxx20.patch").read_bytes()
    wheels = {canon(n.split("-")[0]): n for n in m["wheels"]}
    for name in FROM_BUNDLE + ["pycparser"]:  # pycparser: cffi's dependency, found through the wheel's metadata
        assert name in wheels, f"{name} not bundled: {sorted(wheels)}"
    assert int(wheels["cmake"].split("-")[1].split(".")[0]) < 4  # Horovod 0.28.1 does not configure with CMake 4
    for name in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "nvidia-nccl-cu13"):
        assert name not in wheels, f"{name} bundled, but the node has it (or it is not needed)"
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert py in wheels["h5py"] and "manylinux" in wheels["h5py"]
    reqs = (bundle / "requirements.txt").read_text()
    assert "torch" not in re.findall(r"^[a-z-]+", reqs, re.M) and "cmake>=3.13,<4" in reqs and "h5py" in reqs
    # pytorch-fid requires torch: it is installed with --no-deps (else pip resolves the node's torch's CUDA wheels)
    nodeps = (bundle / "requirements-nodeps.txt").read_text()
    assert "pytorch-fid" in wheels and re.findall(r"^[a-z-]+", nodeps, re.M) == ["pytorch-fid"]
    assert "pytorch-fid" not in reqs
    with tarfile.open(bundle / m["source"]) as tar:
        names = tar.getnames()
    for f in ("scripts/gpu-check.sh", "scripts/horovod-wheel.sh", "benchmarks/gpu_check.py", "hvdgan/gan.py",
              "setup.cfg"):
        assert f"hvdgan-{m['hvdgan']}/{f}" in names
    assert not any("/.venv/" in n or "/.git/" in n or n.endswith(".whl") for n in names)
    assert files[m["source"]]["bytes"] < 2 * 2**20  # the sources only (not the bundle being written in the tree)
    verify = [sys.executable, str(ROOT / "scripts" / "gpu_bundle.py"), "--verify", str(bundle)]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    # a damaged file is found, named, and the check fails
    req = bundle / "requirements.txt"
    text = req.read_text()
    try:
        req.write_text(text + "# edited\n")
        proc = subprocess.run(verify, capture_output=True, text=True)
        assert proc.returncode == 1 and "requirements.txt: sha256 differs" in proc.stderr
    finally:
        req.write_text(text)


def test_bundle_over_its_limit_is_refused(node, tmp_path):
    out = tmp_path / "small"
    have = tmp_path / "have.txt"  # a node that has every wheel: only Horovod's sdist (3.4 MB) is bundled
    have.write_text((node / "have.txt").read_text() + "\n".join(FROM_BUNDLE[:-1] + ["pycparser", "cmake==3.31.10"]))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bundle.py"), "--out", str(out), "--have",
                           str(have), "--max-mib", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "over --max-mib 1" in proc.stderr and "horovod-0.28.1.tar.gz 3.4 MiB" in proc.stderr, proc.stderr
    assert "--have" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".gpu-bundle-*"))
    # not a bundle: refused, nothing touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bundle.py"), "--out", str(other)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "is not a bundle" in proc.stderr and (other / "keep.txt").exists()


def test_report_markdown_format():
    report = {
        "device": "cuda", "command": "python gpu_check.py --device cuda", "date": "2026-11-28 00:00 UTC", "ok": False,
        "seconds": 301.0, "notes": ["CUDA graphs are not implemented"],
        "environment": {"gpus": ["NVIDIA H100 80GB HBM3"], "driver": "580.159.04", "torch": "2.11.0+cu130",
                        "cuda": "13.0", "nccl": "2.27.7", "horovod": "0.28.1", "horovod_ops": ["NCCL", "Gloo"],
                        "python": "3.12.3", "commit": "abc1234"},
        "checks": [{"name": "train", "ok": True, "seconds": 20.5, "detail": "100 steps"},
                   {"name": "precision", "ok": False, "seconds": 9.0, "detail": "drifts | a lot"}],
        "speed": [{"batch": 128, "plain_images_per_s": 13400.0, "hvdgan_images_per_s": 13000.0, "ratio": 0.970,
                   "targets": {"ratio >= 0.97": True, ">= 25,000 images/s": False}}],
        "placements": {"args": {"batch_size": "64"}, "timing": {
            "all-on-GPU": {"ms_per_step": 5.0, "images_per_s": 12800.0, "x_baseline": 1.0},
            "G=gpu0,D=cpu": {"ms_per_step": 50.0, "images_per_s": 1280.0, "x_baseline": 10.0}},
            "check": {"G=gpu0,D=cpu": {"ok": True, "loss_rel_diff": 5e-7, "later_loss_rel_diff": 2e-4,
                                       "param_rel_diff": 1e-4}}},
        "precision": None,
    }
    md_text = render_markdown(report)
    for row in ("| device | NVIDIA H100 80GB HBM3 x1 |", "| driver | 580.159.04 |", "| torch | 2.11.0+cu130 (CUDA 13.0) |",
                "| NCCL | 2.27.7 |", "| Horovod | 0.28.1 (NCCL, Gloo) |", "| result | CHECKS FAILED in 301 s |",
                "| train | OK | 20.5 | 100 steps |", "| precision | **FAIL** | 9.0 | drifts \\| a lot |",
                "| 128 | 13,400 | 13,000 | 0.970 | ratio >= 0.97: met; >= 25,000 images/s: MISSED |",
                "| all-on-GPU | 5.00 | 12,800 | 1.00x | (reference) |",
                "| G=gpu0,D=cpu | 50.00 | 1,280 | 10.00x | OK (step-1 losses 5e-07, later 2e-04; params 1.0e-04 of movement) |"):
        assert row in md_text, f"missing {row!r} in\n{md_text}"
    # every table row has as many cells as its header
    for block in md_text.split("\n\n"):
        rows = [r for r in block.splitlines() if r.startswith("|")]
        if rows:
            assert len({len(re.split(r"(?<!\\)\|", r)) for r in rows}) == 1, block


@pytest.mark.slow
@pytest.mark.mp
def test_gpu_check_cpu_dry_run_from_the_bundle(node, bundle, tmp_path):
    """The whole `make gpu-check` on the fake node with --device cpu: a fresh venv over the node's Python,
    what it lacks from the bundle with no index, Horovod from the cached wheel of setup.sh's key, then
    every step of benchmarks/gpu_check.py with tiny sizes."""
    venv, report = tmp_path / "venv-gpu", tmp_path / "report"
    env = run_env(HVDGAN_GPU_PYTHON=str(node / "py" / "bin" / "python"), HVDGAN_GPU_VENV=str(venv),
                  PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(Path(sys.executable).parent))
    try:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--bundle", str(bundle), "--device",
                               "cpu", "--report", str(report)], capture_output=True, text=True, env=env, timeout=900,
                              cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"gpu-check timed out\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "using cached Horovod wheel" in proc.stderr  # the key is setup.sh's: no second build
    # the packages the node lacked came from the bundle, into the fresh venv
    py = str(venv / "bin" / "python")
    where = subprocess.run([py, "-c", "import click, h5py, yaml, tqdm, cffi, horovod, torch, hvdgan, pytorch_fid; "
                            "print(click.__file__, h5py.__file__, horovod.__file__, torch.__file__, hvdgan.__file__)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(w.startswith(str(venv)) for w in where[:3]), where
    assert not where[3].startswith(str(venv)) and where[4].startswith(str(ROOT)), where
    r = json.loads((report / "gpu-check.json").read_text())
    assert r["ok"] and r["device"] == "cpu"
    assert [c["name"] for c in r["checks"]] == ["info", "data", "train", "resume", "sample", "placements",
                                                "precision", "speed"]
    assert [s["batch"] for s in r["speed"]] == [4, 8] and all(s["hvdgan_images_per_s"] > 0 for s in r["speed"])
    assert r["precision"]["finite"] and set(r["placements"]["check"]) == {"G=cpu,D=cpu"}
    text = (report / "gpu-check.md").read_text()
    assert text == render_markdown(r) and "| resume | OK |" in text and "n/a (CPU dry run)" in text


def test_channels_last_tensors_go_through_horovod():
    """Horovod refuses non-contiguous tensors; hvdgan.dist.layout sends channels_last ones as contiguous copies
    and puts the results back in their own layout (the GPU default; the dry run trains so on 2 ranks)."""
    import horovod.torch as hvd
    import torch

    from hvdgan.dist import layout

    hvd.init()
    w = torch.randn(8, 4, 4, 4).to(memory_format=torch.channels_last)
    assert not w.is_contiguous()
    with pytest.raises(ValueError, match="contiguous"):
        hvd.broadcast_parameters({"w": w.clone(memory_format=torch.preserve_format)}, root_rank=0)
    for inner in (hvd.Compression.none, hvd.Compression.fp16):
        c = layout.Contiguous(inner)
        sent, ctx = c.compress(w)
        assert sent.is_contiguous()
        back = c.decompress(sent, ctx)
        assert back.is_contiguous(memory_format=torch.channels_last) and back.dtype == w.dtype
        assert torch.allclose(back, w, atol=1e-2 if inner is hvd.Compression.fp16 else 0)
        b = torch.randn(8)
        assert c.compress(b)[0] is b or inner is hvd.Compression.fp16  # contiguous: no copy
    state = {"w": w.clone(memory_format=torch.preserve_format), "b": torch.randn(3)}
    before = {k: v.clone() for k, v in state.items()}
    layout.broadcast_parameters(hvd, state)  # one rank: the values stay, the layout too
    assert all(torch.equal(state[k], before[k]) for k in state) and not state["w"].is_contiguous()
    p = torch.nn.Parameter(w.clone(memory_format=torch.preserve_format))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    moment = opt.state[p]["exp_avg"]
    assert not moment.is_contiguous()
    layout.broadcast_optimizer_state(hvd, opt)
    assert opt.state[p]["exp_avg"] is moment and not moment.is_contiguous()


@pytest.mark.mp
def test_channels_last_training_on_two_ranks_matches_contiguous(digits, tmp_path):
    """channels_last on 2 ranks (gradients all-reduced through layout.Contiguous) trains as the default layout
    does: the same weights after 3 steps up to rounding, measured against how far the weights moved."""
    import torch

    from hvdgan.models.dcgan import Discriminator, Generator

    common = ["train", "--data", digits, "--max-steps", "3", "--batch-size", "16", "--ngf", "8", "--ndf", "8",
              "--device", "cpu", "--log-every", "1", "--sample-every", "100", "--checkpoint-every", "3",
              "--no-tensorboard"]
    for name, extra in (("default", []), ("cl", ["--channels-last"])):
        launch("gloo", [HVDGAN, *map(str, common), "--out", str(tmp_path / name), *extra], timeout=300)
    a, b = (torch.load(tmp_path / n / "checkpoints" / "ckpt-00000003.pt", weights_only=False) for n in ("default", "cl"))
    torch.manual_seed(0)  # the trainer's initial weights (seed 0, G first)
    start = {"G": Generator(100, 8, 1, 32).state_dict(), "D": Discriminator(8, 1, 32).state_dict()}
    for net in ("G", "D"):
        moved = (flat_state(a[net]) - flat_state(start[net])).norm()
        assert moved > 0
        assert (flat_state(b[net]) - flat_state(a[net])).norm() / moved < 0.05, net


def test_documented_gpu_command_lines_parse():
    """Every `make gpu-*`, scripts/gpu_bundle.py and scripts/gpu-check.sh line the docs show."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import shlex

    import gpu_bundle

    script_header = (ROOT / "scripts" / "gpu-check.sh").read_text().split("set -euo")[0]  # its documented knobs
    seen = 0
    for doc in ("README.md", "docs/cluster.md", "docs/benchmarks.md"):
        text = (ROOT / doc).read_text()
        lines = [ln.strip() for ln in text.splitlines()]
        candidates = lines + [code for ln in lines if not ln.startswith("```") for code in re.findall(r"`([^`]+)`", ln)]
        for line in candidates:
            line = re.sub(r"^\$ ", "", line).split(" #")[0].strip()
            if not re.match(r"^([A-Z_]+=\S+ )*(make gpu-|python3 scripts/gpu_bundle\.py|bash scripts/gpu-check\.sh)",
                            line):
                continue
            words = shlex.split(line)
            env = {}
            while words and re.match(r"^[A-Z_]+=", words[0]):
                k, v = words.pop(0).split("=", 1)
                env[k] = v
            if words[:1] == ["make"] and any(w.startswith("gpu-") for w in words):
                proc = subprocess.run(["make", "-n", *words[1:]], capture_output=True, text=True, cwd=ROOT)
                assert proc.returncode == 0 and "scripts/gpu" in proc.stdout, (doc, line, proc.stderr)
            elif words[:2] == ["python3", "scripts/gpu_bundle.py"]:
                gpu_bundle.parser().parse_args(words[2:])
            elif words[:2] == ["bash", "scripts/gpu-check.sh"]:
                opts = words[2:]
                while opts:
                    assert opts[0] in ("--bundle", "--report", "--device") and len(opts) > 1, (doc, line)
                    assert opts[0] != "--device" or opts[1] in ("cuda", "cpu"), (doc, line)
                    opts = opts[2:]
                knobs = {"HVDGAN_GPU_PYTHON", "HVDGAN_GPU_VENV", "HVDGAN_CACHE", "HOROVOD_BUILD_CUDA_CC_LIST"}
                assert set(env) <= knobs, (doc, line)
                assert all(k in script_header for k in env), (doc, line)
            else:
                continue
            seen += 1
    assert seen >= 12
