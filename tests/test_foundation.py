"""The install is real (Horovod with PyTorch, MPI and Gloo), and collectives span both ranks
under every launcher we support."""

import configparser
import json
import re
import subprocess
import sys

import pytest

from conftest import HVDGAN, ROOT, hvdgan, launch, versions_env
from hvdgan.dist.horovod import check_world
from hvdgan.errors import HvdganError

LAUNCHER_NAMES = ["gloo", "mpi", "mpirun"]


def test_pins_come_from_one_place():
    v = versions_env()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = cfg["options"]["install_requires"]
    assert f"torch=={v['TORCH_VERSION']}" in requires
    assert f"torchvision=={v['TORCHVISION_VERSION']}" in requires
    import horovod
    import torch

    assert torch.__version__.split("+")[0] == v["TORCH_VERSION"]
    assert horovod.__version__ == v["HOROVOD_VERSION"]
    assert (ROOT / v["HOROVOD_PATCH"]).is_file()


def test_horovod_build_has_pytorch_mpi_gloo():
    import horovod.torch as hvd

    assert hvd.mpi_built() and hvd.gloo_built()
    from conftest import BIN
    from hvdgan.dist.launch import run

    out = run([str(BIN / "horovodrun"), "--check-build"], timeout=60, capture_output=True, text=True).stdout
    for name in ("PyTorch", "MPI", "Gloo"):
        assert re.search(rf"\[X\] {name}\b", out), out


def test_horovodrun_learns_the_build_without_importing_torch():
    """patches/: horovodrun asked "built with Gloo?" (or MPI) at every start by importing the framework in a
    forked process, 3 s of `import torch` on 2 cores; the compiled library alone answers now. Here `import
    torch` fails: the build checks still see MPI and Gloo (upstream: None), and the framework check, which
    still imports it, says no."""
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('no torch in this test')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from horovod.common import util\n"
            "print(util.mpi_built(), util.gloo_built(), util.nccl_built(), util.extension_available('torch'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "0", "False"], out.stdout + out.stderr


def test_info_single_process_json():
    report = json.loads(hvdgan("info", "--json").stdout)
    assert report["versions"]["horovod"] == versions_env()["HOROVOD_VERSION"]
    assert [r["rank"] for r in report["world"]] == [0]
    assert "PyTorch" in report["horovod_build"]["frameworks"]


@pytest.mark.mp
@pytest.mark.parametrize("launcher", LAUNCHER_NAMES)
def test_allreduce_spans_both_ranks(launcher):
    out = launch(launcher, [sys.executable, str(ROOT / "tests" / "allreduce_ranks.py")], timeout=120).stdout
    assert "rank 0 of 2: sum of ranks 1" in out and "rank 1 of 2: sum of ranks 1" in out, out


@pytest.mark.mp
@pytest.mark.parametrize("launcher", LAUNCHER_NAMES)
def test_info_prints_two_rank_table(launcher):
    out = launch(launcher, [HVDGAN, "info"], timeout=120).stdout
    assert out.count("hvdgan info") == 1, out  # printed once, by rank 0
    assert "world: 2 rank(s)" in out, out
    lines = [re.sub(r"^\[[\d,]+\]<stdout>:", "", line) for line in out.splitlines()]  # launcher prefixes
    rows = [line.split() for line in lines if re.match(r"^[01]\s+[01]\s+2\s+2\s", line)]
    assert sorted(r[0] for r in rows) == ["0", "1"], out
    expected = "MPI" if launcher in ("mpi", "mpirun") else "Gloo"
    assert all(r[6] == expected for r in rows), out


def test_world_guard_refuses_separate_size1_worlds():
    with pytest.raises(HvdganError, match=r"srun --mpi=pmix"):
        check_world(1, {"SLURM_STEP_NUM_TASKS": "2"})
    check_world(2, {"SLURM_STEP_NUM_TASKS": "2"})  # srun --mpi=pmix: fine
    check_world(1, {})  # not under Slurm: fine
    check_world(1, {"SLURM_NTASKS": "2"})  # batch step (e.g. `hvdgan prepare` in sbatch): fine
    # mpirun inside an allocation may run in a step of another size: its own size counts
    check_world(8, {"SLURM_STEP_NUM_TASKS": "2", "OMPI_COMM_WORLD_SIZE": "8"})


def test_launch_guard_runs_before_horovod_init():
    from hvdgan.dist.horovod import check_launch

    with pytest.raises(HvdganError, match=r"srun --mpi=pmix"):
        check_launch({"SLURM_STEP_NUM_TASKS": "2"})  # plain srun: no launcher variables
    check_launch({"SLURM_STEP_NUM_TASKS": "2", "PMIX_RANK": "0"})  # srun --mpi=pmix
    check_launch({"SLURM_STEP_NUM_TASKS": "1"})
