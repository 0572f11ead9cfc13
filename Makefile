# foundry-fleet: `make run` runs a fleet on its embedded defaults, `make test` runs the whole suite.
# Both install what they need: the venv and Python packages, and Debian packages when run as root.

VENV ?= .venv
ROOT ?= fleet-data
# The runtime a fleet made by `make run` gets: local (bubblewrap), podman (`make run RUNTIME=podman`,
# which also installs Podman) or nomad (`make run RUNTIME=nomad NOMAD_ADDR=http://host:4646`: a Nomad
# cluster runs the instances, by default as Podman containers whose image this host builds, so it
# installs Podman too). An existing fleet keeps its own: `foundry-fleet runtime set` switches it.
RUNTIME ?= local
NOMAD_ADDR ?= http://127.0.0.1:4646
PYTHON ?= python3
BIN = $(VENV)/bin
# bubblewrap: instance sandbox; slirp4netns: each instance's own network namespace (outbound NAT and
# the one port forward the edge uses); libseccomp2: the sandbox's syscall filter; iptables: keeps
# instance ports off the network; util-linux: setpriv; restic: backup destinations of fleets on
# directory storage.
SYSTEM_PACKAGES = bubblewrap slirp4netns libseccomp2 iptables util-linux procps restic
# Only for `make test`: headless Chromium (driven over its DevTools protocol: no WebDriver) for the
# browser tests through the edge (found as chromium, chromium-browser, google-chrome, ... or $CHROMIUM),
# certutil (libnss3-tools) so that browser trusts the fleet's local CA, and zfs-fuse for the ZFS
# storage tests (their fixture starts its daemon and makes pools on files), and an ssh server and
# client for replication to a ZFS destination over ssh, and rootful Podman for the podman runtime's tests:
# podman with runc (crun refuses this host's cgroup layout), conmon (keeps a container when the daemon
# dies), catatonit (the container's init: Node as PID 1 ignores SIGTERM), netavark and aardvark-dns (its
# network stack); the fleet writes its own containers.conf for them. `make run` needs none of these:
# on the embedded defaults instances run under bubblewrap (`make run RUNTIME=podman` installs them).
# systemd's systemd-analyze checks the unit `foundry-fleet service install` writes (verify, and its
# exposure score), and nix-bin evaluates the NixOS module and the disko layout (tests/test_nix_module.py).
PODMAN_PACKAGES = podman runc conmon catatonit netavark aardvark-dns
# Only for `make test-vm`: mmdebstrap builds the Debian guest's image from Debian's packages (no loop
# mount: mkfs.ext4 -d), QEMU boots it (software emulation: this lane needs no /dev/kvm).
VM_SYSTEM_PACKAGES = mmdebstrap qemu-system-x86 e2fsprogs
TEST_SYSTEM_PACKAGES = chromium libnss3-tools zfs-fuse openssh-server openssh-client nix-bin systemd $(PODMAN_PACKAGES)

.PHONY: run test test-vm bench lock lock-check system-deps test-system-deps vm-system-deps clean

system-deps:
	@tools/ensure-debian-packages "to run instances" $(SYSTEM_PACKAGES) $(if $(filter podman nomad,$(RUNTIME)),$(PODMAN_PACKAGES)) $$(command -v node >/dev/null || echo nodejs) -- bwrap slirp4netns node iptables setpriv restic $(if $(filter podman nomad,$(RUNTIME)),podman runc)

test-system-deps:
	@tools/ensure-debian-packages "for the browser, ZFS, podman and Nix tests" $(TEST_SYSTEM_PACKAGES) -- chromium certutil zfs-fuse zpool ssh podman runc nix-instantiate systemd-analyze

