//! The pull request check of gitops/ci/validate-topology.yaml, run the way GitHub's runner runs
//! a Docker container action step (`uses: docker://IMAGE`, `with.args`): the image `make image`
//! built, unpacked with umoci and started by runc with the entrypoint and the step's arguments,
//! the checkout bind-mounted at /github/workspace as the working directory, as the image's user,
//! no shell anywhere. A valid topology passes; an invalid one fails naming the field. Skipped,
//! saying why, only where this machine cannot run containers (root, umoci and runc).

use drctl_testsupport::oci;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const JOB: &str = "gitops/ci/validate-topology.yaml";
/// Where the runner mounts the checkout, and the step's working directory.
const WORKSPACE: &str = "/github/workspace";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Why this machine cannot run the job's container, if it cannot.
fn cannot_run_containers() -> Option<String> {
    for tool in ["umoci", "runc"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is not installed (make deps installs it)"));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("runc without rootless setup needs root".into());
    }
    None
}

/// The container step of the workflow: its image reference (after `docker://`) and its
/// arguments, as the runner splits `with.args`.
#[derive(Debug)]
struct ContainerStep {
    image: String,
    args: Vec<String>,
}

/// Reads the workflow: one job, checkout first, then the container step; no `run:` step and no
/// job `container:` (both need a shell in the image).
fn container_step(workflow: &Value) -> ContainerStep {
    assert_eq!(workflow["on"], "pull_request", "{workflow}");
    assert_eq!(workflow["permissions"], json!({"contents": "read"}), "a read-only token and no other grant");
    let jobs = workflow["jobs"].as_object().expect("jobs");
    assert_eq!(jobs.len(), 1, "one job: {jobs:?}");
    let job = jobs.values().next().expect("the job");
    assert!(job.get("container").is_none(), "a job container needs a shell in the image: {job}");
    let steps = job["steps"].as_array().expect("steps");
    assert!(steps.iter().all(|s| s.get("run").is_none()), "a run: step needs a shell in the image: {steps:?}");
    assert!(steps[0]["uses"].as_str().is_some_and(|u| u.starts_with("actions/checkout@")), "the checkout comes first: {steps:?}");
    let docker: Vec<&Value> = steps.iter().filter(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("docker://"))).collect();
    assert_eq!(docker.len(), 1, "one container step: {steps:?}");
    let step = docker[0];
    assert!(step["with"].get("entrypoint").is_none(), "the image's own entrypoint runs: {step}");
    let args = step["with"]["args"].as_str().expect("with.args");
    // The runner splits at spaces and honours quotes; there are none to honour here.
    assert!(!args.contains(['"', '\'']), "{args}");
    ContainerStep {
        image: step["uses"].as_str().and_then(|u| u.strip_prefix("docker://")).expect("docker:// image").to_string(),
        args: args.split_whitespace().map(str::to_string).collect(),
    }
}

/// The image unpacked into a runc bundle, once; each run gets its own config.
struct Bundle {
    dir: PathBuf,
    /// The runtime config umoci wrote from the image's config.
    config: Value,
}

impl Bundle {
    fn unpack(archive: &Path, into: &Path) -> Bundle {
        let layout = into.join("layout");
        std::fs::create_dir(&layout).expect("mkdir layout");
        run_ok(Command::new("tar").arg("-C").arg(&layout).arg("-xf").arg(archive));
        let dir = into.join("bundle");
        let image = format!("{}:{}", layout.display(), oci::tag(archive));
        run_ok(Command::new("umoci").args(["unpack", "--image", &image]).arg(&dir));
        let config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config.json")).expect("runtime config");
        Bundle { dir, config }
    }

    /// Runs the image's entrypoint with `args`, `checkout` at [`WORKSPACE`] as its working
    /// directory, as the image's user, as the runner's `docker run` does.
    fn run(&self, id: &str, checkout: &Path, args: &[String]) -> Output {
        let mut config = self.config.clone();
        let process = &mut config["process"];
        let mut argv: Vec<Value> = process["args"].as_array().expect("the image's entrypoint").clone();
        argv.extend(args.iter().map(|a| json!(a)));
        process["args"] = Value::Array(argv);
        process["cwd"] = json!(WORKSPACE);
        process["terminal"] = json!(false);
        process["env"].as_array_mut().expect("env").extend([json!(format!("GITHUB_WORKSPACE={WORKSPACE}")), json!("CI=true")]);
        config["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": WORKSPACE, "type": "bind", "source": checkout, "options": ["rbind", "rw"],
        }));
        std::fs::write(self.dir.join("config.json"), config.to_string()).expect("write config.json");
        Command::new("runc").arg("run").arg("--bundle").arg(&self.dir).arg(id).output().expect("run runc")
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A checkout holding the shipped topology with `edit` applied, readable by all as
/// actions/checkout leaves it (the step runs as the image's uid 65532, not the runner's).
fn checkout(dir: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    let topology = std::fs::read_to_string(repo("gitops/topology/drtopology.yaml")).expect("read the topology");
    std::fs::create_dir_all(dir.join("topology")).expect("mkdir checkout");
    std::fs::write(dir.join("topology/drtopology.yaml"), edit(&topology)).expect("write topology");
    for d in [dir.to_path_buf(), dir.join("topology")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir.to_path_buf()
}

#[test]
fn the_pull_request_check_runs_in_the_image_as_the_runner_runs_it() {
    let text = std::fs::read_to_string(repo(JOB)).expect("read the workflow");
    let workflow = drctl::validate::parse_documents(&text).expect("the workflow is YAML").remove(0);
    let step = container_step(&workflow);
    assert_eq!(step.args, ["validate", "topology/drtopology.yaml"], "{step:?}");
    assert!(step.image.contains("/drctl:"), "the step runs drctl's image: {step:?}");
    if let Some(why) = cannot_run_containers() {
        println!("SKIPPED: cannot run the job's container here: {why}");
        return;
    }
    let archive = oci::built_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = Bundle::unpack(&archive, dir.path());
    println!("image {} (tag {}) stands in for {}", archive.display(), oci::tag(&archive), step.image);
    let id = |what: &str| format!("drctl-ci-job-{}-{what}", std::process::id());

    let good = checkout(&dir.path().join("good"), str::to_string);
    let out = bundle.run(&id("good"), &good, &step.args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the shipped topology fails the check ({}):\n{text}", out.status);
    println!("valid topology: {} | {}", out.status, text.trim());

    let bad = checkout(&dir.path().join("bad"), |t| {
        let edited = t.replacen("vip: 192.0.2.20", "vip: 192.0.2.300", 1);
        assert_ne!(edited, t, "the edit applies");
        edited
    });
    let out = bundle.run(&id("bad"), &bad, &step.args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "an invalid VIP must fail the check:\n{text}");
    assert!(text.contains("topology/drtopology.yaml") && text.contains("spec.clusters[1].vip"), "the error names the file and the field:\n{text}");
    println!("invalid topology: {} | {}", out.status, text.trim());
}
