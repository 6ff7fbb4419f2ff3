//! The bad input catalog: every `tests/data/bad/NN-name.yaml` is a malformed DRTopology, and
//! `NN-name.expected` holds, word for word, what a user sees for it from `drctl validate` and from
//! the apiserver (`kubectl apply` against the CRD of `crds/drtopology.yaml`). Where the CRD cannot
//! reject a document (semantic-only checks) the expectation shows the apiserver accepting it;
//! `drctl validate` (and so the controller's Valid=False) must still reject every one.
//!
//! After an intended change of a message, rewrite the expectations with
//! `DRCTL_BLESS=1 cargo test --test bad_inputs` and review the diff.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Global;

const BAD_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bad");
const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/drtopology.yaml");

fn catalog() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(BAD_DIR)
        .expect("read tests/data/bad")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What a user sees, run from the catalog's directory so file names print short.
struct Seen {
    validate_exit: Option<i32>,
    validate: String,
    apply_exit: Option<i32>,
    apply: String,
}

impl Seen {
    fn render(&self, file: &str) -> String {
        format!(
            "# drctl validate {file} (exit {})\n{}# kubectl apply -f {file} (exit {})\n{}",
            self.validate_exit.unwrap_or(-1),
            self.validate,
            self.apply_exit.unwrap_or(-1),
            self.apply
        )
    }

    fn apiserver_accepted(&self) -> bool {
        self.apply_exit == Some(0)
    }
}

fn try_one(g: &Global, path: &Path) -> Seen {
    let file = path.file_name().expect("file name").to_string_lossy().into_owned();
    let v = support::drctl().current_dir(BAD_DIR).args(["validate", &file]).output().expect("run drctl validate");
    let a = Command::new(support::kubectl())
        .current_dir(BAD_DIR)
        .arg(format!("--kubeconfig={}", g.api.kubeconfig.display()))
        .args(["apply", "-f", &file])
        .output()
        .expect("run kubectl apply");
    let seen = Seen { validate_exit: v.status.code(), validate: output_text(&v), apply_exit: a.status.code(), apply: output_text(&a) };
    if seen.apiserver_accepted() {
        // Leave the next case a clean apiserver.
        g.api.kubectl_ok(&["delete", "-f", path.to_str().expect("utf-8 path")]);
    }
    seen
}

#[test]
fn every_bad_input_is_rejected_with_the_recorded_message() {
    let files = catalog();
    assert!(files.len() >= 30, "the catalog holds {} inputs; it promises at least 30", files.len());
    let g = Global::start("global-a");
    g.api.kubectl_ok(&["apply", "-f", CRD]);
    g.api.wait_crd("drtopologies.drctl.io");

    let bless = std::env::var_os("DRCTL_BLESS").is_some();
    let (mut mismatches, mut accepted_by_validate, mut rejected_by_apiserver) = (Vec::new(), Vec::new(), 0);
    for path in &files {
        let file = path.file_name().expect("file name").to_string_lossy().into_owned();
        let seen = try_one(&g, path);
        if seen.validate_exit != Some(1) {
            accepted_by_validate.push(format!("{file}: exit {:?}\n{}", seen.validate_exit, seen.validate));
        }
        if !seen.apiserver_accepted() {
            rejected_by_apiserver += 1;
        }
        let actual = seen.render(&file);
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).expect("write expectation");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing; create it with DRCTL_BLESS=1", expected_path.display()));
        if expected != actual {
            mismatches.push(format!("--- {}\n{expected}+++ actual\n{actual}", expected_path.display()));
        }
    }
    // A bad input accepted by drctl validate is a validation gap, whatever the expectations say.
    assert!(accepted_by_validate.is_empty(), "drctl validate accepted bad inputs:\n{}", accepted_by_validate.join("\n"));
    assert!(mismatches.is_empty(), "{} of {} expectations differ:\n{}", mismatches.len(), files.len(), mismatches.join("\n"));
    eprintln!(
        "bad inputs: {} tried; drctl validate rejected {}; the apiserver rejected {} and accepted {} (semantic-only)",
        files.len(),
        files.len(),
        rejected_by_apiserver,
        files.len() - rejected_by_apiserver
    );
}

/// The controller's Valid condition comes from the same `validate` code: every catalog entry
/// that parses as YAML yields at least one field error there too, with a field path.
#[test]
fn library_validation_names_a_field_for_every_bad_input() {
    for path in catalog() {
        let text = std::fs::read_to_string(&path).expect("read");
        match drctl::validate::validate_text(&text) {
            Err(e) => assert!(e.line > 0, "{}: a syntax error without a line: {e}", path.display()),
            Ok(reports) => {
                let errors: Vec<_> = reports.iter().flat_map(|r| &r.errors).collect();
                assert!(!errors.is_empty(), "{}: no error", path.display());
                assert!(errors.iter().all(|e| !e.path.is_empty()), "{}: an error without a path: {errors:?}", path.display());
            }
        }
    }
}
