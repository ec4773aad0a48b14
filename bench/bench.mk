# Benchmarks: the sluice-bench load client and the `make bench` suite.
# Included by the top-level Makefile; uses its CC, CFLAGS, LDFLAGS, LDLIBS, B
# and BIN. bench/run.sh owns the peers, the stack and the report.

BENCH_SRC := $(wildcard bench/*.c)
BENCH_OBJ := $(patsubst bench/%.c,$(B)/obj/bench/%.o,$(BENCH_SRC))

.PHONY: bench-bin bench-check bench bench-full bench-60k

bench-bin: $(BIN)/sluice-bench

$(B)/obj/bench/%.o: bench/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Ibench -c -o $@ $<

# Only libsluice's status strings are needed; link the one object so the
# client builds even while the tiers are mid-edit.
$(BIN)/sluice-bench: $(BENCH_OBJ) $(B)/obj/common/sl_status.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The client's own unit checks (framing, histogram, JWT, parsing).
bench-check: $(BIN)/sluice-bench
	$(BIN)/sluice-bench --selftest

# The short suite (under 10 minutes): every scenario, peers side by side.
bench: all bench-bin
	bench/run.sh --suite short --bin $(BIN)

bench-full: all bench-bin
	bench/run.sh --suite full --bin $(BIN)

bench-60k: all bench-bin
	bench/run.sh --suite 60k --bin $(BIN)
