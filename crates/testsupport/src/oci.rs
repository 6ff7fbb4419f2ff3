//! The OCI archive hack/build-image.sh writes (`make image`): where it is, and its one tag.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where hack/build-image.sh keeps the image and the binaries it packs: `$DRCTL_CACHE/image`.
pub fn image_dir() -> PathBuf {
    std::env::var_os("DRCTL_CACHE").map_or_else(|| PathBuf::from("/var/cache/drctl"), PathBuf::from).join("image")
}

/// The archive `make image` built: `$DRCTL_IMAGE`, else `$DRCTL_CACHE/image/drctl-oci.tar`.
pub fn built_image() -> PathBuf {
    let archive = std::env::var_os("DRCTL_IMAGE").map_or_else(|| image_dir().join("drctl-oci.tar"), PathBuf::from);
    assert!(archive.is_file(), "{} does not exist: run `make image` (or set DRCTL_IMAGE)", archive.display());
    archive
}

/// The archive's index.json.
pub fn index(archive: &Path) -> serde_json::Value {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg("./index.json").output().expect("run tar");
    assert!(out.status.success(), "tar -xOf {} ./index.json: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("index.json is JSON")
}

/// The tag of the archive's one image (`org.opencontainers.image.ref.name`: VERSION-gCOMMIT).
pub fn tag(archive: &Path) -> String {
    let index = index(archive);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image in {}: {index}", archive.display());
    manifests[0]["annotations"]["org.opencontainers.image.ref.name"].as_str().expect("ref.name annotation").to_string()
}
