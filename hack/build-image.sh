#!/usr/bin/env bash
# Builds drctl's OCI image with umoci: no container daemon, no base image. The image holds the
# stripped release binary (or dev, below) at /drctl, exactly the shared libraries ldd names, CA
# certificates (webhooks, DNS APIs and forges over HTTPS verify servers with them), and /etc/passwd with the non-root user
# 65532 it runs as. Writes an OCI archive (a tar of an OCI layout) and its CycloneDX SBOM beside it
# (OUT without .tar + .cdx.json), and prints the tag:
#   bash hack/build-image.sh /var/cache/drctl/image/drctl-oci.tar
# The tag is the crate version and the commit, VERSION-gCOMMIT (12 hex digits), then -dev for a
# dev build and -dirty when tracked files differ from the commit: it is the index's
# org.opencontainers.image.ref.name and, with the full commit and the commit's time, the image's version/revision/created labels (the
# commit's time, not the build's, so a rebuild of a commit labels it the same).
# The release build is cached in $CARGO_TARGET_DIR: a second run does not compile. DRCTL_BIN=path
# packs that binary instead of building (tests/image.rs packs the one `make image` built).
# IMAGE_PROFILE=dev (what `make test` sets, with its own OUT) packs the dev profile's build
# instead, from the dependencies the tests' build compiles: the release build is 10-16 min of a
# cold CI run and 4 min of a warm one, and the recipe, the image's files, libraries and SBOM are
# the same. That binary is kept at $DRCTL_CACHE/image/drctl-dev for tests/image.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: build-image.sh OUT.tar}
for tool in umoci jq git; do
  command -v $tool >/dev/null || { echo "$tool is not installed (make image-deps)" >&2; exit 1; }
done
: "${CARGO_TARGET_DIR:=/var/cache/drctl/target}"
: "${DRCTL_CACHE:=/var/cache/drctl}"
export CARGO_TARGET_DIR DRCTL_CACHE
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
revision=$(git rev-parse --verify HEAD 2>/dev/null) || {
  echo "$(pwd) is not a git work tree with a commit: the image's tag and revision label name its commit" >&2
  exit 1
}
created=$(TZ=UTC git show -s --date=format-local:%Y-%m-%dT%H:%M:%SZ --format=%cd "$revision")
profile=${IMAGE_PROFILE:-release}
case $profile in
  release) built=$CARGO_TARGET_DIR/release/drctl; suffix= ;;
  # A dev image never carries a release image's tag.
  dev) built=$DRCTL_CACHE/image/drctl-dev; suffix=-dev ;;
  *) echo "IMAGE_PROFILE=$profile: release (the default) or dev" >&2; exit 1 ;;
esac
tag=$version-g${revision:0:12}$suffix
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  tag=$tag-dirty
fi
if [ -z "${DRCTL_BIN:-}" ]; then
  # The controller only reads Git history: no push transports, so no OpenSSL or libssh2. Only the
  # drctl package: the lab and the test bed are other crates of the workspace.
  if [ "$profile" = release ]; then
    cargo build --release -p drctl --bin drctl --no-default-features >&2
  else
    # With the examples, which bring in the dev-dependencies' features: the dependencies then
    # have the hashes of the tests' build and compile once (libgit2-sys, git2 and drctl differ,
    # and the test bed: this build runs without make test's clippy wrapper). Cargo links this
    # binary to target/debug/drctl, where the tests' (default features) is until their next
    # build: theirs is kept aside and put back, for tests running meanwhile. One such build at a
    # time in this cache.
    mkdir -p "$(dirname "$built")"
    exec 9>"$DRCTL_CACHE/image/.build-image.lock"
    flock 9
    debug_bin=$CARGO_TARGET_DIR/debug/drctl
    kept=$debug_bin.kept-by-build-image
    put_back() { if [ -e "$kept" ]; then mv -f "$kept" "$debug_bin"; else rm -f "$debug_bin"; fi; }
    if [ -e "$debug_bin" ]; then ln -f "$debug_bin" "$kept"; fi
    trap put_back EXIT
    cargo build -p drctl --bin drctl --examples --no-default-features >&2
    copy=$(mktemp "$built.XXXXXX")
    cp "$debug_bin" "$copy"
    trap - EXIT
    put_back
    if ldd "$copy" | grep -Eq 'lib(ssl|crypto|ssh2)\.'; then
      rm -f "$copy"
      echo "$debug_bin links OpenSSL or libssh2 after a build without the push transports: another build replaced it; run again" >&2
      exit 1
    fi
    chmod 0755 "$copy"
    mv "$copy" "$built"
  fi
fi
bin=${DRCTL_BIN:-$built}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
img="$work/oci:$tag"
umoci init --layout "$work/oci"
umoci new --image "$img"
umoci unpack --image "$img" "$work/bundle" >/dev/null
root=$work/bundle/rootfs

