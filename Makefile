# The whole set-up: `make demo` runs the main job on the embedded shapes world, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The torch build that lies on this machine's disk (open_clip needs torchvision beside it).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-slow test-gpu demo sweep test-world-asset clean

install: $(VENV)/.installed

# Java: pycocoevalcap's PTB tokenizer and METEOR (the evaluation's reference metrics), from Debian's
# packages where the machine has none (CI runs as root; elsewhere run this line with sudo).
$(VENV)/.installed: setup.py
	command -v java >/dev/null || (apt-get update -q && apt-get install -y -q default-jre-headless)
	java -version
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	touch $@

# Tests on tiny shapes spend most of their time in XLA's compiler, not in running: LLVM's expensive
# passes are skipped (a third off the suite's time, the same results), and programs compiled once
# are shared through JAX's persistent cache between the two workers and across files.
# JAX_PLATFORMS=cpu: libtpu is installed (tests/aot compile for TPU slices) but no TPU is here; the
# TPU compile tests build their own compile-only devices, several processes at once.
TEST_ENV := XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 \
	--xla_llvm_disable_expensive_passes=true" JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax-tests \
	JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1

test: install
	# two workers, one test file each at a time (module fixtures build once)
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile -m "not gpu and not slow" tests

# Run alone, one after the other: the paper config at the released widths (12 GB) and the full-size
# TPU compiles (up to 8 GB each) would not fit this machine's memory side by side.
ALONE := tests/rl/test_multiprocess.py tests/rl/test_released_widths.py tests/aot/test_cli.py

test-slow: install
	# end-to-end trials of main.py (kill and resume, SIGTERM): minutes each, run by CI after `make test`
	$(TEST_ENV) $(PY) -m pytest -q -n 2 -m "slow and not gpu" $(foreach f,$(ALONE),--ignore $(f)) tests
	# the memory-heavy trials, one at a time
	$(TEST_ENV) $(PY) -m pytest -q -m "slow and not gpu" tests/rl/test_released_widths.py tests/aot/test_cli.py
	# then the two-process restart trial alone: its two processes need the machine's two cores (beside
	# the kill trials one of them once missed jax.distributed's shutdown barrier)
	$(TEST_ENV) $(PY) -m pytest -q -m "slow and not gpu" tests/rl/test_multiprocess.py

test-gpu: install
	# torch and JAX share the card: no up-front grab of 75% of its memory by JAX
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(PY) -m pytest -q -s -m gpu tests

# JAX_PLATFORMS=cpu: the venv holds libtpu (the TPU compile check), which would otherwise look for
# a TPU at every start and log that it found none
demo: install
	JAX_PLATFORMS=cpu $(PY) -m vlrm_jax.world.demo --workdir runs/shapes

# The demo's RL rows again over seeds 0 1 2 (after `make demo`; nothing is pre-trained again):
# runs/shapes/sweeps/config/results.json and seeds.png. A change: SET="KEY=VALUE ..." TAG=name
# (values without spaces, e.g. SET="reward.extra_exempt_words=('and','small')").
# ESTIMATORS="a2c grpo a2c_kl ..." (or "all"): VLRM by each estimator variant over the seeds, on equal
# captions sampled (vlrm_jax/world/estimator_sweep.py): runs/shapes/sweeps/estimators/.
SEEDS ?= 0 1 2
TAG ?= config
sweep: install
ifdef ESTIMATORS
	JAX_PLATFORMS=cpu $(PY) -m vlrm_jax.world.estimator_sweep --workdir runs/shapes --seeds $(SEEDS) \
		$(if $(filter all,$(ESTIMATORS)),,--estimators $(ESTIMATORS))
else
	JAX_PLATFORMS=cpu $(PY) -m vlrm_jax.world.sweep --workdir runs/shapes --seeds $(SEEDS) --tag $(TAG) $(foreach s,$(SET),--set "$(s)")
endif

# The demo's pre-trained models that tests/world/test_rl_direction.py trains VLRM from (6 MB):
# refresh after a change to configs/shapes.py's pre-training and a `make demo`.
WORLD_ASSET := tests/assets/shapes_world/models
test-world-asset:
	rm -rf $(WORLD_ASSET) && mkdir -p $(WORLD_ASSET)
	cp -r runs/shapes/models/captioner runs/shapes/models/itm runs/shapes/models/reference_lm $(WORLD_ASSET)/

clean:
	rm -rf $(VENV) runs .cache
