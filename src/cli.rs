//! The `drctl` command line: one binary, one subcommand per job.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::check::{self, CheckOptions};
use crate::etcd::{self, Endpoint, TlsFiles};
use crate::keyspace::Filter;
use crate::mirror::{Mirror, MirrorConfig, Progress, Tuning};
use crate::topology::ExcludeSpec;
use crate::{dns, forge, gitops, topology, validate};

#[derive(Parser, Debug)]
#[command(name = "drctl", version, about = "Declarative, GitOps-driven disaster recovery for a Kubernetes global cluster")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the DRTopology CustomResourceDefinition (what crds/drtopology.yaml holds).
    Crd,
    /// Run the controller in one global cluster.
    Controller(crate::controller::ControllerArgs),
    /// Failover tools.
    #[command(subcommand)]
    Failover(FailoverCommand),
    /// Check DRTopology manifests as the apiserver and the controller would; exit 1 on any error.
    Validate {
        /// YAML files, each with one or more DRTopology documents.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replicate the Kubernetes keyspace of a source etcd into a destination etcd.
    Mirror {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        exclude: ExcludeArgs,
        /// Copy, catch up to the source's revision at start, print a summary and exit.
        #[arg(long)]
        once: bool,
    },
    /// Compare the replicated keyspace of source and destination: missed, surplus, diverged keys.
    Check {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        exclude: ExcludeArgs,
        /// Print the report as JSON (what the controller serves at /check).
        #[arg(long)]
        json: bool,
        /// Write the source's value over missed and diverged keys.
        #[arg(long)]
        repair: bool,
        /// With --repair, also delete surplus keys.
        #[arg(long, requires = "repair")]
        prune_surplus: bool,
        /// Keys listed per kind.
        #[arg(long, default_value_t = check::DEFAULT_LIST_LIMIT)]
        list: usize,
        /// Most source keys read per second (0: as fast as the source answers), to spare a
        /// primary serving its clients.
        #[arg(long, default_value_t = 0)]
        max_read_rate: u64,
    },
    /// Prepare the pull request that makes CLUSTER the primary: a branch with a one-line commit.
    Promote(PromoteArgs),
    /// The DR audit trail: every change of spec.primary on the first-parent line of HEAD.
    History {
        #[arg(long)]
        repo: PathBuf,
        /// The topology file, relative to the repository root (renames are followed).
        #[arg(long, default_value = gitops::DEFAULT_FILE)]
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also show whether and when each failover completed, from this cluster's DRTopology
        /// status (repeat for both globals).
        #[arg(long)]
        kubeconfig: Vec<PathBuf>,
    },
    /// The local DR lab: two whole globals (control plane, kwok nodes, their own Argo CD), PowerDNS and a Git repo on this machine (the drctl-lab binary; `drctl lab --help`).
    #[command(disable_help_flag = true)]
    Lab {
        /// up, flip, disaster, recover, status, down, ... with their options: passed to drctl-lab.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Both globals side by side, read-only: role, phase, lag, missed/surplus/diverged keys, last
    /// check, the DNS answer, the last failover's steps, Argo CD. Exit 3 when two primaries or
    /// none are visible, 4 when neither global answers.
    Status(crate::status::read::StatusArgs),
    /// From this global, every connection and permission a failover and the standby's mirror
    /// need, each a row ok / warn / fail with its fix; changes nothing. Exit 0 all ok, 1 a
    /// warning, 2 a failure.
    Preflight(crate::preflight::PreflightArgs),
    /// On the standby: rehearse the failover steps that move no traffic (preflight, FinalSync's
    /// catch-up and check against the primary's revision now, a read-back of every replicated
    /// resource through this apiserver) and report each step's time, the predicted RTO and the
    /// RPO now. The primary is only read. Exit 0 passed, 1 a warning, 2 a step failed.
    Drill(crate::drill::DrillArgs),
    /// DNS tools for operators.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// The divergence archives in a cluster's etcd: its own values that a resync, a copy over
    /// existing data (a rejoining old primary) or a repair overwrote or deleted, saved first.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Delete what the controller created in one global (the fence, its role memory and Leases);
    /// refused while a controller still runs there.
    Uninstall(crate::uninstall::UninstallArgs),
}

/// One etcd: where the archives are.
#[derive(Args, Debug)]
pub struct ArchiveEtcdArgs {
    /// The etcd holding the archives (the cluster whose values were replaced), client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    #[arg(long)]
    cacert: Option<PathBuf>,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// List the archives: id, reason, counts, revisions; with --keys every key, decoded.
    List {
        #[command(flatten)]
        etcd: ArchiveEtcdArgs,
        /// Also list each archived key as the object it names (group/resource namespace/name).
        #[arg(long)]
        keys: bool,
        /// Only this archive.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write archived values back to the current primary's etcd under their original keys, raw:
    /// the primary's apiserver then serves each as the object at a new resourceVersion (its
    /// watchers see it created, or modified with --overwrite). Keys the target holds are left
    /// alone unless --overwrite.
    Restore {
        /// The archive (an id from `drctl archive list`).
        archive_id: String,
        #[command(flatten)]
        etcd: ArchiveEtcdArgs,
        /// The etcd to write to (the current primary's), client URLs, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[arg(long)]
        to_cacert: Option<PathBuf>,
        #[arg(long)]
        to_cert: Option<PathBuf>,
        #[arg(long)]
        to_key: Option<PathBuf>,
        /// Only these original keys (repeatable; e.g. /registry/configmaps/team-a/settings).
        /// Default: every key of the archive.
        #[arg(long = "only", value_name = "KEY")]
        only: Vec<String>,
        /// Replace a key the target holds with other bytes (default: leave it and say so).
        #[arg(long)]
        overwrite: bool,
        /// Print what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn endpoint_of(urls: &[String], ca: &Option<PathBuf>, cert: &Option<PathBuf>, key: &Option<PathBuf>) -> anyhow::Result<Endpoint> {
    let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
    let tls = if files.is_empty() { None } else { Some(files.load()?) };
    Ok(Endpoint { urls: urls.to_vec(), tls })
}

async fn archive_cmd(cmd: ArchiveCommand) -> anyhow::Result<ExitCode> {
    use crate::archive;
    match cmd {
        ArchiveCommand::List { etcd: e, keys, id, json } => {
            let mut kv = etcd::connect(&endpoint_of(&e.etcd, &e.cacert, &e.cert, &e.key)?).await?.kv;
            let mut all = archive::list(&mut kv).await.context("list the archives")?;
            if let Some(id) = &id {
                all.retain(|m| &m.id == id);
                anyhow::ensure!(!all.is_empty(), "no archive {id} in this etcd");
            }
            let mut listed = Vec::new();
            for m in all {
                let entries = if keys { archive::entries(&mut kv, &m.id).await.context("read the archive")? } else { Vec::new() };
                listed.push((m, entries));
            }
            if json {
                let out: Vec<serde_json::Value> = listed
                    .iter()
                    .map(|(m, entries)| {
                        let keys: Vec<serde_json::Value> = entries
                            .iter()
                            .map(|e| {
                                let o = crate::keyspace::parse(&e.key);
                                serde_json::json!({
                                    "key": String::from_utf8_lossy(&e.key),
                                    "group": o.as_ref().and_then(|o| o.group),
                                    "resource": o.as_ref().map(|o| o.resource),
                                    "namespace": o.as_ref().and_then(|o| o.namespace),
                                    "name": o.as_ref().map(|o| o.name),
                                    "modRevision": e.mod_revision,
                                    "action": e.action,
                                    "bytes": e.value.len(),
                                })
                            })
                            .collect();
                        serde_json::json!({ "archive": m, "keys": keys })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            if listed.is_empty() {
                println!("no archives");
            }
            for (m, entries) in &listed {
                println!(
                    "{}  {} keys ({} overwritten, {} deleted), revisions {}, {} bytes, reason: {}, at {}",
                    m.id,
                    m.count,
                    m.overwritten,
                    m.pruned,
                    m.revisions(),
                    m.bytes,
                    m.reason,
                    m.created_at
                );
                for e in entries {
                    let action = match e.action {
                        archive::Action::Overwritten => "overwritten",
                        archive::Action::Pruned => "deleted",
                    };
                    println!("  {}  {}  rev {}  {action}", archive::describe(&e.key), String::from_utf8_lossy(&e.key), e.mod_revision);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::Restore { archive_id, etcd: e, to, to_cacert, to_cert, to_key, only, overwrite, dry_run } => {
            let mut from = etcd::connect(&endpoint_of(&e.etcd, &e.cacert, &e.cert, &e.key)?).await?.kv;
            let mut target = etcd::connect(&endpoint_of(&to, &to_cacert, &to_cert, &to_key)?).await?.kv;
            etcd::head(&mut from).await.context("reach the etcd holding the archive")?;
            etcd::head(&mut target).await.context("reach the target etcd")?;
            anyhow::ensure!(archive::exists(&mut from, &archive_id).await?, "no archive {archive_id} in this etcd (drctl archive list)");
            let mut entries = archive::entries(&mut from, &archive_id).await.context("read the archive")?;
            if !only.is_empty() {
                let missing: Vec<&String> = only.iter().filter(|k| !entries.iter().any(|e| e.key == k.as_bytes())).collect();
                anyhow::ensure!(missing.is_empty(), "not in archive {archive_id}: {missing:?}");
                entries.retain(|e| only.iter().any(|k| e.key == k.as_bytes()));
            }
            let (mut put, mut kept, mut same) = (0, 0, 0);
            for entry in &entries {
                let shown = String::from_utf8_lossy(&entry.key);
                if !archive::restorable(&entry.key) {
                    println!("refused  {shown}: not under /registry/");
                    continue;
                }
                if dry_run {
                    println!("would put  {shown}  ({}, {} bytes)", archive::describe(&entry.key), entry.value.len());
                    continue;
                }
                match archive::restore(&mut target, entry, overwrite).await.with_context(|| format!("write {shown}"))? {
                    archive::Restored::Put => {
                        put += 1;
                        println!("put  {shown}");
                    }
                    archive::Restored::Exists => {
                        kept += 1;
                        println!("kept {shown}: the target holds it with other bytes (--overwrite replaces it)");
                    }
                    archive::Restored::Same => {
                        same += 1;
                        println!("same {shown}: the target holds these bytes already");
                    }
                }
            }
            if !dry_run {
                println!("{put} put, {kept} kept (the target's differs), {same} already there; of {} archived keys", entries.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// The cluster to promote; one of spec.clusters[].name.
    cluster: String,
    /// The Git repository (a clone of the one Argo CD watches).
    #[arg(long)]
    repo: PathBuf,
    /// The topology file, relative to the repository root.
    #[arg(long, default_value = gitops::DEFAULT_FILE)]
    file: PathBuf,
    /// Branch to create; default dr/promote-CLUSTER-<UTC YYYYMMDD-HHMMSS>.
    #[arg(long)]
    branch: Option<String>,
    /// Commit subject; default "DR: promote CLUSTER to primary".
    #[arg(long)]
    message: Option<String>,
    /// Why, recorded in the DR-Reason trailer (default: the subject).
    #[arg(long)]
    reason: Option<String>,
    /// Push the branch to this remote and print the forge's link that opens the pull request.
    #[arg(long, value_name = "REMOTE")]
    push: Option<String>,
    /// The forge the remote is on, when its host name does not say (github.com, gitlab.*, gitea.*).
    #[arg(long, value_enum)]
    forge: Option<forge::Forge>,
    /// Open the pull request through the forge's API, with the token in $DRCTL_FORGE_TOKEN (or --token-env).
    #[arg(long, requires = "push")]
    open_pr: bool,
    /// The pull request's target branch; default the branch HEAD was on.
    #[arg(long)]
    base: Option<String>,
    /// The environment variable that holds the forge's API token (never a flag: it would show in shell history and ps).
    #[arg(long, value_name = "VAR", default_value = forge::DEFAULT_TOKEN_ENV)]
    token_env: String,
}

/// `drctl promote`: commit, push, and open the pull request or print the link that opens it.
async fn promote(a: PromoteArgs) -> anyhow::Result<ExitCode> {
    // Whatever --open-pr needs (forge, target branch, token) is checked before anything is committed.
    let open = match (&a.push, a.open_pr) {
        (Some(remote), true) => {
            let (head, url) = gitops::head_and_remote(&a.repo, remote)?;
            let target = forge::target(&url, a.forge)?;
            let base = a
                .base
                .clone()
                .or(head)
                .ok_or_else(|| anyhow::anyhow!("HEAD is detached, so the pull request's target branch is unknown; pass --base BRANCH"))?;
            Some((target, base, forge::token_from_env(&a.token_env)?))
        }
        _ => None,
    };
    let req = gitops::PromoteRequest { repo: a.repo, file: a.file, cluster: a.cluster, branch: a.branch, message: a.message, reason: a.reason, push: a.push };
    let outcome = gitops::promote(&req)?;
    let base = a.base.or_else(|| outcome.base.clone());
    let target = outcome.remote_url.as_deref().map(|u| forge::target(u, a.forge));
    let opened = match open {
        Some((t, base, token)) => {
            let pr = forge::PullRequest::from_commit(&outcome.branch, &base, &outcome.message);
            let opened = forge::open_pull_request(&t, &token, &a.token_env, &pr).await.map_err(|source| forge::NotOpened {
                branch: outcome.branch.clone(),
                by_hand: t.compare_url(&base, &outcome.branch),
                source,
            })?;
            Some(opened)
        }
        None => None,
    };
    let line = forge::pull_request_line(&outcome.branch, base.as_deref(), target.as_ref(), opened.as_ref());
    print!("{}", gitops::next_steps(&outcome, &line));
    Ok(ExitCode::SUCCESS)
}

/// The two etcds and how to reach them.
#[derive(Args, Debug)]
pub struct EtcdArgs {
    /// Source etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    source: Vec<String>,
    /// Destination etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    dest: Vec<String>,
    #[arg(long)]
    source_cacert: Option<PathBuf>,
    #[arg(long)]
    source_cert: Option<PathBuf>,
    #[arg(long)]
    source_key: Option<PathBuf>,
    #[arg(long)]
    dest_cacert: Option<PathBuf>,
    #[arg(long)]
    dest_cert: Option<PathBuf>,
    #[arg(long)]
    dest_key: Option<PathBuf>,
}

impl EtcdArgs {
    fn endpoints(&self) -> anyhow::Result<(Endpoint, Endpoint)> {
        let endpoint = |urls: &[String], ca: &Option<PathBuf>, cert: &Option<PathBuf>, key: &Option<PathBuf>| {
            let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            let tls = if files.is_empty() { None } else { Some(files.load()?) };
            Ok::<_, etcd::EtcdError>(Endpoint { urls: urls.to_vec(), tls })
        };
        Ok((
            endpoint(&self.source, &self.source_cacert, &self.source_cert, &self.source_key).context("source TLS")?,
            endpoint(&self.dest, &self.dest_cacert, &self.dest_cert, &self.dest_key).context("destination TLS")?,
        ))
    }
}

/// What is never replicated: the defaults in keyspace.rs (README: What is never
/// replicated), plus --config's spec.sync.exclude, plus the flags. Flags only add; a default is
/// replicated only through an optOut entry (with its reason) in the --config manifest.
#[derive(Args, Debug)]
pub struct ExcludeArgs {
    /// A namespace never replicated, in addition to the defaults (repeatable).
    #[arg(long = "exclude-namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// A resource never replicated, in addition to the defaults, as `resource` or
    /// `group/resource` (repeatable).
    #[arg(long = "exclude-resource", value_name = "R")]
    resources: Vec<String>,
    /// Take the exclusions from this DRTopology manifest's spec.sync.exclude (and Argo CD's
    /// namespace from its spec.argocd.namespace; `argocd` without it).
    #[arg(long, value_name = "TOPOLOGY.yaml")]
    config: Option<PathBuf>,
}

impl ExcludeArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        let (mut spec, argocd_namespace) = match &self.config {
            Some(path) => exclude_from_manifest(path)?,
            None => (ExcludeSpec::default(), crate::keyspace::DEFAULT_ARGOCD_NAMESPACE.to_string()),
        };
        spec.namespaces.extend(self.namespaces.iter().cloned());
        spec.resources.extend(self.resources.iter().cloned());
        let errs = validate::exclude_errors(&spec);
        if !errs.is_empty() {
            let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
            anyhow::bail!(
                "the exclusions (--config's spec.sync.exclude, then --exclude-namespace/--exclude-resource in order) are refused:\n{}",
                lines.join("\n")
            );
        }
        Ok(Filter::new(&spec, crate::keyspace::DEFAULT_CONTROLLER_NAMESPACE, &argocd_namespace))
    }
}

/// The topology's `spec.sync.exclude` and `spec.argocd.namespace`.
fn exclude_from_manifest(path: &PathBuf) -> anyhow::Result<(ExcludeSpec, String)> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
    let reports = validate::validate_text(&text).with_context(|| format!("{shown} is not valid YAML"))?;
    let report = reports.into_iter().next().with_context(|| format!("{shown} holds no DRTopology"))?;
    if let Some(e) = report.errors.first() {
        anyhow::bail!("{shown}: {e}");
    }
    let topology = report.topology.with_context(|| format!("{shown} holds no DRTopology"))?;
    Ok((topology.spec.sync.exclude, topology.spec.argocd.namespace))
}

#[derive(Subcommand, Debug)]
pub enum FailoverCommand {
    /// Print the steps a failover to CLUSTER would run and the facts they rest on; change nothing.
    Plan {
        /// The cluster that would become primary.
        #[arg(long)]
        to: String,
        /// Read the topology from this file instead of the cluster.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Kubeconfig of the cluster that would become primary (its peer Secret and status are read).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Name of the DRTopology object when reading from the cluster.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Ask resolvers directly (no cache in between) for a name's A and AAAA addresses, as the
    /// failover's VerifyDNS step does; exit 1 if any resolver fails.
    Resolve {
        name: String,
        /// `ip` or `ip:port`; repeat for several. Default: the nameservers of /etc/resolv.conf.
        #[arg(long = "resolver", value_name = "IP[:PORT]", value_parser = crate::status::read::parse_resolver)]
        resolvers: Vec<std::net::SocketAddr>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Controller(args) => {
            crate::controller::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Failover(FailoverCommand::Plan { to, file, kubeconfig, name }) => {
            crate::failover::cli::plan(&to, file.as_deref(), kubeconfig.as_deref(), name.as_deref()).await
        }
        Command::Crd => {
            print!("{}", topology::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate_files(&files)),
        Command::Promote(args) => promote(args).await,
        Command::History { repo, file, json, kubeconfig } => {
            let mut entries = gitops::history(&repo, &file)?;
            let mut records = Vec::new();
            for k in &kubeconfig {
                match failover_record(k).await {
                    Ok(Some(r)) => records.push(r),
                    Ok(None) => {}
                    Err(e) => eprintln!("warning: {}: {e:#}", k.display()),
                }
            }
            gitops::attach_failovers(&mut entries, &records);
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", gitops::format_history(&entries));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { args } => Err(exec_lab(&args).into()),
        Command::Status(args) => crate::status::read::run(args).await,
        Command::Preflight(args) => {
            let client = crate::controller::client(args.kubeconfig.as_deref()).await?;
            crate::preflight::run(args, client).await
        }
        Command::Drill(args) => {
            let client = crate::controller::client(args.kubeconfig.as_deref()).await?;
            crate::drill::run(args, client).await
        }
        Command::Mirror { etcd, exclude, once } => mirror(&etcd, &exclude, once).await,
        Command::Dns { command: DnsCommand::Resolve { name, resolvers } } => dns_resolve(&name, &resolvers).await,
        Command::Archive(cmd) => archive_cmd(cmd).await,
        Command::Uninstall(args) => crate::uninstall::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Check { etcd, exclude, json, repair, prune_surplus, list, max_read_rate } => {
            check(&etcd, &exclude, json, repair, prune_surplus, list, max_read_rate).await
        }
    }
}

async fn mirror(etcd: &EtcdArgs, exclude: &ExcludeArgs, once: bool) -> anyhow::Result<ExitCode> {
    let (source, dest) = etcd.endpoints()?;
    let m = Mirror::new(MirrorConfig { source, dest, filter: exclude.filter()?, tuning: Tuning::default() });
    let started = Instant::now();
    if !once {
        // A long-running mirror retries a failed session forever; a wrong --dest must fail now.
        // An etcd that does not answer yet is waited for: a start-up probe never ends the mirror.
        let endpoints = etcd.endpoints()?;
        let mut wait = Duration::from_millis(500);
        while let Err(e) = refuse_same_etcd(&endpoints).await {
            // Only an etcd that is not there yet is waited for; a bad URL or file is not.
            let unreachable = e.chain().any(|c| {
                c.downcast_ref::<etcd::EtcdError>().is_some_and(etcd::EtcdError::is_transient)
                    || c.downcast_ref::<etcd_client::Error>().is_some_and(etcd::is_transient)
            });
            if !unreachable {
                return Err(e);
            }
            tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "cannot compare the source and the destination yet");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        let log = log_progress(m.progress());
        m.run(shutdown_signal()).await;
        log.abort();
        return Ok(ExitCode::SUCCESS);
    }
    let bar = std::io::stderr().is_terminal().then(|| show_progress(m.progress()));
    let result = m.run_once().await;
    if let Some(bar) = bar {
        bar.abort();
    }
    let p = result.context("mirror --once")?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "mirrored to source revision {} ({}): {} keys put, {} deleted, {} replicated keys compared in {:.2}s ({:.0} keys/s){}{}{}",
        p.applied_revision,
        if p.resumed { "resumed from checkpoint" } else { "initial copy" },
        p.put_keys,
        p.deleted_keys,
        p.copy_compared_keys,
        secs,
        p.put_keys as f64 / secs.max(1e-9),
        if p.resyncs > 0 { format!(", {} full resync(s)", p.resyncs) } else { String::new() },
        p.rewound.map(|(had, head)| format!(", the source's history went back (had {had}, its head {head})")).unwrap_or_default(),
        match &p.archive {
            Some(m) => format!("; {} destination values replaced were saved first in archive {} ({}; drctl archive list)", p.archived_keys, m.id, m.reason),
            None => String::new(),
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// Fails when --source and --dest reach one etcd cluster (compared by cluster ID).
async fn refuse_same_etcd((source, dest): &(Endpoint, Endpoint)) -> anyhow::Result<()> {
    let (mut s, mut d) = (etcd::connect(source).await?.kv, etcd::connect(dest).await?.kv);
    let (source_id, _) = etcd::head(&mut s).await.context("reach the source etcd")?;
    let (dest_id, _) = etcd::head(&mut d).await.context("reach the destination etcd")?;
    etcd::distinct(source_id, dest_id)?;
    Ok(())
}

/// A line of progress in the log every 30 seconds while mirroring.
fn log_progress(rx: tokio::sync::watch::Receiver<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            let p = rx.borrow().clone();
            tracing::info!(
                phase = ?p.phase,
                source_revision = p.source_revision,
                applied_revision = p.applied_revision,
                lag_revisions = p.lag_revisions(),
                put = p.put_keys,
                deleted = p.deleted_keys,
                last_error = p.last_error.as_deref().unwrap_or(""),
                "mirror progress"
            );
        }
    })
}

/// A progress bar on the terminal, fed by the mirror's progress channel.
fn show_progress(mut rx: tokio::sync::watch::Receiver<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} keys {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            bar.set_length(p.copy_total_keys);
            bar.set_position(p.copy_compared_keys);
            bar.set_message(format!("{:?}, revision {}/{}", p.phase, p.applied_revision, p.source_revision));
        }
        bar.finish_and_clear();
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("signalled: stopping");
}

async fn check(etcd: &EtcdArgs, exclude: &ExcludeArgs, json: bool, repair: bool, prune: bool, list: usize, max_read_rate: u64) -> anyhow::Result<ExitCode> {
    let (source, dest) = etcd.endpoints()?;
    let filter = exclude.filter()?;
    let (src, dst) = (etcd::connect(&source).await?, etcd::connect(&dest).await?);
    let opts = CheckOptions { list_limit: list, max_read_rate: Some(max_read_rate).filter(|r| *r > 0), ..CheckOptions::default() };
    let mut found = check::run(&src, &dst, &filter, &opts).await?;
    if repair && !found.differences.is_empty() {
        found.report.repair = Some(check::repair(&src, &dst, &filter, &found.differences, prune).await?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found.report)?);
    } else {
        print!("{}", found.report);
    }
    Ok(if found.report.consistent { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// The latest failover record in the status of the (oldest) DRTopology a kubeconfig reaches.
async fn failover_record(kubeconfig: &std::path::Path) -> anyhow::Result<Option<topology::FailoverStatus>> {
    let client = crate::controller::client(Some(kubeconfig)).await?;
    let api: kube::Api<topology::DRTopology> = kube::Api::all(client);
    let list = api.list(&Default::default()).await.context("listing DRTopology")?;
    let oldest = topology::oldest(list.items);
    Ok(oldest.and_then(|t| t.status).and_then(|s| s.failover))
}

async fn dns_resolve(name: &str, resolvers: &[std::net::SocketAddr]) -> anyhow::Result<ExitCode> {
    let resolvers = dns::verify_resolvers(resolvers)?;
    let mut failed = false;
    for answer in dns::ask_all(&resolvers, name, Duration::from_secs(3)).await {
        match answer.result {
            Ok(addrs) if addrs.is_empty() => println!("{}: no address", answer.resolver),
            Ok(addrs) => {
                let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!("{}: {}", answer.resolver, shown.join(", "));
            }
            Err(e) => {
                failed = true;
                println!("{}: error: {e}", answer.resolver);
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn validate_files(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let shown = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("{shown}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        let reports = match validate::validate_text(&text) {
            Ok(r) => r,
            Err(e) => {
                println!("{shown}: not valid YAML at {e}");
                failed = true;
                continue;
            }
        };
        if reports.is_empty() {
            println!("{shown}: no documents; expected a DRTopology");
            failed = true;
        }
        let multi = reports.len() > 1;
        for r in reports {
            let label = match (&r.name, multi) {
                (Some(n), true) => format!("{shown} (document {}, {n})", r.index),
                (Some(n), false) => format!("{shown} ({n})"),
                (None, _) => format!("{shown} (document {})", r.index),
            };
            if r.errors.is_empty() {
                let primary = r.topology.as_ref().map(|t| t.spec.primary.as_str()).unwrap_or("?");
                println!("{label}: valid; primary {primary}");
            } else {
                failed = true;
                for e in &r.errors {
                    println!("{label}: {e}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The error and its causes for stderr. A cause is added only when the text so far does not
/// already say it: most of drctl's errors quote their source, and `{:#}` would repeat it.
/// The lab lives in its own binary, so the controller carries none of it: `drctl lab ARGS`
/// becomes `drctl-lab ARGS`, found next to this executable, else on `PATH`. Returns only on
/// failure.
fn exec_lab(args: &[std::ffi::OsString]) -> LabExecError {
    use std::os::unix::process::CommandExt;
    let Some(lab) = crate::lab_view::sibling_or_on_path(LAB_BINARY) else {
        let exe = std::env::current_exe().unwrap_or_default();
        return LabExecError::NotFound { beside: exe.parent().map(|d| d.display().to_string()).unwrap_or_default() };
    };
    let source = std::process::Command::new(&lab).args(args).exec();
    LabExecError::Exec { path: lab.display().to_string(), source }
}

const LAB_BINARY: &str = "drctl-lab";

#[derive(Debug, thiserror::Error)]
pub enum LabExecError {
    #[error("drctl lab runs the {LAB_BINARY} binary, which is neither in {beside} nor on PATH: build it with `cargo build --workspace --bins` (or install it with `cargo install --path crates/lab`)")]
    NotFound { beside: String },
    #[error("run {path}: {source}")]
    Exec { path: String, source: std::io::Error },
}

pub fn report(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("open the repository: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[test]
    fn report_says_each_cause_once() {
        let quoting = anyhow::Error::new(Quoting { source: std::io::Error::other("permission denied") });
        assert_eq!(report(&quoting), "open the repository: permission denied");
        let wrapped = anyhow::Error::new(std::io::Error::other("connection refused")).context("reach etcd at 10.0.0.1:2379");
        assert_eq!(report(&wrapped), "reach etcd at 10.0.0.1:2379: connection refused");
    }
}
