//! `drctl lab` is the drctl-lab binary (crates/lab): the controller carries none of the lab.
//! Without that binary, drctl says how to build it. (crates/lab/tests/lab.rs runs the real one.)

use std::process::Command;

#[test]
fn drctl_lab_without_the_drctl_lab_binary_says_how_to_build_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A drctl with no drctl-lab beside it (a hard link: current_exe names the link) or on PATH.
    let drctl = dir.path().join("drctl");
    std::fs::hard_link(env!("CARGO_BIN_EXE_drctl"), &drctl)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_drctl"), &drctl).map(|_| ()))
        .expect("place drctl alone");
    let out = Command::new(&drctl).args(["lab", "up", "--dir"]).arg(dir.path().join("lab")).env("PATH", "").output().expect("run drctl lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "drctl lab succeeded without drctl-lab: {stderr}");
    assert!(stderr.contains("drctl-lab binary"), "names what is missing: {stderr}");
    assert!(stderr.contains("cargo build --workspace --bins"), "says how to build it: {stderr}");
    assert!(!dir.path().join("lab").exists(), "started nothing");
}
