#!/usr/bin/env bash
# Builds the controller of the last released commit (hack/released-commit) from this clone's own
# git history into $DRCTL_CACHE/released/<sha>/drctl, once per machine: tests/upgrade.rs runs a
# mixed pair of it and HEAD. A debug build of `-p drctl --bin drctl` from a temporary copy of that
# commit's tree, in the shared target dir ($CARGO_TARGET_DIR) so that the dependencies the tests'
# build compiled serve it too: only drctl itself compiles (under a minute after `make test`'s
# build; 3 min 15 s of a cold CI run in a target dir of its own). For that the copy builds with
# this clone's profiles (the released Cargo.toml's are replaced; its dependencies and code are
# not), and with its examples: they bring in the dev-dependencies, whose features cargo unifies
# into a few low-level crates (bitflags, lock_api, fastrand), so without them tokio, hyper, kube
# and every crate above those compiled again under other hashes. One setting no other build uses
# (drctl's codegen-units) gives the released drctl hashes of its own, so its artifacts never
# replace this clone's (hack/claim-target.sh says why that would matter); the binary it leaves at
# $CARGO_TARGET_DIR/debug/drctl is copied out at once, and cargo links this clone's back there on
# its next build.
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
grep -q '^\[profile' "$root/Cargo.toml" || { echo "$root/Cargo.toml has no [profile] section to build the released drctl with" >&2; exit 1; }
sed -i '/^\[profile/,$d' "$work/src/Cargo.toml"
{ sed -n '/^\[profile/,$p' "$root/Cargo.toml"; printf '\n[profile.dev.package.drctl]\ncodegen-units = 255\n'; } >> "$work/src/Cargo.toml"
target="${CARGO_TARGET_DIR:-$cache/target}"
start=$SECONDS
# No RUSTC_WORKSPACE_WRAPPER: `make test` lints HEAD, not the released commit.
(cd "$work/src" && env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS CARGO_TARGET_DIR="$target" CARGO_INCREMENTAL=0 \
  cargo build --locked -p drctl --bin drctl --examples >&2)
mkdir -p "$out"
cp "$target/debug/drctl" "$out/drctl.tmp"
mv "$out/drctl.tmp" "$out/drctl"
echo "built the released drctl $sha in $((SECONDS - start)) s" >&2
echo "$out/drctl"
