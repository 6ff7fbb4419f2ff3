//! drctl: declarative, GitOps-driven disaster recovery for a Kubernetes global cluster.
pub mod cli;
pub mod gitops;
pub mod keyspace;
pub mod topology;
pub mod validate;
