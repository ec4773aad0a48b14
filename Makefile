# Sluice: one top-level Makefile. `make` builds the release variant into bin/;
# `make SANITIZE=1` builds an ASan+UBSan variant into build/san/bin/.

SANITIZE ?= 0
ifeq ($(SANITIZE),1)
B        := build/san
BIN      := build/san/bin
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1
else
B        := build/rel
BIN      := bin
SANFLAGS :=
OPT      := -O2
endif

CC       ?= cc
PKGS     := libnats libwebsockets libcjson libprotobuf-c libcurl openssl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Wvla -Werror
CFLAGS   := -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) $(SANFLAGS) -MMD -MP \
            -Icommon -I$(B)/gen $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS  := $(SANFLAGS) $(EXTRA_LDFLAGS)
# libev: the gateway's event loop (lws runs on it through Debian's
# libwebsockets-evlib-ev plugin); Debian's libev-dev ships no .pc file.
LDLIBS   := $(PKG_LIBS) -lev -lpthread -lm

PROTO_C  := $(B)/gen/sluice.pb-c.c
PROTO_H  := $(B)/gen/sluice.pb-c.h

COMMON_SRC := $(wildcard common/*.c)
GW_SRC     := $(filter-out gateway/main.c,$(wildcard gateway/*.c))
ORCH_SRC   := $(filter-out orchestrator/main.c,$(wildcard orchestrator/*.c))
WRK_SRC    := $(filter-out worker/main.c,$(wildcard worker/*.c))
HARN_SRC   := $(wildcard tests/harness/*.c)

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

LIBSLUICE := $(B)/libsluice.a
LIBGW     := $(B)/libgw.a
LIBORCH   := $(B)/liborch.a
LIBWRK    := $(B)/libwrk.a
LIBHARN   := $(B)/libharness.a

PROGS := $(BIN)/sluice-gateway $(BIN)/sluice-orchestrator $(BIN)/sluice-worker $(BIN)/sluicectl
UNIT_TESTS  := $(patsubst tests/unit/%.c,$(B)/tests/%,$(wildcard tests/unit/check_*.c))
INTEG_TESTS := $(patsubst tests/integ/%.c,$(B)/tests/%,$(wildcard tests/integ/test_*.c))

.PHONY: all tests test test-unit test-integ run clean format format-check deps bench soak fuzz deploy-check
all: $(PROGS)
tests: $(UNIT_TESTS) $(INTEG_TESTS)

$(PROTO_C) $(PROTO_H): proto/sluice.proto
	@mkdir -p $(B)/gen
	protoc-c --proto_path=proto --c_out=$(B)/gen proto/sluice.proto

# Every object may include the generated header.
$(B)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I$(dir $<) -c -o $@ $<

$(B)/obj/gen/sluice.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIBSLUICE): $(call obj,$(COMMON_SRC)) $(B)/obj/gen/sluice.pb-c.o
$(LIBGW): $(call obj,$(GW_SRC))
$(LIBORCH): $(call obj,$(ORCH_SRC))
$(LIBWRK): $(call obj,$(WRK_SRC))
$(LIBHARN): $(call obj,$(HARN_SRC))
$(B)/%.a:
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BIN)/sluice-gateway: $(B)/obj/gateway/main.o $(LIBGW) $(LIBSLUICE)
$(BIN)/sluice-orchestrator: $(B)/obj/orchestrator/main.o $(LIBORCH) $(LIBSLUICE)
$(BIN)/sluice-worker: $(B)/obj/worker/main.o $(LIBWRK) $(LIBSLUICE)
$(BIN)/sluicectl: $(B)/obj/tools/sluicectl.o $(B)/obj/tools/ctl_api.o $(LIBSLUICE)
$(PROGS):
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Unit tests may reach into any tier's modules (never its main).
$(B)/tests/check_%: $(B)/obj/tests/unit/check_%.o $(LIBGW) $(LIBORCH) $(LIBWRK) $(LIBHARN) $(LIBSLUICE)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)
$(B)/obj/tests/unit/%.o: CFLAGS += $(CHECK_CFLAGS) -Igateway -Iorchestrator -Iworker -Itests/harness

# Integration tests drive the real binaries through the harness.
$(B)/tests/test_%: $(B)/obj/tests/integ/test_%.o $(LIBHARN) $(LIBSLUICE)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)
$(B)/obj/tests/integ/%.o: CFLAGS += $(CHECK_CFLAGS) -Itests/harness
$(B)/obj/tests/harness/%.o: CFLAGS += $(CHECK_CFLAGS)

deps:
	@scripts/deps.sh

# The README's test command: unit and integration suites, normal and sanitizer builds.
test: deps
	$(MAKE) all tests
	$(MAKE) SANITIZE=1 all tests
	$(MAKE) deploy-check
	$(MAKE) web-test
	$(MAKE) bench-check
	$(MAKE) fuzz-ci
	scripts/run-tests.sh build/rel bin build/san build/san/bin

test-unit: all tests
	scripts/run-tests.sh --unit $(B) $(BIN)

test-integ: all tests
	scripts/run-tests.sh --integ $(B) $(BIN)

run: deps
	$(MAKE) all
	scripts/run.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@out=$$(git ls-files '*.c' '*.h' | xargs -r clang-format --dry-run 2>&1); \
	if [ -n "$$out" ]; then echo "$$out" | head -40; echo "format-check: run 'make format'"; exit 1; fi

clean:
	rm -rf build bin

-include $(shell find build -type f -name '*.d' 2>/dev/null)

# Fragments owned by their folders (benchmarks, deployment checks, web client).
-include bench/bench.mk deploy/deploy.mk web/web.mk tests/fuzz/fuzz.mk tests/fault/fault.mk
