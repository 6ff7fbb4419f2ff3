//! The controller's decisions, with no Kubernetes or etcd I/O: what to do next (`plan`), what
//! each action does to status (`transition`), the Demote verdict (`demote`), a standby's health
//! (`standby`), whether this cluster is fenced (`fence`), whether its labelled Argo CD
//! Applications run (`follow_role`), condition types and reasons (`conditions`), what survives
//! a lost status (`memory`), what a pair of two controller versions refuses (`skew`), how soon
//! a failed reconcile is retried (`retry`), how a standby's etcd revision stays at or above its
//! primary's numbering and what a promotion's compaction leaves unrefused (`revisions`) and what
//! a waiting step does next (`wait`). The executors (`controller`, `failover::runbook`) gather
//! the facts, call these and do the I/O.

pub mod conditions;
pub mod demote;
pub mod fence;
pub mod follow_role;
pub mod memory;
pub mod notes;
pub mod plan;
pub mod retry;
pub mod revisions;
pub mod skew;
pub mod standby;
pub mod transition;
pub mod wait;
