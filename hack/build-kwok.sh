#!/usr/bin/env bash
# Builds kwok (fake kubelets: nodes that report Ready and pods that become Running) from its Go
# module with `go install`, no prebuilt binaries, and caches it by version under $DRCTL_CACHE,
# next to `stages.yaml`: the node and pod lifecycle Stages kwok's own "fast" preset uses (node
# initialize + heartbeat with lease, pod ready/complete/delete), copied from the module source.
# Prints the path of the kwok binary on its last stdout line.
set -euo pipefail
version="${KWOK_VERSION:-v0.8.0}"
cache="${DRCTL_CACHE:-/var/cache/drctl}"
out="$cache/kwok-$version"
if [ -x "$out/kwok" ] && [ -s "$out/stages.yaml" ]; then echo "$out/kwok"; exit 0; fi
command -v go >/dev/null || { echo "go is required to build kwok $version" >&2; exit 1; }
mkdir -p "$out"
if [ ! -x "$out/kwok" ]; then
  echo "building kwok $version into $out (a few minutes on 2 cores; cached afterwards) ..." >&2
  GOBIN="$out/.bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$version"
  mv "$out/.bin/kwok" "$out/kwok"
  rmdir "$out/.bin"
fi
src=$(go mod download -json "sigs.k8s.io/kwok@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$src/kustomize/stage" ] || { echo "no kustomize/stage in sigs.k8s.io/kwok@$version" >&2; exit 1; }
stages="$src/kustomize/stage"
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  echo "---"; cat "$stages/$f"
done > "$out/stages.yaml.tmp"
mv "$out/stages.yaml.tmp" "$out/stages.yaml"
echo "$out/kwok"
