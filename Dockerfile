# syntax=docker/dockerfile:1
# hvdgan GPU image: CUDA 13 development base, Ubuntu's Open MPI 4.1, torch from PyPI, and Horovod built with
# NCCL by the same scripts/setup.sh (and patches/) as the local install and CI.
#
#   docker build -t hvdgan .
#   docker run --gpus all --rm hvdgan info
#   docker run --gpus all --rm -v "$PWD:/work" hvdgan prepare digits data/digits
#   docker run --gpus all --rm --shm-size=1g -v "$PWD:/work" --entrypoint horovodrun hvdgan \
#       -np 2 hvdgan train --job jobs/digits-demo.yaml
#
# Versions: every pin comes from scripts/versions.env, read by setup.sh and by the RUN steps below. The one
# exception Docker forces is the base image tag (FROM cannot read a file): its CUDA major.minor must equal
# CUDA_VERSION there, which tests/test_docker.py checks. HOROVOD_BUILD_CUDA_CC_LIST picks the GPU
# architectures Horovod's kernels are built for.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG HOROVOD_BUILD_CUDA_CC_LIST=80,90
ENV DEBIAN_FRONTEND=noninteractive \
    HVDGAN_HOME=/opt/hvdgan \
    HVDGAN_VENV=/opt/hvdgan/.venv \
    HVDGAN_CACHE=/root/.cache/hvdgan \
    HVDGAN_EXTRAS=tensorboard \
    HOROVOD_GPU_OPERATIONS=NCCL \
    HOROVOD_CUDA_HOME=/usr/local/cuda \
    HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST} \
    HDF5_USE_FILE_LOCKING=FALSE \
    PYTHONUNBUFFERED=1 \
    OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

WORKDIR /opt/hvdgan

# System packages: compilers, Open MPI 4.1 (Ubuntu 24.04 ships 4.1.6) and the Python of versions.env
# (deadsnakes when the distribution has another one).
COPY scripts/versions.env scripts/versions.env
RUN set -eux; . scripts/versions.env; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates build-essential git patch openssh-client \
        openmpi-bin libopenmpi-dev software-properties-common gpg-agent; \
    if ! apt-cache show "python${PYTHON_VERSION}-venv" >/dev/null 2>&1; then \
        add-apt-repository -y ppa:deadsnakes/ppa; apt-get update; \
    fi; \
    apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
        "python${PYTHON_VERSION}-dev"; \
    rm -rf /var/lib/apt/lists/*; \
    "python${PYTHON_VERSION}" -m venv "$HVDGAN_VENV"

# The project, then the one set-up path: torch/torchvision, Horovod from its sdist + patch with NCCL,
# hvdgan itself, and `horovodrun --check-build` (setup.sh fails unless PyTorch, MPI, Gloo and NCCL are in).
COPY pyproject.toml setup.cfg README.md ./
COPY patches/ patches/
COPY scripts/ scripts/
COPY hvdgan/ hvdgan/
# (the Inception weights for FID that setup.sh fetched into the cache mount are kept in the image)
RUN --mount=type=cache,target=/root/.cache \
    scripts/setup.sh && \
    install -D -m 644 /root/.cache/hvdgan/inception/*/default_1.pt /opt/hvdgan/inception/default_1.pt
ENV HVDGAN_INCEPTION=/opt/hvdgan/inception/default_1.pt
COPY jobs/ jobs/
COPY slurm/ slurm/
COPY schedulers/ schedulers/

ENV PATH=/opt/hvdgan/.venv/bin:${PATH}
RUN horovodrun --check-build && hvdgan --version

WORKDIR /work
ENTRYPOINT ["hvdgan"]
CMD ["--help"]
