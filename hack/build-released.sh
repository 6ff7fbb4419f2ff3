#!/usr/bin/env bash
# Builds the controller of the last released commit (hack/released-commit) from this clone's own
# git history into $DRCTL_CACHE/released/<sha>/drctl, once per machine: tests/upgrade.rs runs a
# mixed pair of it and HEAD. A debug build from a temporary copy of that commit's tree, in the
# shared target dir ($CARGO_TARGET_DIR) so that the dependencies the tests' build compiled serve
# it too: only drctl itself compiles (43 s in a cold CI run, after `make test`'s build; 3 min
# 15 s in a target dir of its own). For that the copy:
# - builds with this clone's profiles (the released Cargo.toml's are replaced; its dependencies
#   and code are not);
# - builds its examples too: they bring in the dev-dependencies, whose features cargo unifies
#   into a few low-level crates (bitflags, lock_api, fastrand); without them tokio, hyper, kube
#   and every crate above those compiled again under other hashes;
# - gives its own crates (drctl, drctl-testbed) a setting no other build uses (codegen-units),
#   so their artifacts have hashes of their own and never stand in for this clone's
#   (hack/claim-target.sh says why that would matter), and names its binary drctl-released, so
#   it never replaces $CARGO_TARGET_DIR/debug/drctl, which this clone's tests run (tests/upgrade.rs
#   calls this script while other tests run). Its examples do land in debug/examples/ until this
#   clone's next build of them; no test runs those.
# - takes the current time as its files' mtimes: the released commits all give these crates the
#   same hashes, and with the commit's own (older) times cargo would take another released
#   commit's build for fresh.
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
git -C "$root" archive --format=tar "$sha" | tar -x -m -C "$work/src"
manifest="$work/src/Cargo.toml"
is_profile='/^\[/ { p = ($0 ~ /^\[profile[.\]]/) }'
grep -q '^\[profile' "$root/Cargo.toml" || { echo "$root/Cargo.toml has no [profile] section to build the released drctl with" >&2; exit 1; }
if grep -q '^\[profile\.dev\.package\.\(drctl\|drctl-testbed\)\]' "$root/Cargo.toml"; then
  echo "$root/Cargo.toml sets [profile.dev.package.drctl*]: hack/build-released.sh needs those tables for the released build" >&2; exit 1
fi
# The released tables but its profiles, the binary renamed; then this clone's profiles.
awk "$is_profile"' !p {
    if ($0 ~ /^\[/) bin = ($0 == "[[bin]]")
    if (bin && $0 == "name = \"drctl\"") $0 = "name = \"drctl-released\""
    if ($0 == "default-run = \"drctl\"") $0 = "default-run = \"drctl-released\""
    print }' "$manifest" > "$manifest.new"
awk "$is_profile"' p' "$root/Cargo.toml" >> "$manifest.new"
printf '\n[profile.dev.package.drctl]\ncodegen-units = 255\n\n[profile.dev.package.drctl-testbed]\ncodegen-units = 255\n' >> "$manifest.new"
mv "$manifest.new" "$manifest"
grep -q '^name = "drctl-released"$' "$manifest" || { echo "the released Cargo.toml has no [[bin]] named drctl to rename" >&2; exit 1; }
target="$(realpath -m "${CARGO_TARGET_DIR:-$cache/target}")"
start=$SECONDS
# No RUSTC_WORKSPACE_WRAPPER: `make test` lints HEAD, not the released commit.
(cd "$work/src" && env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS CARGO_TARGET_DIR="$target" CARGO_INCREMENTAL=0 \
  cargo build --locked -p drctl --bin drctl-released --examples >&2)
mkdir -p "$out"
cp "$target/debug/drctl-released" "$out/drctl.tmp"
mv "$out/drctl.tmp" "$out/drctl"
echo "built the released drctl $sha in $((SECONDS - start)) s" >&2
echo "$out/drctl"
