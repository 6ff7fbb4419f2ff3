//! Platform Applications that follow the role: which state this cluster's labelled Argo CD
//! Applications should be in (held on a standby, released on the acting primary), and the patch
//! that puts one Application there. Pure; `crate::follow_role` lists and patches.

use serde_json::{json, Value};

use super::plan::{in_progress, step_finished, Step};
use crate::topology::{ApplicationsState, DRTopologyStatus, Role};

/// The label that opts an Application in, with its one meaningful value.
pub const LABEL: &str = "drctl.io/follow-role";
pub const FOLLOWS_PRIMARY: &str = "primary";
/// Where a held Application keeps its `spec.syncPolicy.automated` (JSON), to restore it exactly.
pub const HELD_ANNOTATION: &str = "drctl.io/held-automated";

/// What decides whether this cluster's Applications run.
#[derive(Debug, Clone, Copy)]
pub struct RoleFacts {
    /// `spec.primary` names this cluster.
    pub declared_primary: bool,
    pub dry_run: bool,
    pub role: Option<Role>,
    /// A failover to this cluster is in progress: Some(whether it has verified DNS).
    pub failover_verified_dns: Option<bool>,
    /// The primary role is held for a peer that abandoned its failover.
    pub holds_primary: bool,
    /// The primary is standing down, outranked.
    pub stands_down: bool,
}

impl RoleFacts {
    /// The facts in `status` (before `action` runs) of the cluster named `self_name`.
    pub fn of(status: &DRTopologyStatus, self_name: &str, spec_primary: &str, dry_run: bool, holds_primary: bool, stands_down: bool) -> RoleFacts {
        RoleFacts {
            declared_primary: spec_primary == self_name,
            dry_run,
            role: status.role,
            failover_verified_dns: in_progress(Some(status), self_name).map(|f| step_finished(f, Step::VerifyDns)),
            holds_primary,
            stands_down,
        }
    }
}

/// Released only on the cluster acting as primary: a steady primary, one holding the role for
/// a peer that abandoned, or a new primary whose failover has moved and verified DNS (released
/// with its restarts: the fence is long lifted, the platform's clients reach this cluster now,
/// and what Argo CD then syncs starts beside the restarted components, not before the old
/// primary's writes are caught up). Held everywhere else: on a standby (fenced: a sync would
/// fail against the fence, or fight the mirror), an old primary stepping down (held with the
/// fence, before its demotion token), a failover before VerifyDns, a cluster with no role yet.
/// A dry run keeps the state of the role held.
pub fn wanted(f: &RoleFacts) -> ApplicationsState {
    let release = if f.holds_primary {
        true
    } else if f.stands_down {
        false
    } else if f.dry_run {
        f.role == Some(Role::Primary)
    } else if !f.declared_primary {
        false
    } else {
        match f.failover_verified_dns {
            Some(verified) => verified,
            None => f.role == Some(Role::Primary),
        }
    };
    if release {
        ApplicationsState::Released
    } else {
        ApplicationsState::Held
    }
}

/// "held" / "released", for messages, Events and `drctl status`.
pub fn verb(state: ApplicationsState) -> &'static str {
    match state {
        ApplicationsState::Held => "held",
        ApplicationsState::Released => "released",
    }
}

