"""The Dockerfile, checked statically (Docker cannot run on the test machines): it parses, it installs
through scripts/setup.sh (the set-up the tests and CI use) with NCCL, and its versions come from
scripts/versions.env only."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from conftest import versions_env

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "COMMENT"}


@pytest.fixture(scope="module")
def parsed():
    p = DockerfileParser(path=str(DOCKERFILE))
    return p


def instructions(parsed, name):
    return [i["value"] for i in parsed.structure if i["instruction"] == name]


def test_parses_into_valid_instructions(parsed):
    names = [i["instruction"] for i in parsed.structure]
    assert names, "empty Dockerfile"
    unknown = set(names) - INSTRUCTIONS
    assert not unknown, f"not Dockerfile instructions: {unknown}"
    first = [n for n in names if n != "COMMENT"]
    assert first[0] in ("ARG", "FROM") and "FROM" in first
    assert not any(i["value"].rstrip().endswith("\\") for i in parsed.structure
                   if i["instruction"] != "COMMENT"), "dangling line continuation"
    # exec-form ENTRYPOINT / CMD are JSON arrays
    import json

    for name in ("ENTRYPOINT", "CMD"):
        for value in instructions(parsed, name):
            assert isinstance(json.loads(value), list), f"{name} {value}"


def test_cuda_13_devel_base_matches_versions_env(parsed):
    base = parsed.baseimage  # ARG defaults are substituted
    assert base.startswith("nvidia/cuda:"), base
    tag = base.split(":", 1)[1]
    assert "devel" in tag and "ubuntu" in tag, tag
    cuda = versions_env()["CUDA_VERSION"]
    assert cuda.startswith("13."), cuda
    assert tag == cuda or tag.startswith(cuda + ".") or tag.startswith(cuda + "-"), \
        f"base image CUDA {tag} != CUDA_VERSION={cuda} in scripts/versions.env"


def test_installs_with_the_shared_setup_script_and_nccl(parsed):
    runs = " ; ".join(instructions(parsed, "RUN"))
    assert re.search(r"(^|[\s;&])scripts/setup\.sh\b", runs), "the image must install through scripts/setup.sh"
    assert parsed.envs.get("HOROVOD_GPU_OPERATIONS") == "NCCL"
    assert "horovodrun --check-build" in runs
    assert "openmpi-bin" in runs and "libopenmpi-dev" in runs
    assert (ROOT / "scripts" / "setup.sh").is_file()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "versions.env" in setup and "check-build" in setup
    assert json_list(instructions(parsed, "ENTRYPOINT")[-1]) == ["hvdgan"]


def json_list(value):
    import json

    return json.loads(value)


def test_copies_what_setup_needs_and_the_paths_exist(parsed):
    sources = []
    for value in instructions(parsed, "COPY") + instructions(parsed, "ADD"):
        words = [w for w in shlex.split(value) if not w.startswith("--")]
        sources += words[:-1]
    for path in sources:
        assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    for needed in ("scripts/", "patches/", "setup.cfg", "pyproject.toml", "hvdgan/"):
        assert any(s.rstrip("/") == needed.rstrip("/") or s.startswith(needed) for s in sources), needed


def test_versions_only_from_versions_env():
    """No version is written into the Dockerfile: torch, torchvision, Horovod, Python and cmake pins live in
    scripts/versions.env (read by setup.sh and by the RUN steps), the base image tag excepted."""
    text = DOCKERFILE.read_text()
    body = "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith("#") and not line.startswith(("ARG CUDA_IMAGE", "FROM")))
    v = versions_env()
    for key in ("TORCH_VERSION", "TORCHVISION_VERSION", "HOROVOD_VERSION", "PYTHON_VERSION"):
        assert not re.search(rf"(?<![\d.]){re.escape(v[key])}(?![\d])", body), f"{key}={v[key]} written in the Dockerfile"
        assert not re.search(rf"^\s*(ENV|ARG)\b.*\b{key}=", body, re.M), f"{key} set in the Dockerfile"
    assert not re.search(r"(torch|torchvision|horovod|cmake)\s*[=<>~]=", body, re.I), "a pip pin in the Dockerfile"
    assert "${PYTHON_VERSION}" in body and ". scripts/versions.env" in body  # Python comes from versions.env
