//! The OCI image `make image` builds (hack/build-image.sh): unpacked with umoci, drctl runs from
//! the image's own root filesystem (chroot, as the image's user), the image runs as 65532 with
//! /drctl as entrypoint, holds nothing but the binary, its libraries and a few /etc files, and
//! stays small. Skipped, saying why, only where this machine cannot build or unpack images.

use std::path::Path;
use std::process::Command;

/// The archive must stay under this; the binary alone was 188 MB before the release profile
/// stripped it.
const MAX_ARCHIVE_BYTES: u64 = 30 << 20;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Why this machine cannot build and run the image, if it cannot.
fn cannot_build_images() -> Option<String> {
    if Command::new("umoci").arg("--version").output().is_err() {
        return Some("umoci is not installed (make deps installs it)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("chroot into the unpacked image needs root".into());
    }
    None
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("read dir") {
            let p = e.expect("entry").path();
            out.push(p.strip_prefix(root).expect("under root").display().to_string());
            if p.is_dir() && !p.is_symlink() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn image_runs_drctl_from_its_own_rootfs_as_a_non_root_user() {
    if let Some(why) = cannot_build_images() {
        println!("SKIPPED: cannot build images here: {why}");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("drctl-oci.tar");
    // The recipe itself, not a leftover archive. It packs the release binary `make image` built
    // (make test runs it first): cargo run from inside a test recompiles drctl (the test's
    // environment differs), which takes minutes on this machine. Without one, the recipe builds it.
    let mut build = Command::new("bash");
    build.arg(repo.join("hack/build-image.sh")).arg(&archive).current_dir(repo);
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), std::path::PathBuf::from);
    let release = target.join("release/drctl");
    if release.is_file() {
        build.env("DRCTL_BIN", &release);
    }
    run(&mut build);
    let size = std::fs::metadata(&archive).expect("archive").len();
    println!("image archive: {:.1} MB", size as f64 / 1e6);
    assert!(size < MAX_ARCHIVE_BYTES, "the image archive is {size} bytes, over {MAX_ARCHIVE_BYTES}");

    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    run(Command::new("tar").arg("-C").arg(&layout).arg("-xf").arg(&archive));
    let bundle = dir.path().join("bundle");
    let version = env!("CARGO_PKG_VERSION");
    run(Command::new("umoci").arg("unpack").arg("--image").arg(format!("{}:{version}", layout.display())).arg(&bundle));

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).expect("config.json")).expect("runtime config");
    let process = &config["process"];
    assert_eq!(process["user"]["uid"], 65532, "{process}");
    assert_eq!(process["user"]["gid"], 65532, "{process}");
    assert_eq!(process["args"], serde_json::json!(["/drctl"]), "entrypoint /drctl and no default arguments");

    let rootfs = bundle.join("rootfs");
    let files = tree(&rootfs);
    let libs: Vec<&String> = files.iter().filter(|f| f.contains(".so")).collect();
    let others: Vec<&String> = files.iter().filter(|f| !f.contains(".so") && !rootfs.join(f).is_dir()).collect();
    assert_eq!(
        others,
        ["drctl", "etc/group", "etc/nsswitch.conf", "etc/passwd", "etc/ssl/certs/ca-certificates.crt"],
        "only drctl, its libraries and these files"
    );
    // The loader and libc; no OpenSSL: the image's drctl is built without git2's push
    // transports (--no-default-features), the controller only reads Git history.
    let names: Vec<&str> = libs.iter().map(|l| l.rsplit('/').next().unwrap_or_default()).collect();
    for want in ["ld-linux-x86-64.so.2", "libc.so.6"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for unwanted in ["libssl.so.3", "libcrypto.so.3", "libssh2.so.1"] {
        assert!(!names.contains(&unwanted), "{unwanted} in the controller image: {names:?}");
    }
    assert!(libs.len() <= 6, "more libraries than drctl links: {libs:?}");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");
    let binary = std::fs::metadata(rootfs.join("drctl")).expect("drctl").len();
    println!("drctl binary in the image: {:.1} MB", binary as f64 / 1e6);
    let file = run(Command::new("file").arg(rootfs.join("drctl")));
    assert!(file.contains("stripped") && !file.contains("not stripped"), "{file}");

    // From the image's own root filesystem, as its user: nothing from the host is used.
    let chroot = |args: &[&str]| {
        run(Command::new("chroot").arg("--userspec=65532:65532").arg(&rootfs).arg("/drctl").args(args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    };
    let v = chroot(&["--version"]);
    assert_eq!(v.trim(), format!("drctl {version}"));
    let help = chroot(&["controller", "--help"]);
    assert!(help.contains("--cluster-name") && help.contains("--listen"), "{help}");
    println!("chroot /drctl --version: {}", v.trim());
}
