#!/usr/bin/env bash
# Builds cargo-nextest (the test runner `make test` uses) from crates.io into
# $DRCTL_CACHE/tools/cargo-nextest-<version>, once per machine; never a prebuilt binary.
# Prints the path of the binary on its last stdout line.
set -euo pipefail
version="${NEXTEST_VERSION:-0.9.148}"
root="${DRCTL_CACHE:-/var/cache/drctl}/tools/cargo-nextest-$version"
if [ ! -x "$root/bin/cargo-nextest" ]; then
  echo "building cargo-nextest $version into $root (a few minutes on 2 cores; cached afterwards) ..." >&2
  # Its own target dir (a temporary one): the workspace's is keyed to drctl's dependencies.
  # A debug build: the runner spends its time waiting on tests (the optimised build took 4 min
  # 20 s of the cold CI of 12-06). Without the default features: no self-update (rustls with
  # aws-lc-sys's C build, ureq, zip) and no USDT probes, 364 crates instead of 425, the runner
  # the same: 183 s cold on 12-07, where the default features took 352 s.
  env -u CARGO_TARGET_DIR cargo install --debug --no-default-features --locked --quiet --root "$root" cargo-nextest --version "$version" >&2
fi
echo "$root/bin/cargo-nextest"
