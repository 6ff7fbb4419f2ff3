# Build caches live outside the work tree so every clone on this machine shares them.
DRCTL_CACHE ?= /var/cache/drctl
export DRCTL_CACHE
export CARGO_TARGET_DIR ?= $(DRCTL_CACHE)/target
KUBE_VERSION ?= v1.34.4
export KUBE_VERSION
DRCTL := $(CARGO_TARGET_DIR)/debug/drctl
# Cargo would reuse another clone's workspace binaries from the shared target dir when this
# clone's files are older (hack/claim-target.sh says why): every make run claims it first.
_ := $(shell CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) bash hack/claim-target.sh)

.PHONY: deps image-deps etcd kube argocd kwok gitea released nextest lab-platform platform build crds argocd-cm image fmt-check lint lint-tool test model-check demo demo-down bench bench-scale bench-leader etcd-matrix faults soak nemesis

# Debian packages the build, the tests and the lab need: etcd, etcdctl, PowerDNS, BIND, redis,
# protoc with its well-known types, OpenSSH, OpenSSL headers; containerd, runc, CNI plugins,
# busybox-static, iptables and skopeo for tests/pod.rs's real node.
deps:
	bash hack/install-deps.sh

# Only what `make image` needs (the release build, umoci, jq, git): no test server on a build host.
image-deps:
	bash hack/install-deps.sh --image

