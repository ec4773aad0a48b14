# Fuzzing with libFuzzer (clang, Debian packages clang + libclang-rt-14-dev).
#
#   make fuzz-build    builds build/fuzz/fuzz_<target> (libFuzzer + ASan + UBSan)
#   make fuzz-ci       runs each target FUZZ_CI_SECONDS (20) on a temporary copy of
#                      its seed corpus; fails on any crash, leak, UB, timeout or OOM
#   make fuzz          runs each target FUZZ_SECONDS (300) on build/fuzz/corpus/<target>,
#                      which starts as the seeds and keeps what the runs find
#   make fuzz-corpus   rewrites tests/fuzz/corpus/<target>/ with the seed programs
#                      (each tests/fuzz/fuzz_<target>.c built with -DFUZZ_SEEDS)
#
# FUZZ_TARGETS selects targets (default: all). The project's modules are compiled
# here from source with clang and the fuzzing sanitizers, never taken from the gcc
# archives. Findings are kept in build/fuzz/artifacts/<target>/.

FUZZ_CC         ?= clang
FUZZ_TARGETS    ?= frame jwt resume subject envelope
FUZZ_SECONDS    ?= 300
FUZZ_CI_SECONDS ?= 20
FUZZ_RSS_MB     ?= 2048
FUZZ_TIMEOUT    ?= 10

FZ        := build/fuzz
FZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FZ_PKGS   := libcjson libprotobuf-c openssl
FZ_WARN   := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Wvla
FZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g $(FZ_WARN) $(FZ_SAN) -MMD -MP \
             -Icommon -Igateway -I$(FZ)/gen $(shell pkg-config --cflags $(FZ_PKGS) 2>/dev/null)
FZ_LIBS   := $(shell pkg-config --libs $(FZ_PKGS) 2>/dev/null) -lpthread -lm
FZ_PROTO_C := $(FZ)/gen/sluice.pb-c.c
FZ_PROTO_H := $(FZ)/gen/sluice.pb-c.h

# The modules each target links (sources, compiled for fuzzing below).
FZ_AUTH_SRC        := common/sl_auth.c common/sl_subject.c common/sl_config.c common/sl_log.c \
                      common/sl_status.c common/sl_json.c common/sl_text.c
FZ_SRC_frame       := gateway/gw_protocol.c common/sl_json.c common/sl_subject.c common/sl_text.c \
                      $(FZ_PROTO_C)
FZ_SRC_jwt         := $(FZ_AUTH_SRC)
FZ_SRC_resume      := $(FZ_AUTH_SRC)
FZ_SRC_subject     := common/sl_subject.c
FZ_SRC_envelope    := common/sl_codec.c common/sl_time.c gateway/gw_protocol.c common/sl_json.c \
                      common/sl_subject.c common/sl_text.c $(FZ_PROTO_C)
FZ_MAXLEN_frame    := 8192
FZ_MAXLEN_jwt      := 9000
FZ_MAXLEN_resume   := 1200
FZ_MAXLEN_subject  := 512
FZ_MAXLEN_envelope := 4096

fz_obj = $(patsubst %.c,$(FZ)/obj/%.o,$(1))
FZ_BINS  := $(foreach t,$(FUZZ_TARGETS),$(FZ)/fuzz_$(t))
FZ_SEEDS := $(foreach t,$(FUZZ_TARGETS),$(FZ)/seeds_$(t))

.PHONY: fuzz-build fuzz-ci fuzz fuzz-corpus

fuzz-build: $(FZ_BINS)

# libFuzzer ships in libclang-rt-14-dev, which clang only recommends.
$(FZ)/.probe:
	@mkdir -p $(FZ)
	@printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
	    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
	    'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' \
	    > $(FZ)/probe.c
	@$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -o $(FZ)/probe $(FZ)/probe.c || { \
	    echo "fuzz: '$(FUZZ_CC) -fsanitize=fuzzer' does not link: install clang and" \
	         "libclang-rt-14-dev (make deps)" >&2; exit 1; }
	@touch $@

$(FZ_PROTO_H): proto/sluice.proto
	@mkdir -p $(FZ)/gen
	protoc-c --proto_path=proto --c_out=$(FZ)/gen proto/sluice.proto
$(FZ_PROTO_C): $(FZ_PROTO_H) ;

