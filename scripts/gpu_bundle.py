"""`make gpu-bundle`: a folder with what a GPU node without internet lacks to run `make gpu-check`.

    python scripts/gpu_bundle.py --out gpu-bundle --python-version 3.12 --have node-packages.txt

Run it where pip reaches the package index. The folder holds
  horovod-<version>.tar.gz and patches/   the Horovod sdist and the patch scripts/setup.sh builds it with
  wheels/                                 binary wheels for the node's Python and platform: hvdgan's runtime
                                          dependencies except torch/torchvision (the node's own), Horovod's
                                          requirements, cmake<4 and setuptools/wheel (Horovod's build), with
                                          every dependency they pull in
  requirements.txt                        what scripts/gpu-check.sh installs from wheels/ (pip --no-index)
  requirements-nodeps.txt                 packages that name torch among their requirements (pytorch-fid),
                                          installed after with --no-deps: pip would otherwise resolve the
                                          node's torch's own requirements (CUDA wheels) and fail offline
  hvdgan-<version>-src.tar.gz             this source tree (tracked and untracked-not-ignored files)
  manifest.json                           every file with its size and sha256; what was left out and why
Packages the node already has are left out when --have lists them (the node's `python3 -m pip list
--format=freeze`; a bare name counts as present unless the requirement caps the version, as cmake<4 does, or
the wheel is one of the few small ones, bundled anyway).
The bundle must stay under --max-mib (60 MiB by default): a bigger one is an error naming its largest files.
"""

from __future__ import annotations

