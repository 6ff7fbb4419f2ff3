//! The local DR lab: two globals, PowerDNS, a Git repo and a stand-in for Argo CD on one machine.
pub mod procs;
