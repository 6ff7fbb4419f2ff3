//! The I/O of `drctl status`: each global's DRTopology and Argo CD Application through its own
//! kubeconfig (both asked at once, each within a short timeout), then the platform domain from
//! the resolvers. Read-only: nothing here writes to a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{ClusterView, Observed, StatusReport};
use crate::argocd::{self, ArgoView};
use crate::dns::{self, ResolverAnswer};
use crate::topology::{self, DRTopology};

/// One DNS query's limit: the resolvers are asked after the globals answered.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("--cluster {0:?}: expected NAME=KUBECONFIG with NAME one of spec.clusters[].name, e.g. --cluster global-a=$HOME/.kube/global-a")]
    ClusterArg(String),
    #[error("--cluster: got {got} global(s) ({names}); give both globals, each once: --cluster NAME=KUBECONFIG --cluster NAME=KUBECONFIG")]
    ClusterCount { got: usize, names: String },
    #[error("--cluster {cluster}={path}: {message}; pass a readable kubeconfig for that global")]
    Kubeconfig { cluster: String, path: String, message: String },
    #[error("--cluster {a} and --cluster {b} reach the same global ({why}); one of the kubeconfigs is for the wrong cluster: give each global's own")]
    SameGlobal { a: String, b: String, why: String },
    #[error(transparent)]
    Lab(#[from] crate::lab_view::LabViewError),
}

/// A global and the kubeconfig that reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub kubeconfig: PathBuf,
}

/// `NAME=KUBECONFIG`, as `--cluster` takes it.
pub fn parse_target(s: &str) -> Result<Target, StatusError> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(Target { name: name.to_string(), kubeconfig: PathBuf::from(path) }),
        _ => Err(StatusError::ClusterArg(s.to_string())),
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::validate::parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| format!("{s:?} is not a duration like 5s or 500ms"))
}

/// A `--resolver` flag: `ip` or `ip:port`.
pub(crate) fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    crate::validate::parse_resolver(s).ok_or_else(|| format!("{s:?} is not ip or ip:port"))
}

/// `drctl status`: the globals by kubeconfig, or the local lab's.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("globals").required(true).args(["clusters", "lab"])))]
pub struct StatusArgs {
    /// A global and its kubeconfig, NAME one of spec.clusters[].name; give both globals.
    #[arg(long = "cluster", value_name = "NAME=KUBECONFIG", value_parser = |s: &str| parse_target(s).map_err(|e| e.to_string()))]
    clusters: Vec<Target>,
    /// Read the globals and the DNS server of the local lab in DIR [default: $DRCTL_LAB_DIR, else $TMPDIR/drctl-lab].
    #[arg(long, value_name = "DIR", num_args = 0..=1, conflicts_with = "clusters")]
    lab: Option<Option<PathBuf>>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// How long each global may take to answer (both are asked at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Ask this resolver for the platform domain instead of spec.dns.verify.resolvers (ip or
    /// ip:port; repeatable), e.g. when those are only reachable inside the cluster.
    #[arg(long = "resolver", value_name = "IP[:PORT]", value_parser = parse_resolver)]
    resolvers: Vec<SocketAddr>,
    /// Namespace of the Argo CD Application that applies the DRTopology; default the
    /// topology's spec.argocd.namespace (`argocd` when the global has none).
    #[arg(long)]
    argocd_namespace: Option<String>,
    /// Name of the Argo CD Application that applies the DRTopology.
    #[arg(long, default_value = argocd::APPLICATION)]
    argocd_application: String,
}

/// How to read the pair.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeout: Duration,
    /// Empty: spec.dns.verify.resolvers (the system's when that is empty too).
    pub resolvers: Vec<SocketAddr>,
    /// None: each global's DRTopology's `spec.argocd.namespace`.
    pub argocd_namespace: Option<String>,
    pub argocd_application: String,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut opts =
        Options { timeout: args.timeout, resolvers: args.resolvers, argocd_namespace: args.argocd_namespace, argocd_application: args.argocd_application };
    let targets = match args.lab {
        Some(dir) => {
            let lab = crate::lab_view::LabView::require(&dir.unwrap_or_else(crate::lab_view::default_dir))?;
            if opts.resolvers.is_empty() {
                opts.resolvers = vec![lab.dns_server];
            }
            lab.globals.into_iter().map(|(name, kubeconfig)| Target { name, kubeconfig }).collect()
        }
        None => args.clusters,
    };
    let report = read(&targets, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", super::render_table(&report));
    }
    Ok(ExitCode::from(report.exit_code))
}

