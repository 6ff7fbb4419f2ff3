//! A writer that never pauses: ConfigMaps created one at a time in namespace `ledger` of one
//! global as alice (whom the fence refuses), keeping the names its apiserver acknowledged, so a
//! test can check every acknowledged write is on the new primary after a flip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use super::Global;

pub struct Ledger {
    /// The global it writes to.
    on: String,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, u32)>,
}

impl Ledger {
    /// Starts writing `<prefix>NNNNN` to `g` (prefixes keep the writers of one test apart), and
    /// returns once it has written for 2 s.
    pub async fn start(g: &Global, prefix: &'static str) -> Ledger {
        // Replicated from the other global once it was primary: it may exist already.
        let _ = g.api.kubectl(&["create", "namespace", "ledger"]);
        let alice: Api<ConfigMap> = Api::namespaced(g.as_alice().await, "ledger");
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut acked, mut refused) = (Vec::new(), 0u32);
                for seq in 0u32.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let name = format!("{prefix}{seq:05}");
                    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("cm");
                    match tokio::time::timeout(Duration::from_secs(2), alice.create(&PostParams::default(), &cm)).await {
                        Ok(Ok(_)) => acked.push(name),
                        _ => refused += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (acked, refused)
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ledger { on: g.name.clone(), stop, task }
    }

    /// Stops the writer (once the flip is done) and asserts every write it got acknowledged is
    /// on `new_primary`, and that the fence refused some (the flip happened under the writer).
    pub async fn stop_and_find_all_on(self, new_primary: &Global) {
        self.stop.store(true, Ordering::SeqCst);
        let (acked, refused) = self.task.await.expect("writer");
        assert!(refused > 0, "the fence never refused the writer: the test did not cover the flip");
        let on_new: std::collections::BTreeSet<String> = Api::<ConfigMap>::namespaced(new_primary.client().await, "ledger")
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|n| !on_new.contains(*n)).collect();
        let on = &self.on;
        eprintln!("writer: {} acknowledged by {on}, {refused} refused; {} missing on {}", acked.len(), missing.len(), new_primary.name);
        assert!(missing.is_empty(), "{} of {} writes {on} acknowledged are not on the new primary: {missing:?}", missing.len(), acked.len());
    }
}
