#!/usr/bin/env bash
# Every clone on this machine shares one cargo target dir, so dependencies build once. Cargo
# judges a workspace crate fresh by its sources' mtimes against its last build, and that build's
# fingerprint does not name the clone it came from: in a clone whose files are older than another
# clone's last build, cargo would run that clone's binaries (its code, and the paths its tests
# bake in with env!("CARGO_MANIFEST_DIR")). When the last build here came from another clone,
# touch this clone's tracked files so cargo rebuilds the workspace from them.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?set by the Makefile}"
stamp="$CARGO_TARGET_DIR/.built-from"
here=$(pwd -P)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$here" ]; then
  git ls-files -z | xargs -0 touch -c --
  mkdir -p "$CARGO_TARGET_DIR"
  echo "$here" >"$stamp"
fi
