//! drctl: declarative, GitOps-driven disaster recovery for a Kubernetes global cluster.
pub mod cli;
pub mod dns;
pub mod keyspace;
pub mod secret;
pub mod topology;
pub mod validate;