install -m 0755 "$bin" "$root/drctl"
# The release profile strips; the dev one keeps line tables.
strip "$root/drctl"
# The Debian package holding the library at path $1. dpkg knows each file by the path its package
# ships, which since the /usr merge may be ldd's path under /usr, or the symlink's target.
deb_of() {
  local p owner
  for p in "$1" "/usr$1" "$(readlink -f "$1")"; do
    owner=$(dpkg -S "$p" 2>/dev/null) && { echo "${owner%%:*}"; return 0; }
  done
  echo "no Debian package holds $1" >&2
  return 1
}
# The loader and each library at the path ldd resolved, symlinks followed; the Debian package of
# each, and of the CA certificates, goes into the SBOM.
debs=(ca-certificates)
for lib in $(ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
  cp -L --parents "$lib" "$root/"
  debs+=("$(deb_of "$lib")")
done
mkdir -p "$root/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
# /etc/hosts before DNS, as glibc does by default elsewhere.
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
install -d -m 1777 "$root/tmp"
install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"

umoci repack --history.created="$created" --image "$img" "$work/bundle"
umoci config --image "$img" \
  --config.user=65532:65532 \
  --config.entrypoint=/drctl \
  --clear=config.cmd \
  --config.workingdir=/home/nonroot \
  --config.env=HOME=/home/nonroot \
  --config.env=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label=org.opencontainers.image.title=drctl \
  --config.label=org.opencontainers.image.version="$tag" \
  --config.label=org.opencontainers.image.revision="$revision" \
  --config.label=org.opencontainers.image.created="$created" \
  --config.label=org.opencontainers.image.licenses=Apache-2.0 \
  --created="$created" \
  --history.created="$created" \
  --history.created_by="hack/build-image.sh"
umoci gc --layout "$work/oci"

# The SBOM (CycloneDX 1.5 JSON): every crate of the release build above, resolved with the same
# features and target, without the build scripts' own dependencies (not linked into the binary),
# with versions, licenses and hashes, by cargo-cyclonedx (built from crates.io once, cached by
# version); then the Debian packages the image copies files from. cargo-cyclonedx writes one
# file per package of the workspace beside its Cargo.toml: keep drctl's, remove the others.
cdx_version=0.5.9
cdx_root=$DRCTL_CACHE/tools/cargo-cyclonedx-$cdx_version
if [ ! -x "$cdx_root/bin/cargo-cyclonedx" ]; then
  # A debug build: it reads cargo metadata once per image.
  env -u CARGO_TARGET_DIR cargo install --debug --locked --quiet --root "$cdx_root" cargo-cyclonedx --version "$cdx_version" >&2
fi
target=$(rustc -vV | sed -n 's/^host: //p')
sbom_name=.drctl-image-sbom-$$
"$cdx_root/bin/cargo-cyclonedx" cyclonedx --quiet --manifest-path Cargo.toml --format json --spec-version 1.5 \
  --no-default-features --no-build-deps --target "$target" --override-filename "$sbom_name" >&2
mv "$sbom_name.json" "$work/cargo.cdx.json"
find crates -maxdepth 2 -name "$sbom_name.json" -delete
distro=$(. /etc/os-release && echo "$ID-$VERSION_ID")
arch=$(dpkg --print-architecture)
for pkg in $(printf '%s\n' "${debs[@]}" | sort -u); do
  dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n' "$pkg"
done | jq -R --arg distro "$distro" 'split("\t") as [$name, $version, $arch] | {
    type: "library", name: $name, version: $version, scope: "required",
    "bom-ref": "pkg:deb/debian/\($name)@\($version)?arch=\($arch)&distro=\($distro)",
    purl: "pkg:deb/debian/\($name)@\($version | @uri)?arch=\($arch)&distro=\($distro)"
  }' | jq -s . > "$work/debs.json"
sbom=${out%.tar}.cdx.json
mkdir -p "$(dirname "$out")"
jq --slurpfile debs "$work/debs.json" --arg created "$created" --arg tag "$tag" --arg revision "$revision" --arg arch "$arch" --arg profile "$profile" '
  .metadata.timestamp = $created
  | .metadata.properties += [
      {name: "drctl:image:tag", value: $tag},
      {name: "drctl:image:revision", value: $revision},
      {name: "drctl:image:architecture", value: $arch},
      {name: "drctl:cargo:features", value: "--no-default-features"},
      {name: "drctl:cargo:profile", value: $profile}]
  | .components += $debs[0]' "$work/cargo.cdx.json" > "$sbom.tmp"
mv "$sbom.tmp" "$sbom"

tar -C "$work/oci" --sort=name --owner=0 --group=0 --numeric-owner -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out: $(du -k "$out" | cut -f1) KiB (binary $(du -k "$root/drctl" | cut -f1) KiB, $profile profile); SBOM $sbom" >&2
echo "$tag"
