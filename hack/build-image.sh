#!/usr/bin/env bash
# Builds drctl's OCI image with umoci: no container daemon, no base image. The image holds the
# stripped release binary at /drctl, exactly the shared libraries ldd names, CA certificates
# (webhooks, DNS APIs and forges over HTTPS verify servers with them), and /etc/passwd with the non-root user
# 65532 it runs as. Writes an OCI archive (a tar of an OCI layout, tag = the crate version):
#   bash hack/build-image.sh /var/cache/drctl/image/drctl-oci.tar
# The release build is cached in $CARGO_TARGET_DIR: a second run does not compile. DRCTL_BIN=path
# packs that binary instead of building (tests/image.rs packs the one `make image` built).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: build-image.sh OUT.tar}
command -v umoci >/dev/null || { echo "umoci is not installed (make deps)" >&2; exit 1; }
: "${CARGO_TARGET_DIR:=/var/cache/drctl/target}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
if [ -z "${DRCTL_BIN:-}" ]; then
  # The controller only reads Git history: no push transports, so no OpenSSL or libssh2. Only the
  # drctl package: the lab and the test bed are other crates of the workspace.
  cargo build --release -p drctl --bin drctl --no-default-features >&2
fi
bin=${DRCTL_BIN:-$CARGO_TARGET_DIR/release/drctl}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
img="$work/oci:$version"
umoci init --layout "$work/oci"
umoci new --image "$img"
umoci unpack --image "$img" "$work/bundle" >/dev/null
root=$work/bundle/rootfs

install -m 0755 "$bin" "$root/drctl"
# The loader and each library at the path ldd resolved, symlinks followed.
for lib in $(ldd "$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
  cp -L --parents "$lib" "$root/"
done
mkdir -p "$root/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
# /etc/hosts before DNS, as glibc does by default elsewhere.
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
install -d -m 1777 "$root/tmp"
install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"

umoci repack --image "$img" "$work/bundle"
umoci config --image "$img" \
  --config.user=65532:65532 \
  --config.entrypoint=/drctl \
  --clear=config.cmd \
  --config.workingdir=/home/nonroot \
  --config.env=HOME=/home/nonroot \
  --config.env=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label=org.opencontainers.image.title=drctl \
  --config.label=org.opencontainers.image.version="$version" \
  --config.label=org.opencontainers.image.licenses=Apache-2.0 \
  --history.created_by="hack/build-image.sh"
umoci gc --layout "$work/oci"

mkdir -p "$(dirname "$out")"
tar -C "$work/oci" --sort=name --owner=0 --group=0 --numeric-owner -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out: $(du -k "$out" | cut -f1) KiB (tag $version; binary $(du -k "$bin" | cut -f1) KiB)" >&2
