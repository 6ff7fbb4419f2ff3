# Build caches live outside the work tree so every clone on this machine shares them.
DRCTL_CACHE ?= /var/cache/drctl
export DRCTL_CACHE
export CARGO_TARGET_DIR ?= $(DRCTL_CACHE)/target
KUBE_VERSION ?= v1.34.4
export KUBE_VERSION
DRCTL := $(CARGO_TARGET_DIR)/debug/drctl

.PHONY: deps kube build crds test demo bench

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

test: deps kube
	cargo test --no-fail-fast -- --test-threads=2

demo: deps kube build
	bash hack/demo.sh

# The mirror benchmark (not a test): drctl vs etcdctl make-mirror vs the destination's own
# batched-put rate, lag, check and RSS on 100k keys. Paste its output into BENCHMARKS.md.
bench: deps
	cargo build --release --bin drctl --example mirror_bench
	$(CARGO_TARGET_DIR)/release/examples/mirror_bench --drctl $(CARGO_TARGET_DIR)/release/drctl
