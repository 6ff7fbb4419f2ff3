//! The failover runbook's executor (`runbook`: one function per step, the I/O), its errors and
//! `drctl failover plan`. What to do next is decided in `crate::decide::plan`, without I/O.

pub mod cli;
pub mod error;
pub mod runbook;
