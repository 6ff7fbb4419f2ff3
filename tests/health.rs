//! `gitops/health/health.lua` on a real Lua 5.1 interpreter set up like Argo CD's sandbox, against
//! the cases of `gitops/health/health_test.yaml` in Argo CD's own test format.

use drctl_testsupport as support;

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use support::health::{health, health_dir, sandbox, script};

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: Expected,
    input_path: String,
}

#[derive(Deserialize)]
struct Expected {
    status: String,
    message: String,
}

fn cases() -> Vec<HealthTest> {
    let text = std::fs::read_to_string(health_dir().join("health_test.yaml")).expect("read health_test.yaml");
    serde_saphyr::from_str::<HealthTests>(&text).expect("parse health_test.yaml").tests
}

#[test]
fn every_case_of_health_test_yaml() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let obj = yaml_file(&health_dir().join(&case.input_path));
        let want = (case.health_status.status.clone(), case.health_status.message.clone());
        match health(&obj) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{}: got {got:?}, want {want:?}", case.input_path)),
            Err(e) => failures.push(format!("{}: script error: {e}", case.input_path)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    for status in ["Healthy", "Progressing", "Degraded"] {
        assert!(cases.iter().any(|c| c.health_status.status == status), "no case for {status}");
    }
    // Every file in testdata is used, so none is silently untested.
    let used: Vec<&str> = cases.iter().map(|c| c.input_path.as_str()).collect();
    for entry in std::fs::read_dir(health_dir().join("testdata")).expect("list testdata") {
        let name = format!("testdata/{}", entry.expect("entry").file_name().to_string_lossy());
        assert!(used.contains(&name.as_str()), "{name} is not in health_test.yaml");
    }
}

#[test]
fn testdata_are_full_valid_drtopologies() {
    // The schema check of `drctl validate` covers status too, so a misspelt status field (one
    // health.lua would silently never see) fails here.
    for case in cases() {
        let path = health_dir().join(&case.input_path);
        let text = std::fs::read_to_string(&path).expect("read testdata");
        let reports = drctl::validate::validate_text(&text).expect("yaml");
        assert_eq!(reports.len(), 1, "{}", case.input_path);
        let errors: Vec<String> = reports[0].errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", case.input_path);
    }
}

#[test]
fn an_empty_status_is_progressing_not_an_error() {
    let mut obj = yaml_file(&health_dir().join("testdata/no-status.yaml"));
    obj["status"] = serde_json::json!({});
    let (status, message) = health(&obj).expect("script runs");
    assert_eq!(status, "Progressing");
    assert_eq!(message, "Waiting for the drctl controller to observe the spec");
}

#[test]
fn the_sandbox_is_argo_cds() {
    let lua = sandbox();
    let absent: Vec<String> = ["string", "math", "io", "debug"]
        .into_iter()
        .filter(|lib| !lua.globals().get::<mlua::Value>(*lib).expect("global").is_nil())
        .map(str::to_string)
        .collect();
    assert!(absent.is_empty(), "libraries Argo CD does not open are present: {absent:?}");
    assert!(lua.load(r#"return ("x"):upper()"#).eval::<String>().is_err(), "string methods must not exist");
    assert!(lua.load("return os.execute").eval::<mlua::Value>().expect("eval").is_nil());
    let t: f64 = lua.load(r#"return require("os").time()"#).eval().expect("os.time via require");
    assert!(t > 1.7e9);
    let version: String = lua.load("return _VERSION").eval().expect("version");
    assert_eq!(version, "Lua 5.1");
}

#[test]
fn argocd_cm_inlines_exactly_health_lua() {
    let cm = yaml_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops/argocd/argocd-cm-patch.yaml"));
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let inlined =
        cm["data"]["resource.customizations.health.drctl.io_DRTopology"].as_str().expect("argocd-cm has resource.customizations.health.drctl.io_DRTopology");
    assert!(inlined == script(), "gitops/argocd/argocd-cm-patch.yaml is out of date: paste gitops/health/health.lua into it again");
}

/// The same cases judged by Argo CD itself: `argocd admin settings resource-overrides health`
/// (built from its Go module by hack/build-argocd.sh) loads our argocd-cm patch and runs
/// health.lua in Argo CD's own Lua VM and sandbox, exactly as the application-controller does.
#[test]
fn argo_cd_itself_agrees_with_every_case() {
    let argocd = drctl_testbed::procs::argocd_bin().unwrap_or_else(|e| panic!("argocd: {e}"));
    let cm = Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops/argocd/argocd-cm-patch.yaml");
    let home = tempfile::tempdir().expect("tempdir");
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let input = health_dir().join(&case.input_path);
        let out = std::process::Command::new(&argocd)
            .args(["admin", "settings", "resource-overrides", "health"])
            .arg(&input)
            .arg("--argocd-cm-path")
            .arg(&cm)
            .env("HOME", home.path())
            .output()
            .expect("run argocd");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| stdout.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
        let got = (field("STATUS:"), field("MESSAGE:"));
        let want = (Some(case.health_status.status.clone()), Some(case.health_status.message.clone()));
        if !out.status.success() || got != want {
            failures.push(format!(
                "{}: argocd said {got:?} (exit {}), want {want:?}\n{stdout}{}",
                case.input_path,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases disagree with Argo CD:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("Argo CD's own Lua VM agrees with all {} cases of health_test.yaml", cases.len());
}