import argparse
import configparser
import email.parser
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# hvdgan's install_requires that a GPU node does not get from the bundle: its own torch and torchvision
# (a CUDA build that matches the node), and scikit-learn (only `hvdgan prepare digits` needs it; gpu-check
# prepares synthetic data from a .npy file).
NODE_PROVIDED = {"torch", "torchvision"}
NOT_NEEDED = {"scikit-learn"}
# imported at run time but only installed through scikit-learn in setup.cfg (hvdgan.run.runlog' Frechet distance)
RUNTIME_EXTRA = ["scipy>=1.10"]
# Horovod 0.28.1's own requirements (its setup.py) and what its build needs with --no-build-isolation
HOROVOD_REQUIRES = ["cffi>=1.4.0", "cloudpickle", "psutil", "pyyaml", "packaging"]
BUILD_REQUIRES = ["setuptools>=64", "wheel"]
# Small wheels that are bundled even when --have lists the package without a version (which might be too old):
# together about 2.5 MB, against one failed offline install. Big ones (numpy, scipy, h5py, matplotlib) are not.
SMALL = {"click", "tqdm", "pyyaml", "packaging", "cloudpickle", "psutil", "cffi", "pycparser", "setuptools", "wheel"}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def versions_env() -> dict:
    env = {}
    for line in (ROOT / "scripts" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip().strip('"')
    return env


def node_requirements() -> list[str]:
    """What a node needs besides its torch: from setup.cfg, versions.env and Horovod's setup.py."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    keep = [r for r in reqs if canon(Requirement(r).name) not in NODE_PROVIDED | NOT_NEEDED]
    return keep + RUNTIME_EXTRA + HOROVOD_REQUIRES + [versions_env()["CMAKE_SPEC"]] + BUILD_REQUIRES


def read_have(path: Path | None) -> dict[str, str | None]:
    """`pip list --format=freeze` (name==version), `pip list` columns, or bare names, one per line."""
    have: dict[str, str | None] = {}
    if path is None:
        return have
    if not path.is_file():
        raise SystemExit(f"gpu_bundle: --have {path}: no such file")
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(("Package", "---")):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(?:==|\s)\s*([^\s;]+))?", line)
        if not m:
            raise SystemExit(f"gpu_bundle: --have {path}: cannot read the line {raw!r}")
        have[canon(m.group(1))] = m.group(2)
    return have


def satisfied(req: Requirement, have: dict[str, str | None]) -> bool:
    name = canon(req.name)
    if name not in have:
        return False
    version = have[name]
    if version is None:  # a bare name: present, unless the requirement caps or pins the version, or it is SMALL
        return name not in SMALL and not any(s.operator in ("<", "<=", "==", "===", "~=") for s in req.specifier)
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except Exception:
        return False


def marker_env(python_version: str) -> dict:
    return {"python_version": python_version, "python_full_version": python_version + ".0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "platform_release": "", "platform_version": "", "implementation_version":
            python_version + ".0", "extra": ""}


def wheel_requires(whl: Path, env: dict) -> list[Requirement]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    out = []
    for line in msg.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(req)
    return out


def wheel_name_version(whl: Path) -> tuple[str, str]:
    name, version = whl.name.split("-")[:2]
    return canon(name), version


def platforms(args) -> list[str]:
    if args.platform:
        return args.platform
    major, minor = (int(x) for x in args.glibc.split("."))
    tags = [f"manylinux_{major}_{n}_x86_64" for n in range(minor, 4, -1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def pip(*argv: str) -> None:
    cmd = [sys.executable, "-m", "pip", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = "\n".join(line for line in proc.stderr.splitlines() if "is ignored: it is neither" not in line)
        raise SystemExit(f"gpu_bundle: pip failed: {' '.join(cmd)}\n{err[-3000:]}")


def download_wheels(reqs: list[str], have: dict, args, dest: Path) -> tuple[list[str], list[str], set[str]]:
    """The closure of `reqs` as binary wheels for the node, minus what it has; returns (bundled, left out,
    the names of the bundled packages that require the node's torch or torchvision)."""
    env = marker_env(args.python_version)
    tags = []
    for p in platforms(args):
        tags += ["--platform", p]
    got: dict[str, Path] = {}
    skipped: list[str] = []
    needs_torch: set[str] = set()
    todo = [Requirement(r) for r in reqs]
    while todo:
        fetch, seen = [], set()
        for req in todo:
            name = canon(req.name)
            if name in got:
                version = wheel_name_version(got[name])[1]
                if not req.specifier.contains(Version(version), prereleases=True):
                    raise SystemExit(f"gpu_bundle: {req} is needed, but {got[name].name} was already chosen")
                continue
            if name in NODE_PROVIDED:  # (a requirement of a bundled package: the node's own torch serves it)
                skipped.append(f"{req.name} (the node's own)")
                continue
            if satisfied(req, have):
                skipped.append(f"{req} (the node has {req.name} {have[canon(req.name)] or ''})".replace(" )", ")"))
                continue
            if name not in seen:
                seen.add(name)
                fetch.append(str(Requirement(f"{req.name}{req.specifier}")))
        if not fetch:
            break
        before = set(dest.glob("*.whl"))
        pip("download", "-q", "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version",
            args.python_version, *tags, "-d", str(dest), *fetch)
        new = sorted(set(dest.glob("*.whl")) - before)
        todo = []
        for whl in new:
            name = wheel_name_version(whl)[0]
            got[name] = whl
            requires = wheel_requires(whl, env)
            if any(canon(r.name) in NODE_PROVIDED for r in requires):
                needs_torch.add(name)
            todo += requires
        missing = [f for f in fetch if canon(Requirement(f).name) not in got]
        if missing:
            raise SystemExit(f"gpu_bundle: pip found no wheel for {', '.join(missing)}")
    return sorted(p.name for p in got.values()), sorted(set(skipped)), needs_torch


def source_tarball(dest: Path, version: str, leave_out: list[Path]) -> Path:
    """This tree's tracked and untracked-not-ignored files (what `git status` would show), less `leave_out`
    (the bundle being written, and the old one, when they lie in the tree)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    skip = [p.resolve() for p in leave_out]
    out = dest / f"hvdgan-{version}-src.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for f in sorted(f for f in files if f and (ROOT / f).is_file()
                        and not any((ROOT / f).resolve().is_relative_to(p) for p in skip)):
            tar.add(ROOT / f, arcname=f"hvdgan-{version}/{f}")
    return out


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def build(args) -> dict:
    venv = versions_env()
    hvd_version, patch = venv["HOROVOD_VERSION"], ROOT / venv["HOROVOD_PATCH"]
    sys.path.insert(0, str(ROOT))
    from hvdgan import __version__

    have = read_have(args.have)
    out = args.out.resolve()
    if out.exists() and not (out / "manifest.json").is_file():
        raise SystemExit(f"gpu_bundle: --out {args.out}: exists and is not a bundle (no manifest.json); "
                         "choose another folder (nothing was overwritten)")
    tmp = Path(tempfile.mkdtemp(prefix=".gpu-bundle-", dir=out.parent))
    try:
        t0 = time.time()
        reqs = node_requirements()
        (tmp / "wheels").mkdir()
        bundled, skipped, needs_torch = download_wheels(reqs, have, args, tmp / "wheels")
        pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(tmp), f"horovod=={hvd_version}")
        (tmp / "patches").mkdir()
        shutil.copy2(patch, tmp / "patches" / patch.name)
        source_tarball(tmp, __version__, [tmp, out])
        nodeps = [r for r in reqs if canon(Requirement(r).name) in needs_torch]
        (tmp / "requirements.txt").write_text(
            "# installed by scripts/gpu-check.sh with pip --no-index --find-links wheels/ "
            "(torch and torchvision: the node's own)\n" + "\n".join(r for r in reqs if r not in nodeps) + "\n")
        (tmp / "requirements-nodeps.txt").write_text(
            "# installed by scripts/gpu-check.sh after requirements.txt, with --no-deps: these name torch among "
            "their requirements\n" + "\n".join(nodeps) + "\n")
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "built_on": f"{platform.node()}, Python {platform.python_version()}",
            "hvdgan": __version__, "horovod": hvd_version, "horovod_sdist": f"horovod-{hvd_version}.tar.gz",
            "patch": f"patches/{patch.name}", "source": f"hvdgan-{__version__}-src.tar.gz",
            "python_version": args.python_version, "platforms": platforms(args),
            "have": str(args.have) if args.have else None, "requirements": reqs,
            "wheels": bundled, "left_out": skipped,
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
        }
        total = sum(f["bytes"] for f in manifest["files"].values())
        manifest["total_bytes"] = total
        if total > args.max_mib * 2**20:
            biggest = sorted(manifest["files"].items(), key=lambda kv: -kv[1]["bytes"])[:6]
            raise SystemExit(
                f"gpu_bundle: the bundle would be {total / 2**20:.1f} MiB, over --max-mib {args.max_mib}; largest: "
                + ", ".join(f"{n} {f['bytes'] / 2**20:.1f} MiB" for n, f in biggest)
                + ". List what the node already has with --have (its `python3 -m pip list --format=freeze`)")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)  # (mkdtemp's is 0700)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        print(f"gpu_bundle: {out}: {len(files) + 1} files, {total / 2**20:.1f} MiB, for Python "
              f"{args.python_version} ({len(bundled)} wheels; {len(skipped)} requirements the node has) "
              f"in {time.time() - t0:.0f}s")
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def verify(bundle: Path) -> list[str]:
    """Every file of the manifest with its sha256, and no file the manifest does not list."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    problems = []
    for name, f in manifest["files"].items():
        p = bundle / name
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != f["bytes"] or sha256(p) != f["sha256"]:
            problems.append(f"{p}: sha256 differs from manifest.json")
    extra = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - set(manifest["files"]) \
        - {"manifest.json"}
    problems += [f"{bundle / e}: not in manifest.json" for e in sorted(extra)]
    return problems


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "gpu-bundle", help="the bundle folder (replaced if it is one)")
    ap.add_argument("--python-version", default=f"{sys.version_info[0]}.{sys.version_info[1]}",
                    help="the GPU node's Python, e.g. 3.12 (default: this Python's)")
    ap.add_argument("--platform", action="append", default=None,
                    help="pip platform tag, repeatable (default: manylinux_2_N_x86_64 for N <= --glibc's, "
                         "manylinux2014/2010/1)")
    ap.add_argument("--glibc", default="2.28", help="the node's glibc, for the default --platform list")
    ap.add_argument("--have", type=Path, default=None,
                    help="the node's `python3 -m pip list --format=freeze`: what it has is not bundled")
    ap.add_argument("--max-mib", type=float, default=60.0)
    ap.add_argument("--verify", type=Path, default=None, metavar="BUNDLE",
                    help="only check BUNDLE's files against its manifest.json")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.verify:
        if not (args.verify / "manifest.json").is_file():
            print(f"gpu_bundle: {args.verify}: no manifest.json (make one with `make gpu-bundle`)", file=sys.stderr)
            return 1
        problems = verify(args.verify)
        for p in problems:
            print(f"gpu_bundle: {p}", file=sys.stderr)
        if not problems:
            print(f"gpu_bundle: {args.verify}: every file matches manifest.json")
        return 1 if problems else 0
    if not re.fullmatch(r"3\.\d+", args.python_version):
        ap.error(f"--python-version {args.python_version}: expected 3.N, e.g. 3.12")
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
