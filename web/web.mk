# Web client and demo page (web/): a make fragment included by the top-level
# Makefile. Nothing is built; `make web-test` installs what the tests need
# (npm packages from web/package-lock.json, Debian's chromium) and runs the
# node --test suites: the client's logic, the client against the real stack
# (bin/ must hold the binaries: run `make` first), and the browser test.

WEB_DIR        := web
WEB_NODE_STAMP := $(WEB_DIR)/node_modules/.package-lock.json
WEB_CHROMIUM   ?= /usr/bin/chromium

.PHONY: web-test web-deps web-test-logic

# npm ci installs exactly the locked versions; it runs again only when the
# lock file changes.
$(WEB_NODE_STAMP): $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	cd $(WEB_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web-deps: $(WEB_NODE_STAMP)
	@command -v node >/dev/null || { echo "web: node (>= 20) is required" >&2; exit 1; }
	@[ -x $(WEB_CHROMIUM) ] || scripts/deps.sh chromium

# The client's own logic only (fake gateway): no binaries, no browser.
web-test-logic: $(WEB_NODE_STAMP)
	node --test $(WEB_DIR)/test/client-logic.test.mjs

web-test: web-deps
	@for b in sluice-gateway sluice-orchestrator sluice-worker sluicectl; do \
	    [ -x "$${SLUICE_BIN_DIR:-bin}/$$b" ] || { echo "web-test: $${SLUICE_BIN_DIR:-bin}/$$b missing: run make first" >&2; exit 1; }; \
	done
	mkdir -p tests/artifacts/web
	SLUICE_CHROMIUM=$(WEB_CHROMIUM) node --test --test-concurrency=1 $(WEB_DIR)/test/*.test.mjs
