#!/usr/bin/env bash
# Installs the Debian packages drctl's tests and lab need, once per machine.
set -euo pipefail
# protobuf-compiler + libprotobuf-dev: etcd-client's build script runs protoc and needs its
#   well-known types (google/protobuf/*.proto), which only libprotobuf-dev ships;
# umoci: `make image` builds the OCI image without a daemon or base image; prometheus: its promtool and server test the alerts;
# openssh-server: the SSH forge of the push test; libssl-dev + pkg-config: libgit2's HTTPS/SSH transports;
# etcd is not listed: Debian ships 3.4 (end of life); hack/build-etcd.sh builds 3.6 from its Go modules;
# redis-server: each lab global's Argo CD keeps its cache there;
# containerd + runc + containernetworking-plugins + iptables: the real node tests/pod.rs runs the controller's Pod on
#   (a kubelet built by hack/build-kube.sh); busybox-static + skopeo: its pause image and the image import, no registry;
# golang-go is not listed: Go comes
#   with the machine (the Go builds in hack/ need it, and check for it).
pkgs=(protobuf-compiler libprotobuf-dev pdns-server pdns-backend-sqlite3 bind9 bind9-dnsutils
  sqlite3 git openssh-server openssh-client libssl-dev pkg-config redis-server ca-certificates curl build-essential
  umoci prometheus containerd runc containernetworking-plugins busybox-static iptables skopeo)
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
