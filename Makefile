# relay: `make demo` runs the main job end to end; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SSHD   ?= /usr/sbin/sshd
SLURMCTLD ?= /usr/sbin/slurmctld
SOCKET_ACTIVATE ?= $(shell command -v systemd-socket-activate)

.PHONY: bench bench-quick install compile base-packages system-packages demo demo-slurm test check package-check lint typecheck clean deploy

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
	touch $@

# Bytecode, as an installed package has it: where PYTHONDONTWRITEBYTECODE is set, an editable
# install would otherwise recompile every module at every shim and kernel start.
compile: $(VENV)/.installed
	@$(PY) -m compileall -q relay bench

# Debian's packages for make demo and make test (README, "Set-up"): OpenSSH's sshd (the demo
# and the tests run against a real one), and systemd's tools (the tests verify the unit files
# and socket activation with them). Nothing else: the tests marked slurm skip, saying why.
APT_NEEDS := $(if $(wildcard $(SSHD)),,openssh-server) \
             $(if $(SOCKET_ACTIVATE),,systemd)
# Slurm, by make system-packages only (relay.sim.slurm: the tests marked slurm, make
# demo-slurm; .ci/run installs it): slurmctld, slurmd, the clients and munge.
# --no-install-recommends is enough: every plugin relay's cluster loads is in
# slurm-wlm-basic-plugins, a Depends; the Recommends add only slurm-wlm-plugins (hdf5, rrd,
# influxdb, ipmi, rocm-smi, jwt and their -dev packages): 8 new packages instead of 42 on a
# bookworm machine that had sshd and systemd (apt-get -s, docs/slurm-cluster.md).
APT_NEEDS_NO_RECOMMENDS := $(if $(wildcard $(SLURMCTLD)),,slurmctld slurmd slurm-client munge)
# Login shells that read a command otherwise than sh (tests/streams/test_login_shells.py and
# tests/e2e/test_login_shell.py run relay's remote commands under them; without them, skipped),
# and busybox's sh, a small host's /bin/sh (tests/streams/test_hookinstall.py runs the
# installer's checks under it beside dash and bash); and lsof, macOS's way to tell who
# connected, which tests/streams/test_guard.py runs one at a time against a flood (a
# Debian image without it skipped that test)
APT_NEEDS_NO_RECOMMENDS += $(if $(wildcard /usr/bin/tcsh),,tcsh) $(if $(wildcard /usr/bin/fish),,fish) \
                           $(if $(wildcard /usr/bin/zsh),,zsh) \
                           $(if $(shell command -v busybox),,busybox) \
                           $(if $(shell command -v lsof),,lsof)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

base-packages:
	@if [ -n "$(strip $(APT_NEEDS))" ]; then \
	  echo "installing $(strip $(APT_NEEDS)) (Debian)"; \
	  $(APT) update -qq && $(APT) install -y -qq $(APT_NEEDS) >/dev/null; fi

system-packages: base-packages
	@if [ -n "$(strip $(APT_NEEDS_NO_RECOMMENDS))" ]; then \
	  echo "installing $(strip $(APT_NEEDS_NO_RECOMMENDS)) (Debian)"; \
	  $(APT) update -qq && $(APT) install -y -qq --no-install-recommends \
	    $(APT_NEEDS_NO_RECOMMENDS) >/dev/null; fi

install: $(VENV)/.installed compile base-packages

demo: install
	$(PY) -m relay.sim.demo

# Kernels on a real one-machine Slurm cluster's compute node, through its login node (root).
demo-slurm: install system-packages
	$(PY) -m relay.sim.demo_slurm

# The suite waits far more than it computes (logins to a real sshd, a simulated kernel's second
# of start, outages waited out: one process keeps a quarter of one core busy), so pytest-xdist
# runs it in TEST_WORKERS processes at once (TEST_WORKERS=0: in this one). The Slurm tests run
# after, on their own: beside the rest, their one-machine clusters' jobs were seen to fail to
# launch ("launch failed requeued held"), a cause not yet found. So do the few marked alone,
# which need the machine's pids or timers to themselves (pyproject.toml's markers).
TEST_WORKERS ?= 4
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slurm and not alone"
	$(PY) -m pytest -m "slurm or alone"

# The wheel and sdist as a user gets them, installed in a fresh virtualenv and launched from
# (.ci/package_check.py: a file missing from the package fails here); CI runs it.
package-check: install
	$(PY) .ci/package_check.py

lint: install
	$(VENV)/bin/ruff check relay tests .ci
	$(VENV)/bin/ruff format --check relay tests .ci

typecheck: install
	$(VENV)/bin/mypy

# What CI runs (.ci/run, which installs Slurm first): lint, types, the package check, tests.
check: lint typecheck package-check test

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
