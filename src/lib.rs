//! drctl: declarative, GitOps-driven disaster recovery for a Kubernetes global cluster.
pub mod cli;
pub mod check;
pub mod etcd;
pub mod keyspace;
pub mod mirror;
pub mod topology;
pub mod validate;
