#!/usr/bin/env bash
# Installs the Debian packages drctl's tests and lab need, once per machine.
set -euo pipefail
# openssh-server: the SSH forge of the push test; libssl-dev + pkg-config: libgit2's HTTPS/SSH transports.
pkgs=(etcd-server etcd-client protobuf-compiler pdns-server pdns-backend-sqlite3 bind9 bind9-dnsutils sqlite3 git openssh-server openssh-client libssl-dev pkg-config)
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