/// Reads both globals at once, then the DNS answer, and judges them.
pub async fn read(targets: &[Target], opts: &Options) -> Result<StatusReport, StatusError> {
    let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if targets.len() != 2 || names.len() != 2 {
        return Err(StatusError::ClusterCount { got: targets.len(), names: targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ") });
    }
    // A kubeconfig that cannot be read is the operator's mistake, not an unreachable global.
    let mut configs = Vec::new();
    for t in targets {
        configs.push((t.name.clone(), config(t).await?));
    }
    let urls: Vec<String> = configs.iter().map(|(_, c)| c.cluster_url.to_string()).collect();
    let views = futures::future::join_all(configs.into_iter().map(|(name, cfg)| observe_within(name, cfg, opts))).await;
    // The same global read twice would show its primary in both columns: a false split brain.
    let seen: Vec<(&str, &str, Option<&str>)> = views
        .iter()
        .zip(&urls)
        .map(|(v, url)| {
            let uid = v.observed.as_ref().ok().and_then(|o| o.topology.as_ref()?.metadata.uid.as_deref());
            (v.name.as_str(), url.as_str(), uid)
        })
        .collect();
    if let Some(e) = same_global(&seen) {
        return Err(e);
    }
    let dns = match views.iter().find_map(|v| v.observed.as_ref().ok()?.topology.as_ref()) {
        None => Ok(Vec::new()),
        Some(t) => ask_dns(t, &opts.resolvers).await,
    };
    Ok(super::report(&views, &dns, Timestamp::now()))
}

/// Two globals (name, apiserver URL, DRTopology uid) that are one: the same apiserver URL, or
/// the same DRTopology object (a uid is unique per cluster, so two URLs of one apiserver show).
fn same_global(seen: &[(&str, &str, Option<&str>)]) -> Option<StatusError> {
    let [(a, url_a, uid_a), (b, url_b, uid_b)] = seen else { return None };
    let why = if url_a == url_b {
        format!("both kubeconfigs name the apiserver {url_a}")
    } else if let Some(uid) = uid_a.filter(|u| Some(*u) == *uid_b) {
        format!("both hold the same DRTopology, uid {uid}, at {url_a} and {url_b}")
    } else {
        return None;
    };
    Some(StatusError::SameGlobal { a: a.to_string(), b: b.to_string(), why })
}

async fn ask_dns(t: &DRTopology, resolvers: &[SocketAddr]) -> Result<Vec<ResolverAnswer>, String> {
    // The topology may be invalid (status shows it anyway): its resolvers are read one by one.
    let configured = t.spec.dns.verify.resolvers.iter().map(|r| parse_resolver(r).map_err(|e| format!("spec.dns: verify.resolvers: {e}")));
    let resolvers =
        if resolvers.is_empty() { dns::verify_resolvers(&configured.collect::<Result<Vec<_>, _>>()?).map_err(|e| e.to_string())? } else { resolvers.to_vec() };
    Ok(dns::ask_all(&resolvers, &t.spec.platform.domain, DNS_TIMEOUT).await)
}

/// The kube config of `t`. Its requests are bounded by `observe_within` as a whole, so a global
/// that stalls anywhere (connect, TLS, response) reads as one message.
async fn config(t: &Target) -> Result<kube::Config, StatusError> {
    let fail = |message: String| StatusError::Kubeconfig { cluster: t.name.clone(), path: t.kubeconfig.display().to_string(), message };
    let kc = Kubeconfig::read_from(&t.kubeconfig).map_err(|e| fail(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| fail(e.to_string()))
}

async fn observe_within(name: String, cfg: kube::Config, opts: &Options) -> ClusterView {
    let url = cfg.cluster_url.to_string();
    let observed = match tokio::time::timeout(opts.timeout, observe(cfg, opts)).await {
        Ok(r) => r.map_err(|e| format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: no answer within {}", super::human_seconds(opts.timeout.as_secs_f64()))),
    };
    ClusterView { name, observed }
}

async fn observe(cfg: kube::Config, opts: &Options) -> Result<Observed, String> {
    let client = kube::Client::try_from(cfg).map_err(|e| causes(&e))?;
    let topologies: Api<DRTopology> = Api::all(client.clone());
    let params = kube::api::ListParams::default();
    let (topology, crd_installed) = match topologies.list(&params).await {
        Ok(list) => (topology::oldest(list.items), true),
        // The apiserver answered: it lacks the CRD, which is not the same as not answering.
        Err(kube::Error::Api(s)) if s.code == 404 => (None, false),
        Err(e) => return Err(format!("list DRTopology: {}", causes(&e))),
    };
    // Argo CD's namespace is the topology's, read after it (the flag overrides it).
    let namespace = opts.argocd_namespace.clone().or_else(|| Some(topology.as_ref()?.spec.argocd.namespace.clone()));
    let namespace = namespace.unwrap_or_else(|| crate::keyspace::DEFAULT_ARGOCD_NAMESPACE.to_string());
    let argocd = application(client, &namespace, &opts.argocd_application).await;
    Ok(Observed { topology, crd_installed, argocd })
}

/// The Argo CD Application, None when it (or Argo CD's CRD) does not exist.
async fn application(client: kube::Client, namespace: &str, name: &str) -> Result<Option<ArgoView>, String> {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application");
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &ApiResource::from_gvk_with_plural(&gvk, "applications"));
    let what = format!("read Application {namespace}/{name}");
    let app = match api.get(name).await {
        Ok(a) => a,
        // Without Argo CD's CRD the apiserver answers a bare 404 page, which kube's get_opt
        // does not read as NotFound.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(format!("{what}: {}", causes(&e))),
    };
    serde_json::to_value(app).map(|v| Some(ArgoView::from_json(&v))).map_err(|e| format!("{what}: {e}"))
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: Connection
/// refused"): kube's own message often leaves out the cause that says what happened.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
        next = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_argument_is_name_equals_kubeconfig() {
        assert_eq!(parse_target("global-a=/k/a").expect("parse"), Target { name: "global-a".into(), kubeconfig: "/k/a".into() });
        assert_eq!(parse_target("global-a=/k/a=b").expect("parse").kubeconfig, PathBuf::from("/k/a=b"));
        for bad in ["/k/a", "=/k/a", "global-a="] {
            let e = parse_target(bad).expect_err(bad).to_string();
            assert!(e.contains("expected NAME=KUBECONFIG"), "{e}");
        }
    }

    #[test]
    fn two_kubeconfigs_that_reach_one_global_are_refused() {
        let cases = [
            ([("global-a", "https://a:6443/", Some("u1")), ("global-b", "https://b:6443/", Some("u2"))], None),
            ([("global-a", "https://a:6443/", None), ("global-b", "https://b:6443/", None)], None),
            ([("global-a", "https://a:6443/", None), ("global-b", "https://a:6443/", None)], Some("both kubeconfigs name the apiserver https://a:6443/")),
            (
                [("global-a", "https://a:6443/", Some("u1")), ("global-b", "https://10.0.0.1:6443/", Some("u1"))],
                Some("both hold the same DRTopology, uid u1, at https://a:6443/ and https://10.0.0.1:6443/"),
            ),
            // One unreachable (no uid): nothing proves they are one.
            ([("global-a", "https://a:6443/", Some("u1")), ("global-b", "https://b:6443/", None)], None),
        ];
        for (seen, want) in cases {
            let got = same_global(&seen).map(|e| e.to_string());
            match want {
                None => assert_eq!(got, None, "{seen:?}"),
                Some(why) => {
                    let e = got.expect("refused");
                    assert!(e.starts_with("--cluster global-a and --cluster global-b reach the same global ("), "{e}");
                    assert!(e.contains(why), "{e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn both_globals_each_once_are_required() {
        let opts = Options { timeout: Duration::from_secs(1), resolvers: Vec::new(), argocd_namespace: None, argocd_application: "drtopology".into() };
        let a = Target { name: "global-a".into(), kubeconfig: "/nonexistent".into() };
        for targets in [vec![a.clone()], vec![a.clone(), a.clone()]] {
            let e = read(&targets, &opts).await.expect_err("refused").to_string();
            assert!(e.contains("give both globals, each once"), "{e}");
        }
        let b = Target { name: "global-b".into(), kubeconfig: "/nonexistent".into() };
        let e = read(&[a, b], &opts).await.expect_err("unreadable kubeconfig").to_string();
        assert!(e.starts_with("--cluster global-a=/nonexistent: "), "{e}");
    }
}
