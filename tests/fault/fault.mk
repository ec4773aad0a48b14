# Fault scenarios (issue 6), included by the top-level Makefile.
#
#   make fault-ci   the CI-sized run of all seven scenarios: prints the table
#                   of counts, fails unless lost = duplicated = unended = 0
#   make soak       the longer, larger run; the table also goes to
#                   bench/results/soak-<timestamp>.md
#
# The scenarios (fault_load.c, fault_scen.c) are built into $(B)/libfault.a,
# linked by the runner $(B)/tests/fault_runner and by the Check binary
# tests/integ/test_fault_ci.c (one test per scenario, run by `make test`).
# FAULT_ARGS passes extra runner arguments, e.g. FAULT_ARGS=gateway-kill.

FAULT_SRC    := tests/fault/fault_load.c tests/fault/fault_scen.c
LIBFAULT     := $(B)/libfault.a
FAULT_RUNNER := $(B)/tests/fault_runner

$(LIBFAULT): $(call obj,$(FAULT_SRC))
$(B)/obj/tests/fault/%.o: CFLAGS += $(CHECK_CFLAGS) -Itests/harness

$(FAULT_RUNNER): $(B)/obj/tests/fault/fault_main.o $(LIBFAULT) $(LIBHARN) $(LIBSLUICE)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)

tests: $(FAULT_RUNNER)

# The Check binary needs the scenarios ahead of the libraries they use, so
# the archive goes in whole through LDFLAGS (it also stays a prerequisite,
# for rebuilds; its second mention on the command line adds nothing).
ifneq ($(wildcard tests/integ/test_fault_ci.c),)
$(B)/tests/test_fault_ci: $(LIBFAULT)
$(B)/tests/test_fault_ci: LDFLAGS += -Wl,--whole-archive $(LIBFAULT) -Wl,--no-whole-archive
$(B)/obj/tests/integ/test_fault_ci.o: CFLAGS += -Itests/fault
endif

.PHONY: fault-ci soak
fault-ci: all $(FAULT_RUNNER)
	SLUICE_BIN_DIR=$(BIN) $(FAULT_RUNNER) --ci $(FAULT_ARGS)

soak: all $(FAULT_RUNNER)
	@mkdir -p bench/results
	SLUICE_BIN_DIR=$(BIN) $(FAULT_RUNNER) --soak \
	    --out bench/results/soak-$$(date -u +%Y%m%dT%H%M%SZ).md $(FAULT_ARGS)
