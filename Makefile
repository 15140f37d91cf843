# The two commands of the README: `make run` (a real federated F3OCUS run) and `make test`.
# Both create .venv if it is missing and install the project with the CPU torch pin.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test docker-test compare clean browser

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints-cpu.txt -e ".[test,tracking]"
	touch $(STAMP)

install: $(STAMP)

# Extra run-config overrides: make run RUN_CONFIG="num-server-rounds=5 selection.algorithm='aco'"
run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" scripts/run-simulation.sh $(if $(RUN_CONFIG),--run-config "$(RUN_CONFIG)")

# The evidence grid (docs/results.md): methods x seeds into results/default/.
# Extra arguments: make compare COMPARE_ARGS="--quick"
compare: $(STAMP)
	$(BIN)/f3ocus-compare $(COMPARE_ARGS)

# Lint (ruff), type-check f3ocus_core and the apps (mypy; both configured in pyproject.toml), then the
# tests, two files at a time (pytest-xdist):
# the slow end-to-end tests mostly wait on Flower's transport, so two of them share 2 cores well.
# Extra pytest arguments: make test PYTEST_ARGS="-m 'not slow'"; one at a time: PYTEST_WORKERS=0
PYTEST_WORKERS ?= 2
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# docker/compose.yml and its TLS overlay brought up for real (tests/test_docker_engine.py): installs
# what is missing where root can (scripts/docker-test-setup.sh: docker.io, debootstrap, Compose v2),
# starts dockerd if none runs (stops it after), builds the image offline on a local base, runs a
# round in containers. Skips, saying why, where no engine can be had.
docker-test: $(STAMP)
	PYTHON=$(BIN)/python scripts/docker-test-setup.sh || echo "docker-test-setup failed: the docker tests will say what is missing"
	PATH="$(abspath $(BIN)):$$PATH" F3OCUS_DOCKER_TEST=1 $(BIN)/python -m pytest -m docker -s -rs tests/test_docker_engine.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .flwr outputs .pytest_cache .mypy_cache

# The MLflow UI test (tests/test_tracking_ui.py) drives Debian's chromium through Playwright. As root
# (CI) it is installed when missing; otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium is not installed: the MLflow UI test will skip (apt-get install chromium)"
