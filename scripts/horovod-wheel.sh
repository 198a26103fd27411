# shellcheck shell=bash
# Horovod, built once per (Horovod, torch, Python, CUDA, GPU ops, MPI, patch) and cached as a wheel.
# Sourced by scripts/setup.sh (the project's venv) and scripts/gpu-check.sh (a GPU node's own torch);
# the one place that knows the cache key and how the patched sdist is built.
#
#   source scripts/horovod-wheel.sh
#   horovod_wheel PYTHON TORCH_VERSION [SDIST]   # prints the wheel's path (cached, or built now)
#
# Reads HOROVOD_VERSION and HOROVOD_PATCH (scripts/versions.env) and these knobs:
#   HVDGAN_CACHE                 the cache (wheels/<key>/horovod-*.whl)
#   HOROVOD_GPU_OPERATIONS=NCCL  NCCL support (needs CUDA and NCCL headers)
#   HOROVOD_CUDA_HOME, HOROVOD_BUILD_CUDA_CC_LIST (default 80,90), HOROVOD_NCCL_HOME/_INCLUDE/_LIB
#   HVDGAN_HOROVOD_MPI=0         build without MPI (Gloo only; set automatically where no mpicxx is found)
# SDIST is a local horovod-<version>.tar.gz (an offline bundle); without it pip downloads it from PyPI.
# Messages go to stderr; the wheel's path alone to stdout.

hw_say() { printf '[horovod %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
hw_die() { printf '[horovod] error: %s\n' "$*" >&2; exit 1; }

# The CUDA toolkit Horovod's torch extension is compiled with (empty when torch is a CPU build).
horovod_cuda_home() {
  local torch_cuda=$1
  [ -z "$torch_cuda" ] && return 0
  if [ -n "${HOROVOD_CUDA_HOME:-}" ]; then echo "$HOROVOD_CUDA_HOME"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then echo /usr/local/cuda
  elif command -v nvcc >/dev/null; then dirname "$(dirname "$(realpath "$(command -v nvcc)")")"
  fi
}

# Whether this build includes MPI: yes where mpicxx is on PATH, unless HVDGAN_HOROVOD_MPI says otherwise.
horovod_with_mpi() {
  case "${HVDGAN_HOROVOD_MPI:-auto}" in
    0|no) return 1 ;;
    1|yes) return 0 ;;
    *) command -v mpicxx >/dev/null 2>&1 ;;
  esac
}

# The cache key: every input that changes the compiled wheel. (Keys of MPI builds keep the form they had
# before Gloo-only builds existed, so caches stay valid.)
horovod_cache_key() {
  local py=$1 torch_version=$2 torch_cuda pyver patch_hash cc_list gpu_ops mpi=
  torch_cuda=$("$py" -c 'import torch; print(torch.version.cuda or "")') || hw_die "$py cannot import torch"
  pyver=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  patch_hash=$(sha256sum "$HOROVOD_PATCH" | cut -c1-8)
  cc_list=${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}
  gpu_ops=${HOROVOD_GPU_OPERATIONS:-}
  horovod_with_mpi || mpi=-nompi
  echo "horovod-$HOROVOD_VERSION-torch-$torch_version-$pyver-cuda-${torch_cuda:-none}${torch_cuda:+-cc${cc_list//,/_}}-ops-${gpu_ops:-cpu}$mpi-$patch_hash"
}

# NCCL from the nvidia-nccl-cu* wheel that CUDA builds of torch install (include/nccl.h, lib/libnccl.so.2),
# where no HOROVOD_NCCL_* and no system NCCL is set: Horovod's FindNCCL looks for libnccl.so, so a
# folder of links gives it one; the wheel then links to libnccl.so.2 dynamically (the one torch loads).
horovod_nccl_from_wheel() {
  local py=$1 links=$2 nccl
  [ -n "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}" ] && return 0
  [ -f /usr/include/nccl.h ] || [ -f "${CUDA_HOME:-/nonexistent}/include/nccl.h" ] && return 0
  nccl=$("$py" -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null) || return 0
  [ -f "$nccl/include/nccl.h" ] || return 0
  mkdir -p "$links/include" "$links/lib"
  ln -sf "$nccl/include/"*.h "$links/include/"
  ln -sf "$(ls "$nccl"/lib/libnccl.so* | head -1)" "$links/lib/libnccl.so"
  export HOROVOD_NCCL_INCLUDE=$links/include HOROVOD_NCCL_LIB=$links/lib HOROVOD_NCCL_LINK=SHARED
  hw_say "NCCL from the Python wheel at $nccl"
}

