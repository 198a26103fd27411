"""Shared test helpers: the venv's console scripts and a multi-process launcher under a time-out."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hvdgan.dist.launch import Launch, run

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HVDGAN = str(BIN / "hvdgan")

# launcher name -> Launch
LAUNCH_SPECS = {
    "gloo": Launch(np=2, launcher="horovodrun", controller="gloo"),
    "mpi": Launch(np=2, launcher="horovodrun", controller="mpi"),
    "mpirun": Launch(np=2, launcher="mpirun"),
}


@functools.lru_cache(maxsize=None)
def versions_env() -> dict[str, str]:
    """scripts/versions.env as scripts/setup.sh and the Dockerfile read it: sourced by bash (quotes and all)."""
    names = re.findall(r"^([A-Za-z_]\w*)=", (ROOT / "scripts" / "versions.env").read_text(), re.M)
    script = '. scripts/versions.env; for k in "$@"; do printf "%s=%s\\0" "$k" "${!k}"; done'
    out = subprocess.run(["bash", "-c", script, "versions.env", *names], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def run_env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def launch(launcher: str, argv: list[str], np: int = 2, timeout: float = 180, env=None, cwd=None,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run argv on `np` ranks with the named launcher (gloo, mpi, mpirun); a hang fails the test."""
    spec = LAUNCH_SPECS[launcher]
    cmd = Launch(np=np, launcher=spec.launcher, controller=spec.controller).command(argv)
    env = env or run_env()
    try:
        proc = run(cmd, timeout=timeout, capture_output=True, text=True, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s\nstdout:\n{exc.output}\nstderr:\n{exc.stderr}")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-5000:]}\n"
                    f"stderr:\n{proc.stderr[-5000:]}")
    return proc


def hvdgan(*args, timeout: float = 300, check: bool = True, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run the hvdgan console script in one process."""
    proc = run([HVDGAN, *map(str, args)], timeout=timeout, capture_output=True, text=True,
               env=env or run_env(), cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"hvdgan {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The embedded digits, prepared once per test session (1,797 images, 32x32x1, 4 shards)."""
    out = tmp_path_factory.mktemp("data") / "digits"
    hvdgan("prepare", "digits", out, "--shards", "4")
    return out


def flat_state(state: dict) -> torch.Tensor:
    """Every floating-point tensor of a state dict, as one vector."""
    return torch.cat([v.double().flatten() for v in state.values() if torch.is_tensor(v) and v.is_floating_point()])


def opt_tensors(opt_state: dict) -> torch.Tensor:
    """Every tensor of an optimizer's per-parameter state, as one vector."""
    return torch.cat([v.double().flatten() for s in opt_state["state"].values() for v in s.values()])


def input_moves(model) -> dict:
    """{block: device} for the blocks whose input hvdgan.models.placement.place moves (the first one and each
    device boundary): what its forward pre-hooks do."""
    from hvdgan.models.placement import MoveInput

    return {name: hook.device for name, block in model.named_children()
            for hook in block._forward_pre_hooks.values() if isinstance(hook, MoveInput)}
