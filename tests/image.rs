//! The OCI image `make image` builds (hack/build-image.sh): unpacked with umoci, drctl runs from
//! the image's own root filesystem (chroot, as the image's user), the image runs as 65532 with
//! /drctl as entrypoint, holds nothing but the binary, its libraries and a few /etc files, and
//! stays small; it is tagged and labelled with the crate version and its commit, and its SBOM
//! beside it names every crate drctl depends on and the Debian packages of its libraries.
//! Skipped, saying why, only where this machine cannot build or unpack images.

use drctl_testsupport::oci;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The archive must stay under this; the binary alone was 188 MB before the release profile
/// stripped it.
const MAX_ARCHIVE_BYTES: u64 = 30 << 20;

/// Runs `cmd`, which must succeed; its stdout and its stderr.
fn output(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}{stderr}");
    (stdout, stderr)
}

fn run(cmd: &mut Command) -> String {
    let (stdout, stderr) = output(cmd);
    stdout + &stderr
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
    // The recipe itself, not a leftover archive. It packs the binary `make image` built (make
    // test runs it first, IMAGE_PROFILE=dev): cargo run from inside a test recompiles drctl (the
    // test's environment differs), which takes minutes on this machine. Without a release one,
    // the recipe builds it.
    let mut build = Command::new("bash");
    build.arg(repo.join("hack/build-image.sh")).arg(&archive).current_dir(repo);
    if profile() == "dev" {
        let packed = oci::image_dir().join("drctl-dev");
        assert!(
            packed.is_file(),
            "{} does not exist: run `make image IMAGE_PROFILE=dev` first (a dev build here would replace the drctl the other tests run)",
            packed.display()
        );
        build.env("DRCTL_BIN", &packed);
    } else {
        let release = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), std::path::PathBuf::from).join("release/drctl");
        if release.is_file() {
            build.env("DRCTL_BIN", &release);
        }
    }
    let (printed, _) = output(&mut build);
    let size = std::fs::metadata(&archive).expect("archive").len();
    println!("image archive: {:.1} MB", size as f64 / 1e6);
    assert!(size < MAX_ARCHIVE_BYTES, "the image archive is {size} bytes, over {MAX_ARCHIVE_BYTES}");

    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    run(Command::new("tar").arg("-C").arg(&layout).arg("-xf").arg(&archive));
    let bundle = dir.path().join("bundle");
    let version = env!("CARGO_PKG_VERSION");
    let tag = oci::tag(&archive);
    check_tag_and_labels(repo, &archive, &layout, &tag, &printed);
    run(Command::new("umoci").arg("unpack").arg("--image").arg(format!("{}:{tag}", layout.display())).arg(&bundle));

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

    check_sbom(repo, &dir.path().join("drctl-oci.cdx.json"), &libs.iter().map(|l| format!("/{l}")).collect::<Vec<_>>());
}

fn git(repo: &Path, args: &[&str]) -> String {
    run(Command::new("git").arg("-C").arg(repo).args(args)).trim().to_string()
}

/// The profile hack/build-image.sh builds: IMAGE_PROFILE, release unless set.
fn profile() -> String {
    std::env::var("IMAGE_PROFILE").unwrap_or_else(|_| "release".to_string())
}

