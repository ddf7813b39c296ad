# relay: `make demo` runs the main job end to end; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SSHD   ?= /usr/sbin/sshd

.PHONY: bench bench-quick install compile system-packages demo demo-slurm test check lint typecheck clean deploy

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
	touch $@

# Bytecode, as an installed package has it: where PYTHONDONTWRITEBYTECODE is set, an editable
# install would otherwise recompile every module at every shim and kernel start.
compile: $(VENV)/.installed
	@$(PY) -m compileall -q relay bench

# Debian's packages: OpenSSH's sshd (the demo and the tests run against a real one), and
# systemd's tools (the tests verify the unit files and socket activation with them).
APT_NEEDS := $(if $(wildcard $(SSHD)),,openssh-server) \
             $(if $(shell command -v systemd-socket-activate),,systemd)
# Slurm (relay.sim.slurm: the tests marked slurm, make demo-slurm): slurmctld, slurmd, the
# clients and munge. --no-install-recommends is enough: every plugin relay's cluster loads is in
# slurm-wlm-basic-plugins, a Depends; the Recommends add only slurm-wlm-plugins (hdf5, rrd,
# influxdb, ipmi, rocm-smi, jwt and their -dev packages): 8 new packages instead of 42 on a
# bookworm machine that had sshd and systemd (apt-get -s, docs/slurm-cluster.md).
APT_NEEDS_NO_RECOMMENDS := $(if $(wildcard /usr/sbin/slurmctld),,slurmctld slurmd slurm-client munge)
system-packages:
	@if [ -n "$(strip $(APT_NEEDS) $(APT_NEEDS_NO_RECOMMENDS))" ]; then \
	  echo "installing $(strip $(APT_NEEDS) $(APT_NEEDS_NO_RECOMMENDS)) (Debian)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq; fi
	@if [ -n "$(strip $(APT_NEEDS))" ]; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_NEEDS) >/dev/null; fi
	@if [ -n "$(strip $(APT_NEEDS_NO_RECOMMENDS))" ]; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(APT_NEEDS_NO_RECOMMENDS) >/dev/null; fi

install: $(VENV)/.installed compile system-packages

demo: install
	$(PY) -m relay.sim.demo

# Kernels on a real one-machine Slurm cluster's compute node, through its login node (root).
demo-slurm: install
	$(PY) -m relay.sim.demo_slurm

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check relay tests
	$(VENV)/bin/ruff format --check relay tests

typecheck: install
	$(VENV)/bin/mypy

# What CI runs, and more: lint, types, tests.
check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

# Benchmarks against a real sshd (BENCHMARKS.md, bench/launch-latency.png); not run by CI.
bench: install
	$(PY) -m bench

bench-quick: install
	$(PY) -m bench --quick

# Regenerate the service files in deploy/ from relay/service.py (a test checks they match).
deploy: install
	$(PY) -m relay.service deploy
