#!/usr/bin/env bash
# Installs the Debian packages drctl needs, once per machine (apt-get update only when one is
# missing):
#   bash hack/install-deps.sh          everything: the build, the tests and the lab (make deps)
#   bash hack/install-deps.sh --image  only what `make image` needs (the release build, the image
#                                      and its SBOM): no test server on a build host
set -euo pipefail
# What the release build of the controller and hack/build-image.sh use (`make image`):
# build-essential: cc and ar for ring, libgit2 and zlib's build scripts;
# protobuf-compiler + libprotobuf-dev: etcd-client's build script runs protoc and needs its
#   well-known types (google/protobuf/*.proto), which only libprotobuf-dev ships;
# pkg-config + zlib1g-dev: libgit2 links Debian's zlib (libz.so.1 in the image, patched by Debian's
#   security updates; without them libz-sys compiles its own copy into the binary);
# ca-certificates: the image's trust store (and cargo's downloads); git: the image's tag and revision;
# umoci: builds the OCI image without a daemon or base image; jq: adds the image's Debian packages to the SBOM.
image_pkgs=(build-essential protobuf-compiler libprotobuf-dev pkg-config zlib1g-dev ca-certificates git umoci jq)
# The tests and the lab besides: prometheus: its promtool and server test the alerts;
# openssh-server: the SSH forge of the push test; libssl-dev: libgit2's HTTPS/SSH transports
#   (the default features of the debug build);
# etcd is not listed: Debian ships 3.4 (end of life); hack/build-etcd.sh builds 3.6 from its Go modules;
# redis-server: each lab global's Argo CD keeps its cache there;
# containerd + runc + containernetworking-plugins + iptables: the real node tests/pod.rs runs the controller's Pod on
#   (a kubelet built by hack/build-kube.sh), runc also the PR check's container (tests/ci_job.rs);
#   busybox-static + skopeo: its pause image and the image import, no registry;
# golang-go is not listed: Go comes
#   with the machine (the Go builds in hack/ need it, and check for it).
test_pkgs=(pdns-server pdns-backend-sqlite3 bind9 bind9-dnsutils sqlite3 openssh-server openssh-client
  libssl-dev redis-server curl prometheus containerd runc containernetworking-plugins busybox-static iptables skopeo)
case "${1:-}" in
  --image) pkgs=("${image_pkgs[@]}") ;;
  "") pkgs=("${image_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: install-deps.sh [--image]" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
