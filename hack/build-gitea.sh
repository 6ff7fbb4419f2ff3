#!/usr/bin/env bash
# Builds Gitea (the forge `drctl promote --open-pr` is tested against) from its Go module, no
# prebuilt binaries, and caches it by version under $DRCTL_CACHE.
# The proxy serves it as code.gitea.io/gitea, but its go.mod declares `module gitea.dev`, so it
# cannot be required or `go install`ed by that path: the downloaded module source is built as the
# main module instead, from a writable copy (the module cache is read-only). Its default SQLite
# driver is pure Go (modernc; mattn's needs the sqlite_mattn tag), so CGO_ENABLED=0. Built without
# the bindata tag, Gitea reads options/ (locales, licenses), templates/ and public/ from
# STATIC_ROOT_PATH at run time: they are installed beside the binary. Gitea v1.27 needs Go >= 1.26.4
# (GOTOOLCHAIN fetches it from the module proxy). Prints the path of the gitea binary on its last
# stdout line.
set -euo pipefail
version="${GITEA_VERSION:-v1.27.3}"
cache="${DRCTL_CACHE:-/var/cache/drctl}"
out="$cache/gitea-$version"
if [ -x "$out/gitea" ] && [ -d "$out/options/locale" ]; then echo "$out/gitea"; exit 0; fi
command -v go >/dev/null || { echo "go is required to build Gitea $version" >&2; exit 1; }
export GOTOOLCHAIN="${GITEA_GOTOOLCHAIN:-go1.27.3}" CGO_ENABLED=0
mod="code.gitea.io/gitea"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
info=$(go mod download -json "$mod@$version")
srcdir=$(printf '%s' "$info" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -n "$srcdir" ] || { echo "cannot download $mod@$version" >&2; exit 1; }
cp -a "$srcdir" src && chmod -R u+w src
mkdir -p "$out"
if [ ! -x "$out/gitea" ]; then
  echo "building gitea $version into $out (about 5 CPU-minutes; cached afterwards) ..." >&2
  (cd src && go build -trimpath -ldflags "-s -w -X main.Version=${version#v}" -o "$out/gitea.tmp" .)
  mv "$out/gitea.tmp" "$out/gitea"
fi
# What a non-bindata build reads from STATIC_ROOT_PATH.
for d in options templates public; do
  rm -rf "$out/$d.tmp"; cp -a "src/$d" "$out/$d.tmp"; rm -rf "$out/$d"; mv "$out/$d.tmp" "$out/$d"
done
echo "$out/gitea"
