//! The mirror between two real kube-apiservers: what the primary's API holds, the standby's API
//! serves, except what is excluded.
use drctl_testsupport as support;

use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{drctl, ApiServer, Global};

/// A `drctl mirror` child process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team-a}
data: {mode: active, replicas: "3"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: dr-viewer}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: v1
kind: Namespace
metadata: {name: cpaas-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: platform-only, namespace: cpaas-system}
data: {owner: primary}
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: team-a}
spec: {size: 3, color: blue}
"#;

fn apply(api: &ApiServer, dir: &std::path::Path, name: &str, yaml: &str) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write manifest");
    api.kubectl_ok(&["apply", "-f", &path.display().to_string()]);
}

/// GETs a path from the API as JSON; None while it is not there.
fn get(api: &ApiServer, path: &str) -> Option<Value> {
    let out = api.kubectl(&["get", "--raw", path]).expect("run kubectl");
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("JSON from the API"))
}

fn eventually(api: &ApiServer, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = get(api, path) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never appeared on the standby");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn objects_created_on_the_primary_are_served_by_the_standby_except_excluded_ones() {
    let (primary, standby) = Global::start_pair("primary", "standby");
    let dir = tempfile::tempdir().expect("tempdir");
    apply(&primary.api, dir.path(), "objects.yaml", OBJECTS);
    apply(&primary.api, dir.path(), "widget-crd.yaml", drctl_testbed::platform::WIDGET_CRD);
    primary.api.wait_crd("widgets.example.com");
    apply(&primary.api, dir.path(), "widget.yaml", WIDGET);

    let _mirror = Running(
        drctl()
            .arg("mirror")
            .args(primary.etcd.flags("source", "source-"))
            .args(standby.etcd.flags("dest", "dest-"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("mirror.log")).expect("log file"))
            .spawn()
            .expect("spawn drctl mirror"),
    );

    let paths = [
        "/api/v1/namespaces/team-a/configmaps/settings",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/dr-viewer",
        "/apis/example.com/v1/namespaces/team-a/widgets/w1",
    ];
    for path in paths {
        let want = get(&primary.api, path).expect("object on the primary");
        let got = eventually(&standby.api, path);
        for field in ["data", "rules", "spec"] {
            assert_eq!(got.get(field), want.get(field), "{path}: {field}");
        }
        assert_eq!(got["metadata"]["uid"], want["metadata"]["uid"], "{path}: the same object, not a copy");
    }
    let ns = eventually(&standby.api, "/api/v1/namespaces/team-a");
    assert_eq!(ns["metadata"]["name"], "team-a");

    // A change on the primary follows.
    primary.api.kubectl_ok(&["-n", "team-a", "patch", "configmap", "settings", "-p", r#"{"data":{"mode":"updated"}}"#]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&standby.api, paths[0]).is_none_or(|cm| cm["data"]["mode"] != "updated") {
        assert!(Instant::now() < deadline, "the update never reached the standby");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Excluded namespaces stay the standby's own.
    assert!(get(&standby.api, "/api/v1/namespaces/cpaas-system/configmaps/platform-only").is_none());
    assert!(get(&standby.api, "/api/v1/namespaces/cpaas-system").is_none());
}