# Project modules: instrumented for coverage, warnings shown but not fatal
# (they are gcc-clean; clang may differ). The targets themselves use -Werror.
$(FZ)/obj/%.o: %.c $(FZ_PROTO_H) | $(FZ)/.probe
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<
$(FZ)/obj/tests/fuzz/%.o: tests/fuzz/%.c $(FZ_PROTO_H) | $(FZ)/.probe
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FZ_CFLAGS) -Werror -fsanitize=fuzzer-no-link -c -o $@ $<
$(FZ)/seeds-obj/%.o: tests/fuzz/%.c $(FZ_PROTO_H) | $(FZ)/.probe
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FZ_CFLAGS) -Werror -DFUZZ_SEEDS -c -o $@ $<

define FZ_TARGET_RULES
$(FZ)/fuzz_$(1): $(FZ)/obj/tests/fuzz/fuzz_$(1).o $(call fz_obj,$(FZ_SRC_$(1)))
	$(FUZZ_CC) -fsanitize=fuzzer $(FZ_SAN) -o $$@ $$^ $(FZ_LIBS)
$(FZ)/seeds_$(1): $(FZ)/seeds-obj/fuzz_$(1).o $(call fz_obj,$(FZ_SRC_$(1)))
	$(FUZZ_CC) $(FZ_SAN) -o $$@ $$^ $(FZ_LIBS)
endef
$(foreach t,frame jwt resume subject envelope,$(eval $(call FZ_TARGET_RULES,$(t))))

# One target, one line of result. $(1) target, $(2) seconds, $(3) corpus dir,
# $(4) log dir. Appends the target to the shell variable failed when it fails. Expanded once
# by $(call), so a shell $ is written $$ here.
define FZ_RUN_ONE
	mkdir -p $(3) $(FZ)/artifacts/$(1); \
	ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(FZ)/fuzz_$(1) $(3) -max_total_time=$(2) -rss_limit_mb=$(FUZZ_RSS_MB) \
	    -timeout=$(FUZZ_TIMEOUT) -max_len=$(FZ_MAXLEN_$(1)) -print_final_stats=1 \
	    -artifact_prefix=$(FZ)/artifacts/$(1)/ >$(4)/$(1).log 2>&1; rc=$$?; \
	execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(4)/$(1).log); \
	rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $(4)/$(1).log); \
	cov=$$(grep -o 'cov: [0-9]*' $(4)/$(1).log | tail -n 1 | cut -d' ' -f2); \
	if [ $$rc -eq 0 ]; then res=ok; else res="FAILED (exit $$rc)"; failed="$$failed $(1)"; \
	    echo "---- fuzz_$(1) log tail ($(4)/$(1).log) ----"; tail -n 60 $(4)/$(1).log; fi; \
	printf 'fuzz: %-9s %5ss %11s execs %8s/s  cov %5s  %s\n' $(1) $(2) "$${execs:-?}" \
	    "$${rate:-?}" "$${cov:-?}" "$$res";
endef

fuzz-ci: fuzz-build
	@tmp=$$(mktemp -d /tmp/sluice-fuzz.XXXXXX); failed=""; \
	$(foreach t,$(FUZZ_TARGETS),mkdir -p $$tmp/$(t); cp tests/fuzz/corpus/$(t)/* $$tmp/$(t)/; \
	    $(call FZ_RUN_ONE,$(t),$(FUZZ_CI_SECONDS),$$tmp/$(t),$$tmp)) \
	if [ -n "$$failed" ]; then echo "fuzz-ci: FAILED:$$failed (inputs in $(FZ)/artifacts/, logs in $$tmp)"; \
	    exit 1; fi; rm -rf $$tmp; echo "fuzz-ci: all targets clean"

fuzz: fuzz-build
	@mkdir -p $(FZ)/logs; failed=""; \
	$(foreach t,$(FUZZ_TARGETS),mkdir -p $(FZ)/corpus/$(t); cp -n tests/fuzz/corpus/$(t)/* $(FZ)/corpus/$(t)/ 2>/dev/null || :; \
	    $(call FZ_RUN_ONE,$(t),$(FUZZ_SECONDS),$(FZ)/corpus/$(t),$(FZ)/logs)) \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (inputs in $(FZ)/artifacts/)"; exit 1; fi; \
	echo "fuzz: all targets clean (corpus kept in $(FZ)/corpus/)"

fuzz-corpus: $(FZ_SEEDS)
	@$(foreach t,$(FUZZ_TARGETS),rm -rf tests/fuzz/corpus/$(t) && mkdir -p tests/fuzz/corpus/$(t) && \
	    $(FZ)/seeds_$(t) tests/fuzz/corpus/$(t) &&) true
