#!/usr/bin/env bash
# `make gpu-check`: does hvdgan work on this GPU node, and how fast? One command, no network.
#
#   bash scripts/gpu-check.sh [--bundle gpu-bundle] [--report DIR] [--device cuda|cpu] [-- gpu_check.py options]
#
# 1. a virtual environment (.venv-gpu) over the node's own Python and its CUDA torch (never installs torch):
#    the node's site-packages stay visible, what it lacks comes from the bundle (`make gpu-bundle`, built
#    where pip reaches the index) with pip --no-index;
# 2. Horovod with NCCL and Gloo (MPI too where mpicxx is found) from the bundle's sdist + patch, or the
#    cached wheel of the same key (scripts/horovod-wheel.sh, shared with scripts/setup.sh), then
#    `horovodrun --check-build`;
# 3. hvdgan (this tree, editable), then benchmarks/gpu_check.py: hvdgan info, a short 64x64 training under
#    horovodrun -np <GPUs>, a resume, hvdgan sample, the placements against all-on-GPU, bf16 +
#    channels_last against fp32, and the speed benchmarks; it writes gpu-check.json and gpu-check.md.
# --device cpu runs the whole sequence with tiny sizes on the CPU (CI's dry run; Horovod without NCCL).
#
# Knobs: HVDGAN_GPU_PYTHON (the node's Python; default python3), HVDGAN_GPU_VENV (default .venv-gpu),
# HVDGAN_CACHE (Horovod wheels; default ~/.cache/hvdgan), HOROVOD_BUILD_CUDA_CC_LIST (default 80,90).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
# shellcheck source=versions.env
source scripts/versions.env
# shellcheck source=horovod-wheel.sh
source scripts/horovod-wheel.sh

bundle=gpu-bundle report= device=cuda rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle=${2:?--bundle needs a folder}; shift 2 ;;
    --report) report=${2:?--report needs a folder}; shift 2 ;;
    --device) device=${2:?--device needs cuda or cpu}; shift 2 ;;
    --) shift; rest+=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) rest+=("$1"); shift ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "gpu-check: --device $device: expected cuda or cpu" >&2; exit 2 ;; esac
