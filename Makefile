# The README's two commands: `make demo` (the main job on the embedded default model) and `make test`.
#   make demo        development venv (.venv, torch's CPU wheel), then the demo
#   make test        the test suite at both ends of every range setup.py declares, each in its own venv:
#                    .venv-lowest (.ci/lowest.txt) and .venv-newest (newest releases inside the ranges)
#   make test-dev    the test suite in the development venv only (quicker, one version set)
#   make test-matrix the core tests on every transformers release between the two ends (.ci/transformers_matrix.sh)
PYTHON ?= python3
EXTRAS := dev,eval,train,cpu
PYTEST := -m pytest -q -p no:cacheprovider tests

.PHONY: demo test test-lowest test-newest test-dev test-matrix install clean

.venv/.installed: setup.py .ci/dev.txt
	rm -rf .venv && $(PYTHON) -m venv .venv
	.venv/bin/python -m pip install -q --upgrade pip
	# torch first, pinned, so no later requirement pulls a CUDA build
	.venv/bin/python -m pip install -q -r .ci/dev.txt
	.venv/bin/python -m pip install -q -e ".[$(EXTRAS)]" -c .ci/dev.txt
	touch $@

.venv-lowest/.installed: setup.py .ci/lowest.txt
	rm -rf .venv-lowest && $(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install -q --upgrade pip
	.venv-lowest/bin/python -m pip install -q -r .ci/lowest.txt
	.venv-lowest/bin/python -m pip install -q -e ".[$(EXTRAS)]" -c .ci/lowest.txt
	touch $@

.venv-newest/.installed: setup.py
	rm -rf .venv-newest && $(PYTHON) -m venv .venv-newest
	.venv-newest/bin/python -m pip install -q --upgrade pip
	.venv-newest/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: .venv/.installed

demo: .venv/.installed
	.venv/bin/retrolm demo

test: test-lowest test-newest

test-lowest: .venv-lowest/.installed
	.venv-lowest/bin/python $(PYTEST)

test-newest: .venv-newest/.installed
	.venv-newest/bin/python $(PYTEST)

test-dev: .venv/.installed
	.venv/bin/python $(PYTEST)

test-matrix:
	.ci/transformers_matrix.sh

clean:
	rm -rf .venv .venv-lowest .venv-newest .venv-matrix .pytest_cache