horovod_wheel() {
  local py=$1 torch_version=$2 sdist=${3:-} cache key wheel_dir whl torch_cuda cuda_home build
  cache=${HVDGAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdgan}
  key=$(horovod_cache_key "$py" "$torch_version") || exit 1
  wheel_dir="$cache/wheels/$key"
  whl=$(ls "$wheel_dir"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$whl" ]; then
    hw_say "using cached Horovod wheel $whl"
    echo "$whl"
    return 0
  fi
  torch_cuda=$("$py" -c 'import torch; print(torch.version.cuda or "")')
  cuda_home=$(horovod_cuda_home "$torch_cuda")
  hw_say "building Horovod $HOROVOD_VERSION from its sdist (one time, several minutes); cache: $wheel_dir"
  build=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$build'" EXIT
  if [ -n "$sdist" ]; then
    [ -f "$sdist" ] || hw_die "$sdist: no such Horovod sdist"
    cp "$sdist" "$build/horovod-$HOROVOD_VERSION.tar.gz"
  else
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$build" "horovod==$HOROVOD_VERSION" \
      2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  fi
  tar -C "$build" -xzf "$build/horovod-$HOROVOD_VERSION.tar.gz"
  if command -v patch >/dev/null; then
    patch -s -d "$build/horovod-$HOROVOD_VERSION" -p1 < "$HOROVOD_PATCH"
  elif command -v git >/dev/null; then  # (GPU images without `patch`)
    git -C "$build/horovod-$HOROVOD_VERSION" apply -p1 "$(realpath "$HOROVOD_PATCH")"
  else
    hw_die "neither patch nor git is installed: cannot apply $HOROVOD_PATCH"
  fi
  (
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    if horovod_with_mpi; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
    if [ -n "$cuda_home" ]; then
      # CUDA_HOME too: torch.utils.cpp_extension otherwise guesses it from the nvcc on PATH
      export HOROVOD_CUDA_HOME=$cuda_home CUDA_HOME=$cuda_home HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}
    elif [ -n "$torch_cuda" ]; then
      # Horovod's torch extension builds CUDA kernels whenever torch is a CUDA build
      hw_die "torch is a CUDA $torch_cuda build but no CUDA toolkit was found: set HOROVOD_CUDA_HOME, or install a CPU build of torch"
    fi
    if [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then
      export HOROVOD_GPU_OPERATIONS
      horovod_nccl_from_wheel "$py" "$build/nccl"
    fi
    export MAKEFLAGS=-j$(nproc)
    # CMake's default generator needs make; images with ninja only (some GPU images) use Ninja
    if ! command -v make >/dev/null && command -v ninja >/dev/null; then export CMAKE_GENERATOR=Ninja; fi
    [ -n "${HOROVOD_CMAKE:-}" ] || { [ -x "$(dirname "$py")/cmake" ] && export HOROVOD_CMAKE=$(dirname "$py")/cmake; }
    "$py" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$build/dist" "$build/horovod-$HOROVOD_VERSION" \
      > "$build/build.log" 2>&1
  ) || { mkdir -p "$cache"; cp "$build/build.log" "$cache/horovod-build.log"; grep -E "CMake Error|error:" -A5 "$build/build.log" | head -60 >&2; hw_die "Horovod build failed; full log: $cache/horovod-build.log"; }
  mkdir -p "$wheel_dir"
  whl=$(basename "$build"/dist/horovod-*.whl)
  cp "$build/dist/$whl" "$wheel_dir/$whl.tmp" && mv "$wheel_dir/$whl.tmp" "$wheel_dir/$whl"
  rm -rf "$build"
  trap - EXIT
  echo "$wheel_dir/$whl"
}
