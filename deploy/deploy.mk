# Deployment checks, included by the top-level Makefile.
#
#   make deploy-check   offline validation of Dockerfile, docker-compose.yml,
#                       deploy/k8s overlays, deploy/nats configs and
#                       permissions, alerts and dashboard (deploy/check.sh)
#   make deploy-tools   installs the validators only
#
# deploy-check reads `$(BIN)/sluice-<tier> --help` when the binaries are
# built (run `make` first to get the per-tier variable check); it never
# builds or starts them.

# permcheck follows the build variant (build/rel or build/san, where
# SANITIZE=1 runs it under ASan+UBSan).
DEPLOY_PERMCHECK := $(B)/deploy/permcheck

.PHONY: deploy-tools deploy-check

deploy-tools:
	@deploy/tools.sh

# permcheck links only cnats: it must build even while the tiers do not.
$(DEPLOY_PERMCHECK): deploy/nats/permcheck.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(shell pkg-config --libs libnats) -lpthread

deploy-check: deploy-tools $(DEPLOY_PERMCHECK)
	deploy/check.sh --bin $(BIN) --permcheck $(DEPLOY_PERMCHECK)
