# Two commands do all the set-up on a fresh machine:
#   make demo   -> venv, install, train a VAE on Ray, export, serve, query
#   make test   -> venv, install with test extras, run the test suite
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and exact: the only version whose CPU wheel is on local disk here.
	$(BIN)/pip install --quiet torch==2.13.0

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	# The playground test drives Debian's chromium through Playwright, which never downloads a
	# browser of its own here; installed when missing (needs root, as in CI).
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "warning: no chromium; run 'apt-get install chromium' as root or tests/test_playground.py fails"

demo: install
	$(BIN)/genray demo

test: install-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs models *.egg-info
