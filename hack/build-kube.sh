#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kubelet (the real node of tests/pod.rs) from the k8s.io/kubernetes Go module (no prebuilt binaries)
# and caches them by version under $DRCTL_CACHE (default /var/cache/drctl), so a machine builds
# them once. `go install k8s.io/kubernetes/cmd/kube-apiserver@vX` cannot work: k8s.io/kubernetes
# replaces its staging modules with ./staging paths, so a throwaway module pins each staging
# module to its published v0.Y.Z twin instead.
# Prints the directory holding the binaries on stdout.
set -euo pipefail
version="${KUBE_VERSION:-v1.34.4}"
cache="${DRCTL_CACHE:-/var/cache/drctl}"
out="$cache/kube-$version"
want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
missing=()
for b in "${want[@]}"; do [ -x "$out/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "go is required to build ${missing[*]} $version" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
minor=${version#v1.}; minor=${minor%%.*}
patch=${version##*.}
staging="v0.$minor.$patch"
cd "$work"
go mod init drctl.local/kube-build >/dev/null 2>&1
modfile=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -n "$modfile" ] || { echo "cannot download k8s.io/kubernetes@$version" >&2; exit 1; }
# Every `k8s.io/x => ./staging/src/k8s.io/x` line of that version's go.mod names a staging module.
mods=$(sed -n 's#^\s*\(k8s.io/[^ ]*\) => ./staging/src/.*#\1#p' "$modfile" | sort -u)
go mod edit -require="k8s.io/kubernetes@$version"
for m in $mods; do go mod edit -replace="$m=$m@$staging"; done
cat > main.go <<'GO'
package main

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
	_ "k8s.io/kubectl/pkg/cmd"
)

func main() {}
GO
echo "resolving modules for Kubernetes $version ..." >&2
go mod tidy >&2
ld="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
for b in "${missing[@]}"; do
  echo "building $b $version into $out (minutes on 2 cores; cached afterwards) ..." >&2
  go build -trimpath -ldflags "$ld" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$out/$b.tmp" "$out/$b"
done
echo "$out"
