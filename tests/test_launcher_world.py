"""The launcher world (hvdgan.dist.horovod.LAUNCHER_ENV, one list): what `prepare` detects before Horovod starts, and
the plain-srun guard, read the same variables. Checked on the real launchers: horovodrun (Gloo and MPI), Open
MPI's mpirun, and srun --mpi=pmi2 / --mpi=pmix on the test Slurm cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import launch, run_env
from hvdgan.dist.horovod import LAUNCHER_ENV, check_launch, launcher_world
from hvdgan.errors import HvdganError
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

# each rank writes what it detects to its own file (launchers interleave standard output)
PROBE = ("import json, os, sys; from hvdgan.dist.horovod import launcher_world; "
         "open(os.path.join(sys.argv[1], f'world-{os.getpid()}.json'), 'w').write(json.dumps(launcher_world()))")

# rank 1 of 2 as each launcher writes it into the environment (PMIx: srun adds the Slurm step size)
ENVS = {
    "horovodrun --gloo": {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1"},
    "Open MPI (mpirun, horovodrun --mpi)": {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"},
    "PMIx (srun --mpi=pmix)": {"PMIX_RANK": "1", "PMIX_NAMESPACE": "slurm.pmix.7.0", "SLURM_STEP_NUM_TASKS": "2",
                               "SLURM_NTASKS": "2"},
    "PMI-2 (srun --mpi=pmi2)": {"PMI_RANK": "1", "PMI_SIZE": "2", "PMI_FD": "5", "PMI_JOBID": "7.0"},
}


def test_every_launcher_is_listed_once():
    assert sorted(ENVS) == sorted(LAUNCHER_ENV)


@pytest.mark.parametrize("name", sorted(ENVS))
def test_prepare_and_the_srun_guard_see_the_same_world(name):
    env = ENVS[name]
    assert launcher_world(env) == (True, 1, 2)  # prepare joins a 2-rank world and writes every other shard
    check_launch({"SLURM_STEP_NUM_TASKS": "2", **env})  # the guard lets the step through


def test_no_launcher_is_one_process_and_plain_srun_is_refused():
    assert launcher_world({"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}) == (False, 0, 1)
    with pytest.raises(HvdganError, match="plain srun"):
        check_launch({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"})


def detected(out: Path) -> list:
    return sorted(json.loads(p.read_text()) for p in out.glob("world-*.json"))


@pytest.mark.mp
@pytest.mark.parametrize("launcher", ["gloo", "mpi", "mpirun"])
def test_real_launchers_are_detected(launcher, tmp_path):
    launch(launcher, [sys.executable, "-c", PROBE, str(tmp_path)], timeout=120)
    assert detected(tmp_path) == [[True, 0, 2], [True, 1, 2]]


@pytest.mark.slurm
@pytest.mark.parametrize("mpi", ["pmi2", "pmix"])
def test_srun_worlds_are_detected(slurm_cluster, mpi, tmp_path):
    proc = slurm_cluster.run(["srun", f"--mpi={mpi}", "-n", "2", sys.executable, "-c", PROBE, str(tmp_path)],
                             env={"PATH": run_env()["PATH"]}, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert detected(tmp_path) == [[True, 0, 2], [True, 1, 2]]
