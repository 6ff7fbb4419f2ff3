#!/usr/bin/env bash
# Builds the controller of the last released commit (hack/released-commit) from this clone's own
# git history into $DRCTL_CACHE/released/<sha>/drctl, once per machine: tests/upgrade.rs runs a
# mixed pair of it and HEAD. A debug build of `-p drctl --bin drctl` in a temporary worktree
# with its own target dir, which is deleted once the binary is copied out.
# Prints the path of the binary on its last stdout line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
sha="$(grep -v '^#' "$root/hack/released-commit" | tr -d '[:space:]')"
[[ "$sha" =~ ^[0-9a-f]{40}$ ]] || { echo "hack/released-commit must hold one full 40-hex sha, got '$sha'" >&2; exit 1; }
cache="${DRCTL_CACHE:-/var/cache/drctl}"
out="$cache/released/$sha"
if [ -x "$out/drctl" ]; then echo "$out/drctl"; exit 0; fi
git -C "$root" cat-file -e "$sha^{commit}" 2>/dev/null || {
  echo "commit $sha is not in this clone's history: fetch it (git fetch --unshallow) or fix hack/released-commit" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/tmp}/drctl-released.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "building the released drctl $sha into $out (a debug build from cold; cached afterwards) ..." >&2
mkdir "$work/src"
git -C "$root" archive --format=tar "$sha" | tar -x -C "$work/src"
start=$SECONDS
(cd "$work/src" && CARGO_TARGET_DIR="$work/target" CARGO_INCREMENTAL=0 cargo build --locked -p drctl --bin drctl >&2)
mkdir -p "$out"
cp "$work/target/debug/drctl" "$out/drctl.tmp"
mv "$out/drctl.tmp" "$out/drctl"
echo "built the released drctl $sha in $((SECONDS - start)) s" >&2
echo "$out/drctl"
