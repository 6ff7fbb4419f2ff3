#!/usr/bin/env bash
# Builds Argo CD (one multi-call binary: application-controller, repo-server, server, CLI) from
# its Go module, no prebuilt binaries, and caches it by version under $DRCTL_CACHE.
# `go install .../cmd@vX` is refused (argo-cd's go.mod has replace directives), so a throwaway
# module requires argo-cd and copies every replace that points at a published module version; the
# local `gitops-engine => ./gitops-engine` replace is dropped: the published gitops-engine module
# of the same version covers it. Argo CD v3.6 needs Go 1.27 (GOTOOLCHAIN fetches it from the
# module proxy). Also installs the module's git/gpg wrapper scripts, which the repo-server runs,
# and builds the kustomize it pins (hack/tool-versions.sh), which the repo-server runs for a
# kustomization (tests/pod.rs syncs gitops/deploy through it).
# Prints the path of the argocd binary on its last stdout line.
set -euo pipefail
version="${ARGOCD_VERSION:-v3.6.1}"
cache="${DRCTL_CACHE:-/var/cache/drctl}"
out="$cache/argocd-$version"
if [ -x "$out/argocd" ] && [ -x "$out/kustomize" ] && [ -s "$out/manifests/argocd-cm.yaml" ]; then echo "$out/argocd"; exit 0; fi
command -v go >/dev/null || { echo "go is required to build Argo CD $version" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required to read Argo CD's go.mod" >&2; exit 1; }
export GOTOOLCHAIN="${ARGOCD_GOTOOLCHAIN:-go1.27.3}" CGO_ENABLED=0
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init drctl.local/argocd-build >/dev/null 2>&1
mod="github.com/argoproj/argo-cd/v3"
info=$(go mod download -json "$mod@$version")
modfile=$(printf '%s' "$info" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
srcdir=$(printf '%s' "$info" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -n "$modfile" ] && [ -n "$srcdir" ] || { echo "cannot download $mod@$version" >&2; exit 1; }
go mod edit -require="$mod@$version"
# Copy the replaces that name a module version; local-path replaces cannot leave their repo.
go mod edit -json "$modfile" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old, new = r["Old"], r["New"]
    if not new.get("Version"):
        continue
    o = old["Path"] + ("@" + old["Version"] if old.get("Version") else "")
    print("-replace=%s=%s@%s" % (o, new["Path"], new["Version"]))
' > replaces
# gitops-engine is a separate published module at the same version.
xargs -r go mod edit < replaces
go mod edit -require="github.com/argoproj/argo-cd/gitops-engine/v3@$version"
cat > main.go <<'GO'
package main

import _ "github.com/argoproj/argo-cd/v3/cmd"

func main() {}
GO
if [ ! -x "$out/argocd" ]; then
  echo "resolving modules for Argo CD $version ..." >&2
  go mod tidy >&2
  ld="-s -w -X github.com/argoproj/argo-cd/v3/common.version=${version#v} -X github.com/argoproj/argo-cd/v3/common.gitCommit=module"
  echo "building argocd $version into $out (8-10 minutes on 2 cores; cached afterwards) ..." >&2
  go build -trimpath -ldflags "$ld" -o "$out/argocd.tmp" "$mod/cmd"
  mv "$out/argocd.tmp" "$out/argocd"
fi
if [ ! -x "$out/kustomize" ]; then
  kversion=$(sed -n 's/^KUSTOMIZE_VERSION=//p' "$srcdir/hack/tool-versions.sh")
  [ -n "$kversion" ] || { echo "no KUSTOMIZE_VERSION in Argo CD $version's hack/tool-versions.sh" >&2; exit 1; }
  # kustomize's own kube-openapi pseudo-version is not served by the module proxy: use the one
  # Argo CD itself builds with.
  openapi=$(go mod edit -json "$modfile" | python3 -c '
import json, sys
print(next(r["Version"] for r in json.load(sys.stdin)["Require"] if r["Path"] == "k8s.io/kube-openapi"))')
  mkdir "$work/kustomize"
  (
    cd "$work/kustomize"
    go mod init drctl.local/kustomize-build >/dev/null 2>&1
    go mod edit -require="sigs.k8s.io/kustomize/kustomize/v5@v$kversion" -replace="k8s.io/kube-openapi=k8s.io/kube-openapi@$openapi"
    printf 'package main\n\nimport _ "sigs.k8s.io/kustomize/kustomize/v5"\n\nfunc main() {}\n' > main.go
    go mod tidy >&2
    echo "building kustomize v$kversion into $out (about a minute) ..." >&2
    go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=v$kversion" -o "$out/kustomize.tmp" sigs.k8s.io/kustomize/kustomize/v5
  )
  mv "$out/kustomize.tmp" "$out/kustomize"
fi
# What running it outside a cluster needs from the source: the wrapper scripts the repo-server
# execs, the CRDs, and the base config the lab installs (argocd-cm is then patched with ours).
for s in git-verify-wrapper.sh gpg-wrapper.sh; do install -m 0755 "$srcdir/hack/$s" "$out/$s"; done
mkdir -p "$out/manifests.tmp"
cp "$srcdir/manifests/crds/application-crd.yaml" "$srcdir/manifests/crds/appproject-crd.yaml" \
   "$srcdir"/manifests/base/config/argocd-{cm,cmd-params-cm,rbac-cm,secret}.yaml "$out/manifests.tmp/"
rm -rf "$out/manifests"; mv "$out/manifests.tmp" "$out/manifests"
echo "$out/argocd"
