# Build caches live outside the work tree so every clone on this machine shares them.
DRCTL_CACHE ?= /var/cache/drctl
export DRCTL_CACHE
export CARGO_TARGET_DIR ?= $(DRCTL_CACHE)/target
KUBE_VERSION ?= v1.34.4
export KUBE_VERSION
DRCTL := $(CARGO_TARGET_DIR)/debug/drctl

.PHONY: deps kube build crds argocd-cm test demo faults soak

# Debian packages the tests and the lab run: etcd, etcdctl, PowerDNS, BIND, protoc.
deps:
	bash hack/install-deps.sh

# kube-apiserver and kubectl from the k8s.io/kubernetes Go module, cached by version.
kube:
	bash hack/build-kube.sh >/dev/null

build:
	cargo build --all-targets

crds: build
	$(DRCTL) crd > crds/drtopology.yaml
	cp crds/drtopology.yaml gitops/deploy/base/crd.yaml

# Inline gitops/health/health.lua into the argocd-cm patch (tests/health.rs fails when they differ).
argocd-cm:
	{ sed '/^  resource.customizations.health.drctl.io_DRTopology: |$$/q' gitops/argocd/argocd-cm-patch.yaml; \
	  sed 's/^\(..*\)$$/    \1/' gitops/health/health.lua; } > gitops/argocd/argocd-cm-patch.yaml.new
	mv gitops/argocd/argocd-cm-patch.yaml.new gitops/argocd/argocd-cm-patch.yaml

test: deps kube
	cargo test --no-fail-fast -- --test-threads=2

demo: deps kube build
	bash hack/demo.sh

# The fault matrix alone, with its FAULT lines (RELIABILITY.md records them).
faults: deps kube
	cargo test --test faults -- --nocapture --test-threads=2

# Not in CI: a DR pair under 1,000 writes/s with deletes and a failover in the middle, for
# DRCTL_SOAK_SECS (default 600); prints max lag, memory growth and the final check.
soak: deps kube
	cargo test --test soak soak_long -- --ignored --nocapture
