//! drctl: declarative, GitOps-driven disaster recovery for a Kubernetes global cluster.
pub mod check;
pub mod cli;
pub mod controller;
pub mod dns;
pub mod etcd;
pub mod failover;
pub mod gitops;
pub mod hooks;
pub mod http;
pub mod keyspace;
pub mod leader;
pub mod metrics;
pub mod mirror;
pub mod restart;
pub mod secret;
pub mod topology;
pub mod validate;
