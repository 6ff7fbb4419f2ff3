//! The controller as a real Pod on a real node.

mod support;

use std::time::Duration;

use support::node::Node;
use support::Global;

#[test]
fn smoke_node() {
    let mut g = Global::start_for_real_node("global-a");
    g.start_control_plane(0);
    let node = Node::start(&g, 0);
    let image = node.import_drctl_image();
    eprintln!("image {image}");
    let pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: v, namespace: default}}\nspec:\n  nodeName: {}\n  hostNetwork: true\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Never\n    args: [\"--version\"]\n", node.node.name);
    let (ok, out) = g.api.apply_stdin(&pod);
    assert!(ok, "{out}");
    for _ in 0..120 {
        let p = g.api.kubectl_ok(&["get", "pod", "v", "-o", "jsonpath={.status.phase}"]);
        eprintln!("{p}");
        if p == "Succeeded" || p == "Failed" { break; }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("{}", g.api.kubectl_ok(&["logs", "v"]));
}
