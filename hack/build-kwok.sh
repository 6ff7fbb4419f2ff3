#!/usr/bin/env bash
# Builds kwok (fake kubelets: nodes that report Ready and pods that become Running) from its Go
# module with `go install`, no prebuilt binaries, and caches it by version under $DRCTL_CACHE.
# Prints the path of the kwok binary on its last stdout line.
set -euo pipefail
version="${KWOK_VERSION:-v0.8.0}"
cache="${DRCTL_CACHE:-/var/cache/drctl}"
out="$cache/kwok-$version"
if [ -x "$out/kwok" ]; then echo "$out/kwok"; exit 0; fi
command -v go >/dev/null || { echo "go is required to build kwok $version" >&2; exit 1; }
mkdir -p "$out"
echo "building kwok $version into $out (a few minutes on 2 cores; cached afterwards) ..." >&2
GOBIN="$out/.bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$version"
mv "$out/.bin/kwok" "$out/kwok"
rmdir "$out/.bin"
echo "$out/kwok"
