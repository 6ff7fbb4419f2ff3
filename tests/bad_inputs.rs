//! The bad input catalog: every `tests/data/bad/NN-name.yaml` is a malformed DRTopology, and
//! `NN-name.expected` holds, word for word, what a user sees for it from `drctl validate` and from
//! the apiserver (`kubectl apply` against the CRD of `crds/drtopology.yaml`).
//!
//! Parity: `drctl validate` must reject every input, and the apiserver must reject it too unless
//! the input is listed in [`INTENTIONAL_EXTRAS`], each with the reason validate is stricter. An
//! input validate accepts, an apiserver acceptance not in the table, or a table entry the
//! apiserver now rejects (a stale reason) fails the test.
//!
//! After an intended change of a message, rewrite the expectations with
//! `DRCTL_BLESS=1 cargo test --test bad_inputs` and review the diff.

use drctl_testsupport as support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Global;

const BAD_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bad");
const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/drtopology.yaml");

/// Inputs the apiserver admits and `drctl validate` refuses on purpose, with why.
const INTENTIONAL_EXTRAS: &[(&str, &str)] = &[
    ("21-apiserver-no-host", "a URL without a host; the CRD only checks the scheme, validate parses the URL"),
    ("30-hook-duplicate-names", "hook names must be unique so Events and status name one hook; the CRD does not index hooks by name"),
    ("35-restart-selector-blank", "a blank selector would restart everything in the namespace; the CRD only requires a non-empty string"),
    ("36-restart-duplicate-names", "restart names must be unique for status; the CRD does not index restarts by name"),
    ("38-powerdns-zone-mismatch", "the zone must contain the platform domain; a relation between two fields, refused where the message can name both"),
    ("39-resolver-hostname", "a resolver is an address (ip or ip:port); parsing an address is not expressible as a CRD pattern worth maintaining"),
    ("42-exclude-resource-three-parts", "an exclusion names `resource` or `group/resource`; validate parses it, the CRD only refuses wildcards and namespaces"),
    ("47-workload-cluster-duplicate", "each workload cluster once, so a restart is not run twice; the CRD does not index workload clusters by name"),
    ("g19-restart-selector-syntax", "a label selector is parsed by validate (kubectl's grammar); CEL has no selector parser, so the apiserver would only fail it in Restart, after DNS moved"),
    ("g20-restart-selector-bad-key", "as g19: the selector's key prefix is not a DNS subdomain"),
    ("p01-duplicate-primary-key", "kubectl keeps the last of duplicate keys without a word; which primary did the author mean?"),
    ("p03-auto-repair-yes", "YAML 1.1 trap: kubectl reads yes as true, YAML 1.2 tools (and reviewers) as a string; validate asks for true/false"),
    ("p17-powerdns-zone-root", "the root zone holds every name but is never the zone to update; semantic, like 38"),
    ("p18-rfc2136-zone-root", "as p17, for RFC 2136"),
    ("p20-duplicate-vip-key", "as p01, for a cluster's vip"),
    ("p23-ttl-octal", "YAML 1.1 trap: kubectl stores ttl 030 as 24 (octal), YAML 1.2 tools show 30"),
    ("p26-fence-enabled-n", "YAML 1.1 trap: kubectl reads n as false and turns the fence off; YAML 1.2 tools read the string n"),
    ("p30-hook-url-no-host", "as 21, for a hook's webhook URL"),
];

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

/// The apiserver lists several errors as `* ` lines in no fixed order (Go map iteration);
/// sorted, an expectation records them once.
fn sorted_bullets(text: &str) -> String {
    let (mut out, mut bullets) = (String::new(), Vec::new());
    for line in text.split_inclusive('\n') {
        if line.starts_with("* ") {
            bullets.push(line);
            continue;
        }
        bullets.sort_unstable();
        out.extend(bullets.drain(..));
        out.push_str(line);
    }
    bullets.sort_unstable();
    out.extend(bullets);
    out
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
    let seen = Seen { validate_exit: v.status.code(), validate: output_text(&v), apply_exit: a.status.code(), apply: sorted_bullets(&output_text(&a)) };
    if seen.apiserver_accepted() {
        // Leave the next case a clean apiserver.
        g.api.kubectl_ok(&["delete", "-f", path.to_str().expect("utf-8 path")]);
    }
    seen
}

#[test]
fn every_bad_input_is_rejected_with_the_recorded_message() {
    let files = catalog();
    assert!(files.len() >= 100, "the catalog holds {} inputs; it promises at least 100", files.len());
    let g = Global::start("global-a");
    g.api.kubectl_ok(&["apply", "-f", CRD]);
    g.api.wait_crd("drtopologies.drctl.io");

    let bless = std::env::var_os("DRCTL_BLESS").is_some();
    let (mut mismatches, mut accepted_by_validate, mut rejected_by_apiserver) = (Vec::new(), Vec::new(), 0);
    let mut disagreements = Vec::new();
    for path in &files {
        let file = path.file_name().expect("file name").to_string_lossy().into_owned();
        let seen = try_one(&g, path);
        if seen.validate_exit != Some(1) {
            accepted_by_validate.push(format!("{file}: exit {:?}\n{}", seen.validate_exit, seen.validate));
        }
        if !seen.apiserver_accepted() {
            rejected_by_apiserver += 1;
        }
        let stem = file.trim_end_matches(".yaml");
        let extra = INTENTIONAL_EXTRAS.iter().any(|(c, _)| *c == stem);
        match (seen.apiserver_accepted(), extra) {
            (true, false) => {
                disagreements.push(format!("{file}: the apiserver admits it; make the CRD refuse it or list it in INTENTIONAL_EXTRAS with a reason"))
            }
            (false, true) => disagreements.push(format!("{file}: listed in INTENTIONAL_EXTRAS but the apiserver rejects it now; remove the entry")),
            _ => {}
        }
        let actual = seen.render(&file);
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).expect("write expectation");
            continue;
        }
        let expected =
            std::fs::read_to_string(&expected_path).unwrap_or_else(|_| panic!("{} is missing; create it with DRCTL_BLESS=1", expected_path.display()));
        if expected != actual {
            mismatches.push(format!("--- {}\n{expected}+++ actual\n{actual}", expected_path.display()));
        }
    }
    // A bad input accepted by drctl validate is a validation gap, whatever the expectations say.
    assert!(accepted_by_validate.is_empty(), "drctl validate accepted bad inputs:\n{}", accepted_by_validate.join("\n"));
    let unknown: Vec<&str> = INTENTIONAL_EXTRAS.iter().map(|(c, _)| *c).filter(|c| !files.iter().any(|f| f.ends_with(format!("{c}.yaml")))).collect();
    assert!(unknown.is_empty(), "INTENTIONAL_EXTRAS names inputs not in the catalog: {unknown:?}");
    assert!(disagreements.is_empty(), "drctl validate and the apiserver disagree:\n{}", disagreements.join("\n"));
    assert!(mismatches.is_empty(), "{} of {} expectations differ:\n{}", mismatches.len(), files.len(), mismatches.join("\n"));
    eprintln!(
        "bad inputs: {} tried; drctl validate rejected {}; the apiserver rejected {} and accepted {} (all intentional extras)",
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