# Built from Go modules (never downloaded prebuilt), cached by version in $(DRCTL_CACHE):
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kubelet (tests/pod.rs's
# real node); Argo CD with the kustomize it pins; kwok; Gitea (the forge tests/forge.rs opens
# pull requests on).
kube:
	bash hack/build-kube.sh >/dev/null
# etcd, etcdctl and etcdutl (ETCD_VERSION, default the newest 3.6 served; 3.5 and 3.7 build too).
etcd:
	bash hack/build-etcd.sh >/dev/null
argocd:
	bash hack/build-argocd.sh >/dev/null
kwok:
	bash hack/build-kwok.sh >/dev/null
gitea:
	bash hack/build-gitea.sh >/dev/null
# The last released controller (hack/released-commit), a debug build from this clone's own
# history in the shared target dir, cached by sha in $(DRCTL_CACHE)/released/: tests/upgrade.rs
# runs a pair mixed across it and HEAD.
released:
	bash hack/build-released.sh >/dev/null
# What the lab runs; the tests also open pull requests on Gitea.
lab-platform: kube argocd kwok etcd
platform: lab-platform gitea

# Every package of the workspace: drctl, drctl-testbed, drctl-lab (`drctl lab` runs the
# drctl-lab binary cargo puts next to drctl).
build:
	cargo build --workspace --all-targets

crds: build
	$(DRCTL) crd > crds/drtopology.yaml
	cp crds/drtopology.yaml gitops/deploy/base/crd.yaml

# Inline gitops/health/health.lua into the argocd-cm patch (tests/health.rs fails when they differ).
argocd-cm:
	{ sed '/^  resource.customizations.health.drctl.io_DRTopology: |$$/q' gitops/argocd/argocd-cm-patch.yaml; \
	  sed 's/^\(..*\)$$/    \1/' gitops/health/health.lua; } > gitops/argocd/argocd-cm-patch.yaml.new
	mv gitops/argocd/argocd-cm-patch.yaml.new gitops/argocd/argocd-cm-patch.yaml

# drctl's OCI image, built with umoci (no daemon, no base image) from the cached release build
# (`make test` builds its own from the dev build),
# tagged VERSION-gCOMMIT (-dirty for uncommitted changes), its CycloneDX SBOM beside it
# (drctl-oci.cdx.json); push it with skopeo (README, "Deploy from the image"). Kept out of the
# work tree.
IMAGE ?= $(DRCTL_CACHE)/image/drctl-oci.tar
image: image-deps
	bash hack/build-image.sh $(IMAGE)

# Formatting (rustfmt.toml) and clippy with warnings as errors, over every crate and target.
fmt-check:
	cargo fmt --all --check
lint: fmt-check
	cargo clippy --workspace --all-targets -- -D warnings

# The test runner: cargo-nextest, built from crates.io once per machine (hack/build-nextest.sh).
# It runs tests of different binaries side by side, slowest first (.config/nextest.toml).
NEXTEST_VERSION ?= 0.9.148
export NEXTEST_VERSION
NEXTEST := $(DRCTL_CACHE)/tools/cargo-nextest-$(NEXTEST_VERSION)/bin/cargo-nextest nextest
nextest:
	bash hack/build-nextest.sh >/dev/null

# `make test` lints while it builds: clippy-driver wraps rustc for the workspace's own crates (as
# `cargo clippy` does, CLIPPY_ARGS carrying its `-D warnings`), but in the build the tests run, so
# the dependencies compile once; `cargo clippy` compiles them again in check mode (5 min 53 s of a
# cold CI run). Every cargo command of the run needs the same wrapper, or cargo rebuilds the
# workspace's crates without it.
CLIPPY_BUILD = RUSTC_WORKSPACE_WRAPPER="$(CLIPPY_DRIVER)" CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
CLIPPY_DRIVER = $(shell command -v clippy-driver)
# First, not after an hour of builds: rustup's clippy-driver proxy is there even without the
# clippy component, and only answers with it.
lint-tool:
	@$(CLIPPY_DRIVER) -V >/dev/null || { echo "clippy-driver does not run: rustup component add clippy" >&2; exit 1; }

# Every test of every package. One build of every target first: the lab's tests run `drctl lab`
# (cargo builds another package's binaries only when asked), and one build with the tests'
# dev-dependencies compiles each dependency with one set of features (`--bins` alone compiled
# tokio, hyper, kube and the crates above them a second time). The released controller builds
# after it, from the dependencies it compiled (hack/build-released.sh).
# The image it builds and tests packs the dev profile's drctl (hack/build-image.sh says why),
# tagged -dev, in an archive of its own; `make image` packs the release build.
test: export IMAGE_PROFILE = dev
test: IMAGE = $(DRCTL_CACHE)/image/drctl-oci-dev.tar
test: export DRCTL_IMAGE = $(IMAGE)
test: lint-tool deps platform image fmt-check nextest
	$(CLIPPY_BUILD) cargo build --workspace --all-targets
	$(MAKE) released
	$(CLIPPY_BUILD) $(NEXTEST) run --workspace --no-fail-fast
	$(CLIPPY_BUILD) cargo test --workspace --doc
	$(CLIPPY_BUILD) $(MAKE) etcd-matrix

# The pair tests that kill or restart etcd members under a pair (a failover with members down,
# the primary's etcd client CA rotated under it, its leader killed mid-FinalSync), alone, and
# beside them the other supported etcd versions (README, "Supported etcd versions"): the mirror,
# the check and etcd's own faults (three mTLS members behind a load balancer) on each
# (hack/etcd-matrix.sh says why they share the time). The whole suite runs on the default, the
# newest 3.6.
ETCD_MATRIX ?= v3.5.36 v3.7.4
etcd-matrix: nextest
	NEXTEST="$(NEXTEST)" bash hack/etcd-matrix.sh $(ETCD_MATRIX)

# The model check of the decision core (tests/model_check.rs) deeper than CI runs it, both
# finalSyncPolicy values, in a release build (depth 10: 370k states, about 95 s per policy; each
# level about 2.2 times the one before). Runs the exhaustive test even while it is ignored.
MODEL_DEPTH ?= 11
model-check:
	MODEL_DEPTH=$(MODEL_DEPTH) MODEL_POLICY=both cargo test --release --test model_check -- --nocapture --include-ignored decision_core

# The local DR lab (drctl lab): two whole globals (control plane, kwok nodes, their own Argo CD),
# PowerDNS and a Git repo on loopback; a pull request flips spec.primary and the runbook runs.
# The lab keeps running after.
LAB_DIR ?= $(CURDIR)/lab
demo: deps lab-platform build
	@$(DRCTL) lab down --dir $(LAB_DIR) >/dev/null
	$(DRCTL) lab up --dir $(LAB_DIR)
	$(DRCTL) lab flip --dir $(LAB_DIR)
	$(DRCTL) lab status --dir $(LAB_DIR)
	@echo
	@echo "The lab is still running. Next: $(DRCTL) lab disaster --dir $(LAB_DIR)"
	@echo "Stop it with: make demo-down"

demo-down:
	$(DRCTL) lab down --dir $(LAB_DIR)

# The mirror benchmark (not a test): drctl vs etcdctl make-mirror vs the destination's own
# batched-put rate, lag, check and RSS on 100k keys. Paste its output into BENCHMARKS.md.
# Each side's etcd is MEMBERS members with client certificates (1: one plain-HTTP member).
MEMBERS ?= 3
bench: deps etcd
	cargo build --release -p drctl --bin drctl --example mirror_bench
	$(CARGO_TARGET_DIR)/release/examples/mirror_bench --drctl $(CARGO_TARGET_DIR)/release/drctl --members $(MEMBERS)

# The scale benchmark (not a test): N keys (default 1M × 1 KiB) — copy vs the snapshot route and
# the destination's ceiling, check vs the range-read floor, the primary's latency under a check,
# lag at the highest sustained write rate, peak RSS. Takes several minutes; BENCHMARKS.md "Scale".
N ?= 1000000
VALUE_BYTES ?= 1024
bench-scale: deps etcd
	cargo build --release -p drctl --bin drctl --example scale_bench
	$(CARGO_TARGET_DIR)/release/examples/scale_bench --drctl $(CARGO_TARGET_DIR)/release/drctl --keys $(N) --value-bytes $(VALUE_BYTES) --members $(MEMBERS)

# The primary's leader during a check (not a test): put p99 at the leader alone, during a check
# reading the leader, during one reading the followers, beside a thread burning one core (the
# leader's CPU and its wait for a CPU in each); a 3-member etcd of LEADER_KEYS keys.
# Then what StopSync's raise of the new primary's revision costs (revisions per second).
LEADER_KEYS ?= 300000
bench-leader: deps etcd
	cargo build --release -p drctl --example leader_bench
	$(CARGO_TARGET_DIR)/release/examples/leader_bench --keys $(LEADER_KEYS)

# The fault matrix alone, with its FAULT lines (RELIABILITY.md records them).
faults: deps platform
	cargo test --test faults -- --nocapture --test-threads=2

# Issue 18's nemesis: SEEDS random schedules of partitions, one-sided/reverted flips and
# controller kills on two whole globals, one `NEMESIS | seed ...` line each (CI runs seeds 1, 2).
SEEDS ?= 20
nemesis: deps platform
	DRCTL_NEMESIS_SEEDS=$$(seq -s, 1 $(SEEDS)) cargo test --test nemesis -- --nocapture

# Not in CI: a DR pair under 1,000 writes/s with deletes and a failover in the middle, for
# DRCTL_SOAK_SECS (default 600); prints max lag, memory growth and the final check.
soak: deps platform
	cargo test --test soak soak_long -- --ignored --nocapture
