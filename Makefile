# hvdgan: `make demo` and `make test` do all the set-up on a fresh Debian 12 machine (scripts/setup.sh).
VENV ?= .venv
NP ?= 2
PYTEST_ARGS ?=
# the test suite also needs a local Slurm (tests/test_slurm.py starts one), and sshd and iproute2 for the
# two-node cluster of tests/test_multinode.py (network namespaces, horovodrun/mpirun over ssh)
TEST_PACKAGES = slurmctld slurmd slurm-client munge libpmix2 openssh-server iproute2

.PHONY: setup setup-test demo test bench bench-multinode clean-demo gpu-bundle gpu-check

setup:
	bash scripts/setup.sh

setup-test:
	HVDGAN_SYSTEM_PACKAGES="$(TEST_PACKAGES)" bash scripts/setup.sh

data/digits/manifest.json: | setup
	$(VENV)/bin/hvdgan prepare digits data/digits --holdout 50%

# Train on the embedded digits (scikit-learn's 1,797 real 8x8 digits, upscaled to 32x32; half held out for
# evaluation) on $(NP) ranks.
# Idempotent: a second run resumes the finished run and only re-prints where the results are.
demo: setup data/digits/manifest.json
	$(VENV)/bin/horovodrun -np $(NP) -H localhost:$(NP) $(VENV)/bin/hvdgan train --job jobs/digits-demo.yaml --resume auto
	@echo "samples: runs/digits-demo/samples/latest.png  losses: runs/digits-demo/losses.png"

test: setup-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/bench_data.py
	$(VENV)/bin/python benchmarks/bench_train.py
	$(VENV)/bin/python benchmarks/bench_eval.py

# weak scaling on the two-node test cluster (root: network namespaces; openssh-server, see TEST_PACKAGES)
bench-multinode: setup-test
	$(VENV)/bin/python benchmarks/bench_multinode.py

clean-demo:
	rm -rf runs/digits-demo

# GPU nodes (docs/cluster.md). `make gpu-bundle` (where pip reaches the index) writes $(GPU_BUNDLE)/, at most
# 60 MiB: what a GPU node without internet lacks, for Python $(GPU_PYTHON), leaving out what $(GPU_HAVE) lists
# (the node's `python3 -m pip list --format=freeze`; the default describes the GPU machines this project
# borrows). `make gpu-check` (on the node, offline) builds Horovod with NCCL from it and checks and
# benchmarks hvdgan there: report in gpu-check/gpu-check.md and .json. `GPU_CHECK_ARGS=--device cpu` is the
# CPU dry run.
GPU_BUNDLE ?= gpu-bundle
GPU_PYTHON ?= 3.12
GPU_HAVE ?= scripts/gpu-nodes/lent-cuda-image.txt
GPU_CHECK_ARGS ?=
BUNDLE_PY = $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)

gpu-bundle:
	$(BUNDLE_PY) scripts/gpu_bundle.py --out $(GPU_BUNDLE) --python-version $(GPU_PYTHON) $(if $(GPU_HAVE),--have $(GPU_HAVE))

gpu-check:
	bash scripts/gpu-check.sh --bundle $(GPU_BUNDLE) $(GPU_CHECK_ARGS)
