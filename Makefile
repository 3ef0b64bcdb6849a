# roomcast: `make run` starts a local cluster, `make test` installs what the tests need and runs them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PORT   ?= 3000
PROTOCOL_SUITES ?=

.PHONY: run test lint typecheck bench compliance compliance-server install install-test install-haproxy install-chromium clean

$(VENV)/.stamp-install: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-install pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp-test pyproject.toml
	$(PIP) install --quiet -e '.[test,bench]'
	touch $@

tests/js/node_modules/.stamp: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.stamp-install

# Debian's HAProxy: the load balancer of the tests that spread one Socket.IO session over several
# nodes (tests/support/haproxy.py). Installed when missing, as `make bench` does redis-server
# (CI runs as root on a clean Debian 12); checked on every run, so no stamp goes stale.
install-haproxy:
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }

# Debian's Chromium and its WebDriver: the headless browser that opens the real Admin UI
# (tests/interop/test_admin_ui_browser.py). Installed when missing, as install-haproxy does.
install-chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

install-test: $(VENV)/.stamp-test tests/js/node_modules/.stamp install-haproxy install-chromium

run: install
	$(VENV)/bin/roomcast up --config cluster.toml

test: install-test
	$(VENV)/bin/ruff check roomcast tests bench examples
	$(VENV)/bin/ruff format --check roomcast tests bench examples
	$(VENV)/bin/mypy
	ROOMCAST_TEST_REQUIRE_HAPROXY=1 ROOMCAST_TEST_REQUIRE_BROWSER=1 $(VENV)/bin/pytest -q

lint: install-test
	$(VENV)/bin/ruff check roomcast tests bench examples
	$(VENV)/bin/ruff format --check roomcast tests bench examples

typecheck: install-test
	$(VENV)/bin/mypy

# Single-node and 2-node cluster fan-out, scale-out to --scale nodes, and idle connections,
# roomcast vs Node socket.io@4 (+ the Redis adapter); the cluster scenarios install Debian's
# redis-server when it is missing. The balancer scenario prices roomcast's forwarding behind
# HAProxy (installed by install-test) with no affinity. See bench/__main__.py,
# e.g. BENCH_ARGS="--scenario cluster --repeat 3" or "--scenario scaleout --scale 2,4".
bench: install-test $(VENV)/.stamp-bench
	@test bench/js/node_modules/.package-lock.json -nt bench/js/package-lock.json || \
		{ cd bench/js && npm ci --no-audit --no-fund --loglevel=error; }
	$(PY) -m bench $(BENCH_ARGS)

compliance-server: install
	PYTHONPATH=. $(PY) examples/compliance.py

compliance:
	@test -n "$(PROTOCOL_SUITES)" || { echo "set PROTOCOL_SUITES to a local copy of the socket.io repository"; exit 2; }
	cd $(PROTOCOL_SUITES)/docs/engine.io-protocol/v4-test-suite && npm ci --no-audit --no-fund --loglevel=error && npx mocha test-suite.js
	cd $(PROTOCOL_SUITES)/docs/socket.io-protocol/v5-test-suite && npm ci --no-audit --no-fund --loglevel=error && npx mocha test-suite.js

clean:
	rm -rf $(VENV) tests/js/node_modules .pytest_cache .mypy_cache .ruff_cache