vm-system-deps:
	@tools/ensure-debian-packages "for the VM lane" $(VM_SYSTEM_PACKAGES) -- mmdebstrap qemu-system-x86_64 mkfs.ext4

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Python packages come from the lock files (requirements/*.lock: exact versions, checked by their hashes;
# `make lock` writes them from pyproject.toml's ranges), then the fleet itself without resolving again.
$(VENV)/.run-deps: requirements/run.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements/run.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

# The test lock holds the run lock's packages at the same versions: one install for both.
$(VENV)/.test-deps: requirements/test.lock requirements/run.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements/test.lock
	$(BIN)/pip install -q --no-deps -e .
	@touch $(VENV)/.run-deps $@

# uv, which writes the lock files (tools/lock), pinned with hashes too.
$(VENV)/.lock-tools: requirements/tools.lock | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements/tools.lock
	@touch $@

# After a change to the dependencies in pyproject.toml: the packages already locked keep their versions
# while the ranges allow them. `make lock UPGRADE=1` moves every package to the newest version allowed.
lock: $(VENV)/.lock-tools
	tools/lock $(BIN)/uv $(if $(UPGRADE),--upgrade)

# Fails when the lock files are not what `make lock` would write now (CI runs it; needs the index).
lock-check: $(VENV)/.lock-tools
	tools/lock $(BIN)/uv --check

# INIT_ARGS go to `init` (only when it makes the fleet, e.g. INIT_ARGS="--https-port 9443"), ARGS to `up`
# (e.g. ARGS="--leave-running").
run: system-deps $(VENV)/.run-deps
	@[ -f $(ROOT)/fleet.toml ] || $(BIN)/foundry-fleet init --root $(ROOT) --runtime $(RUNTIME) \
		$(if $(filter nomad,$(RUNTIME)),--nomad-addr $(NOMAD_ADDR)) $(INIT_ARGS)
	$(BIN)/foundry-fleet --config $(ROOT)/fleet.toml up $(ARGS)

# FOUNDRY_FLEET_FORBID_SKIPS=1 (as .ci/run sets it) fails the run when any test skipped.
# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file to each: most of a test's time is
# spent waiting for the processes it starts, so two workers on two cores take about half as long as one
# (TEST_WORKERS=0: one process). Its temporary files go under a short directory: a test fleet's root lies
# there, and each instance's forwarder listens on a unix socket under that root, whose path may not pass
# 107 bytes. Each run makes its own (/tmp/ff-XXXXXX, or TEST_TMP when given), removed when the run passes
# and kept for reading when it fails: a run that was killed can leave mounts (zfs-fuse) or processes
# there that no later run can clear, and two runs at once must not empty each other's.
TEST_WORKERS ?= 2
test: system-deps test-system-deps $(VENV)/.test-deps
	$(BIN)/ruff check src tests bench vm
	@# The suite starts hundreds of foundry-fleet processes: compiled once here, not in each of them
	@# (nothing else writes the bytecode where PYTHONDONTWRITEBYTECODE is set).
	$(BIN)/python -m compileall -q src
	@tmp=$${TEST_TMP:-$$(mktemp -d /tmp/ff-XXXXXX)}; \
	echo "test files: $$tmp"; \
	FOUNDRY_FLEET_REQUIRE_ZFS=$$([ "$$(id -u)" = 0 ] && echo 1) $(BIN)/python -m pytest \
		$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) --basetemp $$tmp; \
	status=$$?; \
	if [ $$status = 0 ]; then rm -rf $$tmp 2>/dev/null || true; else echo "test files kept: $$tmp"; fi; \
	exit $$status

# The second lane: the scenarios of vm/guest/scenarios in a Debian bookworm VM (systemd, cgroup v2,
# OpenZFS), each reported as a test here. The image is cached outside the checkout
# ($$FOUNDRY_FLEET_VM_CACHE, default /var/cache/foundry-fleet/vm) and rebuilt when what it is made of
# changes. VM_SELECT picks scenarios (pytest arguments for the guest, e.g. VM_SELECT="-k zfs"); with
# FOUNDRY_FLEET_FORBID_SKIPS=1 (CI) a scenario left out fails the run.
test-vm: vm-system-deps $(VENV)/.test-deps
	FOUNDRY_FLEET_VM_SELECT="$(VM_SELECT)" $(BIN)/python -m pytest vm -o timeout=1800 -p no:cacheprovider \
		-p tests.support.forbid_skips

bench: system-deps $(VENV)/.test-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