/// Why an Application's held automated policy cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("Application {name}: annotation {HELD_ANNOTATION} is not a JSON object ({value:?}): {reason}; set spec.syncPolicy.automated by hand and remove the annotation")]
pub struct HeldAnnotationError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// The JSON merge patch that brings Application `app` into `want`, or None when it is there.
/// Holding moves `spec.syncPolicy.automated` into [`HELD_ANNOTATION`]; releasing moves it
/// back. An automated policy found on a held Application (Git re-applied it) is the newer
/// declaration: holding stores it again, releasing keeps it. The patch carries the
/// resourceVersion read, so a concurrent writer makes it fail (409) instead of being undone.
pub fn patch(app: &Value, want: ApplicationsState) -> Result<Option<Value>, HeldAnnotationError> {
    let automated = app.pointer("/spec/syncPolicy/automated").filter(|v| !v.is_null());
    let held = app.pointer("/metadata/annotations").and_then(|a| a.get(HELD_ANNOTATION)).and_then(Value::as_str);
    let version = app.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
    let patch = match (want, automated, held) {
        (ApplicationsState::Held, Some(a), _) => json!({
            "metadata": {"resourceVersion": version, "annotations": {HELD_ANNOTATION: a.to_string()}},
            "spec": {"syncPolicy": {"automated": null}},
        }),
        (ApplicationsState::Released, None, Some(h)) => {
            let name = app.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let err = |reason: String| HeldAnnotationError { name: name.to_string(), value: h.to_string(), reason };
            let restored: Value = serde_json::from_str(h).map_err(|e| err(e.to_string()))?;
            if !restored.is_object() {
                return Err(err("not an object".into()));
            }
            json!({
                "metadata": {"resourceVersion": version, "annotations": {HELD_ANNOTATION: null}},
                "spec": {"syncPolicy": {"automated": restored}},
            })
        }
        (ApplicationsState::Released, Some(_), Some(_)) => json!({"metadata": {"resourceVersion": version, "annotations": {HELD_ANNOTATION: null}}}),
        _ => return Ok(None),
    };
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApplicationsState::{Held, Released};
    use Role::{Primary, Standby};

    fn facts(declared_primary: bool, role: Option<Role>, failover_verified_dns: Option<bool>) -> RoleFacts {
        RoleFacts { declared_primary, dry_run: false, role, failover_verified_dns, holds_primary: false, stands_down: false }
    }

    #[test]
    fn applications_run_only_where_the_cluster_acts_as_primary() {
        let cases = [
            // (facts, wanted, rule)
            (facts(true, Some(Primary), None), Released, "a steady primary"),
            (facts(false, Some(Standby), None), Held, "a standby"),
            (facts(false, Some(Primary), None), Held, "an old primary stepping down: with the fence, before its token"),
            (facts(true, Some(Standby), None), Held, "a standby named primary, before its failover starts"),
            (facts(true, Some(Standby), Some(false)), Held, "a failover before VerifyDns"),
            (facts(true, Some(Standby), Some(true)), Released, "a failover past VerifyDns: with the restarts"),
            (facts(true, None, Some(false)), Held, "failing over without a role yet"),
            (facts(true, None, None), Held, "no role yet: bootstrap releases once it is primary"),
            (RoleFacts { holds_primary: true, ..facts(false, Some(Primary), None) }, Released, "holding the role for a peer that abandoned"),
            (RoleFacts { stands_down: true, ..facts(true, Some(Primary), None) }, Held, "an outranked primary standing down"),
            (RoleFacts { dry_run: true, ..facts(false, Some(Primary), None) }, Released, "a dry run keeps the primary's state"),
            (RoleFacts { dry_run: true, ..facts(true, Some(Standby), None) }, Held, "a dry run keeps the standby's state"),
        ];
        for (f, want, rule) in cases {
            assert_eq!(wanted(&f), want, "{rule}: {f:?}");
        }
    }

    #[test]
    fn the_facts_come_from_the_failover_in_progress_to_this_cluster() {
        use crate::topology::{FailoverStatus, StepState, StepStatus};
        let with = |to: &str, verify: StepState| DRTopologyStatus {
            role: Some(Standby),
            failover: Some(FailoverStatus {
                to: to.into(),
                steps: vec![StepStatus { name: "VerifyDNS".into(), state: verify, ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let of = |st: &DRTopologyStatus| RoleFacts::of(st, "global-b", "global-b", false, false, false).failover_verified_dns;
        assert_eq!(of(&with("global-b", StepState::Running)), Some(false));
        assert_eq!(of(&with("global-b", StepState::Succeeded)), Some(true));
        assert_eq!(of(&with("global-a", StepState::Succeeded)), None, "another cluster's failover");
    }

    fn app(automated: Option<Value>, held: Option<&str>) -> Value {
        let mut a = json!({"metadata": {"name": "web", "resourceVersion": "7", "labels": {LABEL: FOLLOWS_PRIMARY}}, "spec": {"syncPolicy": {}}});
        if let Some(h) = held {
            a["metadata"]["annotations"] = json!({HELD_ANNOTATION: h});
        }
        if let Some(x) = automated {
            a["spec"]["syncPolicy"]["automated"] = x;
        }
        a
    }

    /// Applies a JSON merge patch (RFC 7386) as the apiserver does.
    fn merged(mut target: Value, patch: &Value) -> Value {
        fn merge(t: &mut Value, p: &Value) {
            let Some(p) = p.as_object() else { return *t = p.clone() };
            if !t.is_object() {
                *t = json!({});
            }
            for (k, v) in p {
                let obj = t.as_object_mut().expect("object");
                if v.is_null() {
                    obj.remove(k);
                } else {
                    merge(obj.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        merge(&mut target, patch);
        target
    }

    #[test]
    fn holding_keeps_the_declared_policy_and_releasing_restores_it_exactly() {
        let declared = json!({"prune": true, "selfHeal": true, "allowEmpty": false});
        let running = app(Some(declared.clone()), None);
        let hold = patch(&running, Held).expect("patch").expect("a change");
        assert_eq!(hold["metadata"]["resourceVersion"], "7", "optimistic: a concurrent writer gets a 409");
        let held = merged(running.clone(), &hold);
        assert_eq!(held.pointer("/spec/syncPolicy/automated"), None);
        assert_eq!(patch(&held, Held), Ok(None), "held stays held");
        let released = merged(held.clone(), &patch(&held, Released).expect("patch").expect("a change"));
        assert_eq!(released["spec"]["syncPolicy"]["automated"], declared);
        assert_eq!(released.pointer(&format!("/metadata/annotations/{}", HELD_ANNOTATION.replace('/', "~1"))), None);
        assert_eq!(patch(&released, Released), Ok(None), "released stays released");
        // An empty automated ({}: automated sync with defaults) is a declaration too.
        let empty = app(Some(json!({})), None);
        let held_empty = merged(empty.clone(), &patch(&empty, Held).expect("patch").expect("hold"));
        let back = merged(held_empty.clone(), &patch(&held_empty, Released).expect("patch").expect("release"));
        assert_eq!(back["spec"]["syncPolicy"]["automated"], json!({}));
    }

    #[test]
    fn git_reapplying_automated_is_the_newer_declaration() {
        let newer = json!({"prune": false});
        let reapplied = app(Some(newer.clone()), Some(r#"{"prune":true}"#));
        let hold = patch(&reapplied, Held).expect("patch").expect("held again");
        assert_eq!(hold["metadata"]["annotations"][HELD_ANNOTATION], newer.to_string());
        let release = patch(&reapplied, Released).expect("patch").expect("annotation dropped");
        let released = merged(reapplied, &release);
        assert_eq!(released["spec"]["syncPolicy"]["automated"], newer, "the policy Git declared last is kept");
        assert!(released["metadata"]["annotations"].get(HELD_ANNOTATION).is_none());
    }

    #[test]
    fn an_application_never_automated_is_left_alone_and_a_broken_annotation_is_named() {
        let manual = app(None, None);
        assert_eq!(patch(&manual, Held), Ok(None));
        assert_eq!(patch(&manual, Released), Ok(None));
        let broken = app(None, Some("prune"));
        let err = patch(&broken, Released).expect_err("not JSON");
        assert!(err.to_string().contains("web") && err.to_string().contains(HELD_ANNOTATION), "{err}");
        assert!(patch(&app(None, Some("[]")), Released).is_err(), "not an object");
    }
}
