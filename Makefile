# SPDX-License-Identifier: GPL-2.0
#
# dm-qcow2: out-of-tree build, install and test.
#
#   make                    build dm-qcow2.ko for the running kernel
#   make KVER=<version>     ... for another installed kernel (or KDIR=<build dir>)
#   make install            install into /lib/modules/<kver>/updates and run depmod
#   make check              build for both test kernels with W=1 and sparse, run the
#                           userspace tests and the whole selftest suite in VMs
#   make check-debug        the selftests on a KASAN/lockdep/kmemleak kernel built from
#                           linux-source-6.1 (cached; DEBUG_TESTS="test_x.sh ...")
#   make demo               the README's demo, in a test VM
#   make fuzz               fuzz the format parser with libFuzzer (FUZZ_SECONDS=20 per target)
#   make deb                Debian packages dm-qcow2-dkms and qcow2setup in build/deb
#   make bench              dm-qcow2 vs dm-linear, qemu-nbd and VDUSE in a test VM (QUICK=1: short)
#   make clean

SRCDIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

KVER ?= $(shell uname -r)
KDIR ?= /lib/modules/$(KVER)/build
BUILD := $(SRCDIR)/build/$(KVER)

# Kernels `make check` builds for and boots: the newest installed 6.1 and 6.12.
CHECK_KVERS ?= $(shell $(SRCDIR)/tools/testing/kvers.sh)

MODULE_SRCS := Kbuild $(shell cd $(SRCDIR) && find drivers include -name '*.[ch]' -not -path '*/probes/*')

.PHONY: all modules deps install clean check check-build check-unit check-vm check-debug demo help bench qcow2setup deb fuzz

all: modules

help:
	@sed -n '3,17p' $(SRCDIR)/Makefile | sed 's/^# \{0,1\}//'

deps:
	@$(SRCDIR)/tools/setup-deps.sh

modules: deps
	@test -d $(KDIR) || { echo "No kernel build tree at $(KDIR): install linux-headers-$(KVER) or pass KVER=/KDIR=" >&2; exit 1; }
	@$(SRCDIR)/scripts/shadow-tree.sh $(SRCDIR) $(BUILD) $(KDIR)
	$(MAKE) -C $(KDIR) M=$(BUILD) modules

install: modules qcow2setup
	$(MAKE) -C $(KDIR) M=$(BUILD) INSTALL_MOD_DIR=updates modules_install
	depmod -a $(KVER)
	$(MAKE) -C $(SRCDIR)/tools/qcow2setup install

qcow2setup: deps
	$(MAKE) -C $(SRCDIR)/tools/qcow2setup

# Static checks: W=1 and sparse for every check kernel; any warning fails.
check-build: deps
	@$(SRCDIR)/tools/testing/check-build.sh $(CHECK_KVERS)

check-unit: deps
	@$(MAKE) -s -C $(SRCDIR)/tools/testing/format-test test

check-vm: deps qcow2setup
	@$(MAKE) -s -C $(SRCDIR)/tools/testing/log-writes
	@$(SRCDIR)/tools/testing/check-vm.sh $(CHECK_KVERS)

check: deps
	@$(SRCDIR)/tools/testing/check.sh $(CHECK_KVERS)

# Not in `make check` or CI: builds a debug kernel (about half an hour, once).
check-debug: deps
	@$(SRCDIR)/tools/testing/check-debug.sh

demo: deps
	@$(SRCDIR)/tools/testing/demo.sh

FUZZ_SECONDS ?= 20
fuzz: deps
	@$(SRCDIR)/tools/testing/fuzz/run-fuzz.sh $(FUZZ_SECONDS)

deb: deps
	@$(SRCDIR)/tools/packaging/build-debs.sh $(SRCDIR)/build/deb

# dm-qcow2 vs dm-linear, qemu-nbd and VDUSE in a test VM (QUICK=1: CI smoke)
bench: deps
	@$(SRCDIR)/tools/bench/bench.sh

clean:
	rm -rf $(SRCDIR)/build
	-@$(MAKE) -s -C $(SRCDIR)/tools/testing/format-test clean 2>/dev/null
	-@$(MAKE) -s -C $(SRCDIR)/tools/qcow2setup clean 2>/dev/null
	-@$(MAKE) -s -C $(SRCDIR)/tools/testing/log-writes clean 2>/dev/null
	-@$(MAKE) -s -C $(SRCDIR)/tools/testing/fuzz clean 2>/dev/null