/// The tag is VERSION-gCOMMIT (then -dev for a dev build, -dirty when tracked files differ from
/// the commit), printed by the recipe; the labels carry it, the whole commit and the commit's time.
fn check_tag_and_labels(repo: &Path, archive: &Path, layout: &Path, tag: &str, printed: &str) {
    let revision = git(repo, &["rev-parse", "HEAD"]);
    let dirty = !git(repo, &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let dev = if profile() == "dev" { "-dev" } else { "" };
    let want = format!("{}-g{}{dev}{}", env!("CARGO_PKG_VERSION"), &revision[..12], if dirty { "-dirty" } else { "" });
    assert_eq!(tag, want, "the index's ref.name");
    assert_eq!(printed.trim(), want, "the recipe prints the tag, alone on stdout");
    let blob = |digest: &str| -> Value {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob")).expect("JSON blob")
    };
    let index = oci::index(archive);
    let manifest = blob(index["manifests"][0]["digest"].as_str().expect("manifest digest"));
    let config = blob(manifest["config"]["digest"].as_str().expect("config digest"));
    let labels = &config["config"]["Labels"];
    let created = git(repo, &["show", "-s", "--date=format-local:%Y-%m-%dT%H:%M:%SZ", "--format=%cd", "HEAD"]);
    assert_eq!(labels["org.opencontainers.image.version"], want.as_str(), "{labels}");
    assert_eq!(labels["org.opencontainers.image.revision"], revision.as_str(), "{labels}");
    assert_eq!(labels["org.opencontainers.image.created"], created.as_str(), "the commit's time: {labels}");
    assert_eq!(config["created"], created.as_str(), "the image config's created is the commit's time too");
    println!("tag {tag}, revision {revision}, created {created}");
}

/// The SBOM is CycloneDX 1.5 JSON naming drctl, every direct dependency of drctl's Cargo.toml at
/// the version Cargo.lock resolves, none of the crates the image's build leaves out (git2's push
/// transports), and the Debian package of each library the image carries.
fn check_sbom(repo: &Path, path: &Path, libs: &[String]) {
    let sbom: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("the SBOM beside the archive")).expect("the SBOM is JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    assert!(sbom["serialNumber"].as_str().is_some_and(|s| s.starts_with("urn:uuid:")), "serialNumber: {}", sbom["serialNumber"]);
    assert_eq!(sbom["metadata"]["component"]["name"], "drctl");
    let properties = sbom["metadata"]["properties"].as_array().expect("metadata.properties");
    let property = |name: &str| properties.iter().find(|p| p["name"] == name).and_then(|p| p["value"].as_str()).map(str::to_string);
    assert_eq!(property("drctl:cargo:profile"), Some(profile()), "the SBOM names the profile: {properties:?}");
    let components = sbom["components"].as_array().expect("components");
    for c in components {
        let ok = ["type", "name", "version", "purl", "bom-ref"].iter().all(|k| c[k].as_str().is_some_and(|v| !v.is_empty()));
        assert!(ok, "a component without type, name, version, purl or bom-ref: {c}");
    }
    let crates: Vec<&Value> = components.iter().filter(|c| c["purl"].as_str().is_some_and(|p| p.starts_with("pkg:cargo/"))).collect();
    let version_of = |name: &str| crates.iter().find(|c| c["name"] == name).and_then(|c| c["version"].as_str());

    // Cargo's own reading of Cargo.toml and Cargo.lock, resolved as the image's build resolves
    // them: --no-default-features, for the host (other platforms' crates are not downloaded).
    let (rustc, _) = output(Command::new("rustc").arg("-vV"));
    let host = rustc.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host");
    let (out, _) = output(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["metadata", "--format-version", "1", "--locked", "--offline", "--no-default-features", "--filter-platform", host, "--manifest-path"])
            .arg(repo.join("Cargo.toml")),
    );
    let meta: Value = serde_json::from_str(&out).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let drctl = packages.iter().find(|p| p["name"] == "drctl").expect("drctl in cargo metadata");
    let node = meta["resolve"]["nodes"].as_array().expect("resolve").iter().find(|n| n["id"] == drctl["id"]).expect("drctl's resolve node");
    let resolved = |name: &str| -> Option<String> {
        let id = node["deps"].as_array()?.iter().find(|d| packages.iter().any(|p| p["id"] == d["pkg"] && p["name"] == name))?["pkg"].clone();
        packages.iter().find(|p| p["id"] == id)?["version"].as_str().map(str::to_string)
    };
    let direct: Vec<&str> = drctl["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["kind"].is_null() && d["optional"] == false)
        .map(|d| d["name"].as_str().expect("dependency name"))
        .collect();
    assert!(direct.len() > 20, "drctl's direct dependencies: {direct:?}");
    for name in &direct {
        let want = resolved(name).unwrap_or_else(|| panic!("{name} is not resolved for drctl"));
        assert_eq!(version_of(name), Some(want.as_str()), "{name} {want} in the SBOM");
        let licensed = crates.iter().find(|c| c["name"] == *name).is_some_and(|c| c["licenses"].as_array().is_some_and(|l| !l.is_empty()));
        assert!(licensed, "{name} has no license in the SBOM");
    }
    for left_out in ["openssl-sys", "libssh2-sys", "mlua", "tempfile"] {
        assert!(version_of(left_out).is_none(), "{left_out} is not compiled into the image's drctl but is in its SBOM");
    }

    let debs: Vec<&str> = components
        .iter()
        .filter(|c| c["purl"].as_str().is_some_and(|p| p.starts_with("pkg:deb/debian/")))
        .map(|c| c["name"].as_str().unwrap_or_default())
        .collect();
    for lib in libs {
        // dpkg knows the path the package ships: ldd's, the same under /usr (merged /usr), or
        // the symlink's target.
        let canonical = std::fs::canonicalize(lib).map(|p| p.display().to_string()).unwrap_or_default();
        let owner = [lib.clone(), format!("/usr{lib}"), canonical]
            .iter()
            .find_map(|p| Command::new("dpkg").arg("-S").arg(p).output().ok().filter(|o| o.status.success()))
            .unwrap_or_else(|| panic!("no Debian package holds {lib}"));
        let owner = String::from_utf8_lossy(&owner.stdout);
        let pkg = owner.split(':').next().unwrap_or_default();
        assert!(debs.contains(&pkg), "{lib} comes from {pkg}, not in the SBOM's Debian packages {debs:?}");
    }
    assert!(debs.contains(&"ca-certificates"), "{debs:?}");
    println!("SBOM: {} crates (every one of drctl's {} direct dependencies), Debian packages {debs:?}", crates.len(), direct.len());
}