say() { printf '[gpu-check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[gpu-check] error: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)

NODE_PY=${HVDGAN_GPU_PYTHON:-python3}
VENV=${HVDGAN_GPU_VENV:-$here/.venv-gpu}
report=${report:-$here/gpu-check}
command -v "$NODE_PY" >/dev/null || die "no $NODE_PY here: set HVDGAN_GPU_PYTHON to the Python that holds torch"
"$NODE_PY" -c 'import torch' 2>/dev/null || die "$NODE_PY cannot import torch: use the node's PyTorch module or container (gpu-check never installs torch)"
[ -f "$bundle/manifest.json" ] || die "$bundle: no bundle here (no manifest.json): build one with \`make gpu-bundle\` where pip reaches the index and bring it along (see docs/cluster.md)"

# 0. the bundle is what its manifest says
"$NODE_PY" scripts/gpu_bundle.py --verify "$bundle" >&2 || die "$bundle: damaged; build it again"
bundle_py=$("$NODE_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["python_version"])' "$bundle/manifest.json")
node_pyver=$("$NODE_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[ "$bundle_py" = "$node_pyver" ] || die "$bundle was built for Python $bundle_py, this node's is $node_pyver: \`make gpu-bundle GPU_PYTHON=$node_pyver\`"

# 1. the environment: a venv that sees the node's site-packages (torch) and adds what the bundle brings
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV over $NODE_PY ($("$NODE_PY" -c 'import torch; print("torch", torch.__version__)'))"
  # (without a pip of its own: the node's pip runs in it through the .pth below, and installs into it)
  "$NODE_PY" -m venv --without-pip "$VENV"
  # the node's site-packages (also when its Python is itself a venv or a module), with their .pth files
  "$NODE_PY" - "$VENV" <<'PY'
import site, sys, sysconfig, pathlib, subprocess
venv = pathlib.Path(sys.argv[1])
dirs = [p for p in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                  *site.getsitepackages(), *sys.path]) if p.endswith(("site-packages", "dist-packages"))]
target = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
(pathlib.Path(target) / "_hvdgan_node_site.pth").write_text(
    "import site; list(map(site.addsitedir, %r))\n" % [d for d in dirs if pathlib.Path(d).is_dir()])
PY
fi
PY="$VENV/bin/python"
"$PY" -c 'import torch' || die "$VENV does not see the node's torch"
if ! "$PY" -m pip --version >/dev/null 2>&1; then  # the node's Python has no pip: the venv gets its own
  "$PY" -m ensurepip -q >/dev/null 2>&1 || die "no pip in $NODE_PY and no ensurepip: install pip for it"
fi
export PATH="$VENV/bin:$PATH"
pip_q() { "$PY" -m pip "$1" -q --disable-pip-version-check "${@:2}" 2> >(grep -v 'is ignored: it is neither' >&2); }
say "installing what the node lacks from $bundle (no index)"
pip_q install --no-index --find-links "$bundle/wheels" -r "$bundle/requirements.txt"
# (packages that require torch: with --no-deps, or pip would resolve the node's torch's own CUDA requirements)
if [ -f "$bundle/requirements-nodeps.txt" ]; then
  pip_q install --no-index --no-deps --find-links "$bundle/wheels" -r "$bundle/requirements-nodeps.txt"
fi

# 2. Horovod: NCCL + Gloo on a GPU, Gloo (and MPI where found) for the CPU dry run
# (the public version, as scripts/setup.sh's key has it: the CUDA build is a part of the key of its own)
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
if [ "$device" = cuda ]; then
  export HOROVOD_GPU_OPERATIONS=NCCL
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || die "torch $torch_version sees no GPU here; run with --device cpu for the CPU dry run"
else
  unset HOROVOD_GPU_OPERATIONS
fi
have_horovod() {
  "$PY" - "$HOROVOD_VERSION" "$device" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("horovod") == sys.argv[1]
import horovod.torch as hvd  # the compiled extension loads against this torch
assert sys.argv[2] == "cpu" or hvd.nccl_built()
PY
}
if ! have_horovod; then
  # the cmake (<4) of the Python package pip resolved: the bundle's, or the node's when it fits
  HOROVOD_CMAKE=$("$PY" -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))') \
    || die "no cmake Python package in $VENV"
  export HOROVOD_CMAKE
  whl=$(horovod_wheel "$PY" "$torch_version" "$bundle/horovod-$HOROVOD_VERSION.tar.gz")
  # (its requirements, cffi cloudpickle psutil pyyaml packaging, came with requirements.txt above)
  pip_q install --no-index --force-reinstall --no-deps "$whl"
fi
check=$(horovodrun --check-build 2>&1) || die "horovodrun --check-build failed: $check"
echo "$check" >&2
want=(PyTorch Gloo)
[ "$device" = cuda ] && want+=(NCCL)
for w in "${want[@]}"; do
  grep -qE "\[X\] $w\b" <<<"$check" || die "Horovod was built without $w"
done

# 3. hvdgan from this tree, then the checks and benchmarks
if ! "$PY" -c 'import hvdgan, sys, pathlib; sys.exit(pathlib.Path(hvdgan.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]))' "$here" 2>/dev/null \
   || [ ! -x "$VENV/bin/hvdgan" ]; then
  say "installing hvdgan from $here (editable, no dependencies: they are in place)"
  pip_q install --no-index --no-deps --no-build-isolation -e "$here"
fi
say "environment ready in $(( $(date +%s) - t0 ))s"
mkdir -p "$report"
"$PY" benchmarks/gpu_check.py --device "$device" --report "$report" --bundle "$bundle" ${rest[@]+"${rest[@]}"}
say "done in $(( $(date +%s) - t0 ))s: $report/gpu-check.md, $report/gpu-check.json"
