//! `drctl preflight`: from one global, every connection and permission a failover and the
//! standby's mirror will need, each checked for real and reported as a row (ok / warn / fail,
//! what was seen, how to fix it). Nothing here changes a cluster, a record or a hook's state:
//! every probe is a read, or (own etcd's write permission) a transaction whose compare never
//! holds, so etcd checks the permission of its put and writes nothing.
//!
//! The verdicts are pure functions of what was observed (table-tested below); [`run_checks`]
//! observes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::Client;
use serde::Serialize;

use crate::controller::peer::{self, kubeconfig_client};
use crate::dns::{self, Probe, ResolverAnswer};
use crate::etcd;
use crate::restart;
use crate::secret::KubeSecrets;
use crate::topology::{DRTopology, RestartScope};
use crate::validated::{Cluster, Hook, HookKind, ValidatedTopology};

/// How one check came out; the order is the severity (the worst row sets the exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
}

/// One finding: which check, against what, how it came out, what was seen, and the fix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub check: &'static str,
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Row {
    pub fn ok(check: &'static str, target: impl Into<String>, detail: impl Into<String>) -> Row {
        Row { check, target: target.into(), outcome: Outcome::Ok, detail: detail.into(), fix: None }
    }

    pub fn bad(check: &'static str, target: impl Into<String>, outcome: Outcome, detail: impl Into<String>, fix: impl Into<String>) -> Row {
        Row { check, target: target.into(), outcome, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// The exit code of `drctl preflight`: 0 when every row is ok, 1 with a warning, 2 with a failure.
pub fn exit_code(rows: &[Row]) -> u8 {
    match rows.iter().map(|r| r.outcome).max() {
        None | Some(Outcome::Ok) => 0,
        Some(Outcome::Warn) => 1,
        Some(Outcome::Fail) => 2,
    }
}

/// The failing (else warning) rows in one line, for a condition message.
pub fn summary(rows: &[Row]) -> String {
    let worst = rows.iter().map(|r| r.outcome).max().unwrap_or(Outcome::Ok);
    if worst == Outcome::Ok {
        return format!("all {} checks passed", rows.len());
    }
    let listed: Vec<String> = rows.iter().filter(|r| r.outcome == worst).map(|r| format!("{} {}: {}", r.check, r.target, r.detail)).collect();
    let what = if worst == Outcome::Fail { "failed" } else { "warned" };
    format!("{} of {} checks {what}: {}", listed.len(), rows.len(), listed.join("; "))
}

/// What the maintenance API said of the etcd member drctl's client reached.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberFacts {
    pub version: String,
    pub leader: u64,
    pub errors: Vec<String>,
    pub members: usize,
}

/// A member without a leader, or reporting errors (e.g. NOSPACE alarms), fails: writes stall.
pub fn members_verdict(target: &str, f: &MemberFacts) -> Row {
    let detail = format!("etcd {}, {} member(s), leader {:x}", f.version, f.members, f.leader);
    if !f.errors.is_empty() {
        return Row::bad(
            "etcd.members",
            target,
            Outcome::Fail,
            format!("{detail}; errors: {}", f.errors.join(", ")),
            "clear the member's alarms (etcdctl alarm list / disarm after compacting and defragmenting)",
        );
    }
    if f.leader == 0 {
        return Row::bad(
            "etcd.members",
            target,
            Outcome::Fail,
            format!("{detail}; no leader"),
            "restore quorum: a majority of the members must run and reach each other",
        );
    }
    Row::ok("etcd.members", target, detail)
}

/// What a version skew check compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Kubernetes,
    Etcd,
}

/// (major, minor) of `v1.34.4`, `1.34.4-rc.0`, `3.6.5`.
fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor.parse().ok()?))
}

/// Both globals should run one minor version: the copied objects are stored by one apiserver's
/// codecs and read by the other's. One minor apart warns (Kubernetes reads n-1 storage
/// versions); more, or another major, fails.
pub fn skew_verdict(component: Component, own: (&str, &str), peer: (&str, &str)) -> Row {
    let (check, what) = match component {
        Component::Kubernetes => ("kubernetes.versions", "kube-apiserver"),
        Component::Etcd => ("etcd.versions", "etcd"),
    };
    let target = format!("{} / {}", own.0, peer.0);
    let detail = format!("{what} {} on {}, {} on {}", own.1, own.0, peer.1, peer.0);
    let fix = format!("upgrade {what} so both globals run the same minor version before relying on a failover");
    match (major_minor(own.1), major_minor(peer.1)) {
        (Some(a), Some(b)) if a == b => Row::ok(check, target, detail),
        (Some((ma, a)), Some((mb, b))) if ma == mb && a.abs_diff(b) == 1 => Row::bad(check, target, Outcome::Warn, format!("{detail}: one minor apart"), fix),
        (Some(_), Some(_)) => Row::bad(check, target, Outcome::Fail, format!("{detail}: beyond the supported skew"), fix),
        _ => Row::bad(check, target, Outcome::Warn, format!("{detail}: not a version drctl can compare"), "compare the versions by hand"),
    }
}

/// Within 2 s the globals agree (an HTTP Date has 1 s resolution); up to 30 s lag, check ages
/// and the heartbeat-measured RPO read wrong by that much; beyond, they mislead.
pub fn clock_verdict(target: &str, offset_seconds: f64) -> Row {
    let detail = format!("the peer's clock is {offset_seconds:+.1}s from this one (its apiserver's Date header)");
    let fix = "synchronize both globals' clocks (NTP/chrony on every control-plane node)";
    match offset_seconds.abs() {
        o if o <= 2.0 => Row::ok("clock.offset", target, detail),
        o if o <= 30.0 => Row::bad("clock.offset", target, Outcome::Warn, detail, fix),
        _ => Row::bad("clock.offset", target, Outcome::Fail, detail, fix),
    }
}

/// Both globals must share the encryption config, or the standby cannot decrypt what it copied.
pub fn encryption_verdict(target: &str, own: &Result<String, String>, peer: Option<&str>, mismatch_allowed: bool) -> Row {
    let check = "encryption.config";
    let short = |s: &str| s.chars().take(12).collect::<String>();
    match (own, peer) {
        (Err(e), _) => Row::bad(
            check,
            target,
            Outcome::Warn,
            format!("this global's config not read: {e}"),
            "run preflight where spec.clusters[].encryptionConfigPath is readable (a control-plane node), or rely on the controller's status",
        ),
        (Ok(_), None) => Row::bad(
            check,
            target,
            Outcome::Warn,
            "the peer's fingerprint is unknown (its file is not readable here and its status has none)",
            "let the peer's controller record status.encryptionConfigSha256, or run preflight on the peer too",
        ),
        (Ok(a), Some(b)) if a == b => Row::ok(check, target, format!("sha256 {} on both globals", short(a))),
        (Ok(a), Some(b)) => Row::bad(
            check,
            target,
            if mismatch_allowed { Outcome::Warn } else { Outcome::Fail },
            format!("sha256 {} here, {} on the peer", short(a), short(b)),
            "give both globals the same /etc/kubernetes/encryption-provider.conf (copied values decrypt only with the same keys)",
        ),
    }
}

/// A verify resolver that answers no address warns (VerifyDNS would wait on it); one that does
/// not answer fails.
pub fn resolver_verdict(domain: &str, a: &ResolverAnswer) -> Row {
    let target = a.resolver.to_string();
    match &a.result {
        Ok(addrs) if addrs.is_empty() => Row::bad(
            "dns.resolver",
            target,
            Outcome::Warn,
            format!("answered no address for {domain}"),
            "check the resolver serves the platform zone (spec.dns.verify.resolvers)",
        ),
        Ok(_) => Row::ok("dns.resolver", target, a.to_string()),
        Err(e) => Row::bad(
            "dns.resolver",
            target,
            Outcome::Fail,
            format!("{domain}: {e}"),
            "fix spec.dns.verify.resolvers or the resolver: VerifyDNS asks each of them",
        ),
    }
}

/// A restart selecting nothing is not an error (the component may not run there) but is
/// usually a typo in the selector or namespace.
pub fn selector_verdict(target: &str, selector: &str, found: &[String]) -> Row {
    if found.is_empty() {
        return Row::bad(
            "restart.selector",
            target,
            Outcome::Warn,
            format!("{selector} selects nothing"),
            "check spec.restarts[].namespace and labelSelector against the running workloads",
        );
    }
    Row::ok("restart.selector", target, format!("{selector} selects {}", found.join(", ")))
}

/// A webhook hook answered a HEAD: any answer below 500 proves it reachable (a receiver may
/// refuse HEAD with 405); 5xx warns.
pub fn hook_verdict(target: &str, url: &str, status: u16) -> Row {
    if status >= 500 {
        return Row::bad("hook", target, Outcome::Warn, format!("HEAD {url} answered {status}"), "check the hook's receiver is healthy");
    }
    Row::ok("hook", target, format!("HEAD {url} answered {status}"))
}

/// How preflight runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Each probe's own limit.
    pub timeout: Duration,
    /// Send each webhook hook a HEAD (the CLI does; the controller's scheduled run does not
    /// knock on a receiver every few minutes, and reports the hooks as not probed).
    pub probe_hooks: bool,
}

/// Runs `fut` within `t`; a timeout is an error message.
async fn within<T, E: std::fmt::Display>(t: Duration, fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(format!("no answer within {t:?}")),
        Ok(r) => r.map_err(|e| e.to_string()),
    }
}

/// Every check from the global `self_name` (whose apiserver `local` reaches).
pub async fn run_checks(local: &Client, topo: &ValidatedTopology, self_name: &str, opts: &Options) -> Vec<Row> {
    let spec = &topo.spec;
    let mut rows = Vec::new();
    let (Some(me), Some(peer_c)) = (spec.cluster(self_name), spec.peer_of(self_name)) else {
        let names: Vec<&str> = spec.clusters.iter().map(|c| c.name.as_str()).collect();
        rows.push(Row::bad(
            "topology",
            self_name,
            Outcome::Fail,
            format!("{self_name:?} is not one of spec.clusters[].name ({})", names.join(", ")),
            "pass --cluster-name of this global",
        ));
        return rows;
    };
    let secrets = KubeSecrets::new(local.clone());

    // etcd: the mirror reads the primary's and writes the standby's; either may be either.
    let own = etcd_checks(&secrets, me, true, opts, &mut rows).await;
    let other = etcd_checks(&secrets, peer_c, false, opts, &mut rows).await;
    if let (Some((own_id, own_v)), Some((peer_id, peer_v))) = (&own, &other) {
        if let Err(e) = etcd::distinct(*own_id, *peer_id) {
            rows.push(Row::bad(
                "etcd.identity",
                format!("{} / {}", me.name, peer_c.name),
                Outcome::Fail,
                e.to_string(),
                format!("spec.clusters[{}].etcd.endpoints must reach {}'s own etcd", peer_index(spec, &peer_c.name), peer_c.name),
            ));
        }
        rows.push(skew_verdict(Component::Etcd, (&me.name, own_v), (&peer_c.name, peer_v)));
    }

    // The peer's apiserver: reachable with the kubeconfig Secret, which global it is, its clock.
    let own_version = within(opts.timeout, local.apiserver_version()).await.map(|i| i.git_version);
    let peer_version = peer_checks(local, topo, me, peer_c, opts, &mut rows).await;
    match (&own_version, &peer_version) {
        (Ok(a), Some(b)) => rows.push(skew_verdict(Component::Kubernetes, (&me.name, a), (&peer_c.name, b))),
        (Err(e), _) => rows.push(Row::bad("kubernetes.versions", &me.name, Outcome::Fail, format!("this global's apiserver: {e}"), "check --kubeconfig")),
        _ => {}
    }

    dns_checks(local, topo, opts, &mut rows).await;
    workload_checks(local, topo, opts, &mut rows).await;
    hook_checks(local, topo, opts, &mut rows).await;

    let cache = std::sync::Arc::new(crate::files::FingerprintCache::default());
    let own_sum =
        crate::files::fingerprint_bounded(cache.clone(), "encryptionConfigPath".into(), me.encryption_config_path.clone()).await.map_err(|e| e.to_string());
    // The peer's file when it is readable here (one machine, a shared mount), else what its
    // controller recorded.
    let peer_sum = match crate::files::fingerprint_bounded(cache, "encryptionConfigPath".into(), peer_c.encryption_config_path.clone()).await {
        Ok(s) if peer_c.encryption_config_path != me.encryption_config_path => Some(s),
        _ => peer_fingerprint(local, topo, &peer_c.name).await,
    };
    rows.push(encryption_verdict(&format!("{} / {}", me.name, peer_c.name), &own_sum, peer_sum.as_deref(), spec.failover.allow_encryption_config_mismatch));
    rows
}

fn peer_index(spec: &crate::validated::Spec, name: &str) -> usize {
    spec.clusters.iter().position(|c| c.name == name).unwrap_or(0)
}

/// The etcd rows of one global; its cluster ID and version when it answered.
async fn etcd_checks(secrets: &KubeSecrets, c: &Cluster, own: bool, opts: &Options, rows: &mut Vec<Row>) -> Option<(u64, String)> {
    let target = format!("{} ({})", c.name, if own { "own" } else { "peer" });
    let field = format!("spec.clusters[name={}].etcd", c.name);
    let fix =
        format!("check {field}.endpoints and {field}.tlsSecretRef (ca.crt, tls.crt, tls.key): this global must reach that etcd with that client certificate");
    let endpoint = match etcd::cluster_endpoint(secrets, c).await {
        Ok(e) => e,
        Err(e) => {
            rows.push(Row::bad("etcd.read", target, Outcome::Fail, e.to_string(), fix));
            return None;
        }
    };
    let mut conn = match within(opts.timeout, etcd::connect(&endpoint)).await {
        Ok(conn) => conn,
        Err(e) => {
            rows.push(Row::bad("etcd.read", target, Outcome::Fail, e, fix));
            return None;
        }
    };
    // What the mirror and the check read: the Kubernetes keyspace, counted.
    let prefix = crate::keyspace::REGISTRY_PREFIX.as_bytes();
    let count = etcd_client::GetOptions::new().with_range(crate::keyspace::prefix_end(prefix)).with_count_only();
    let (cluster_id, revision) = match within(opts.timeout, conn.kv.get(prefix.to_vec(), Some(count))).await {
        Ok(resp) => {
            let (id, rev) = resp.header().map(|h| (h.cluster_id(), h.revision())).unwrap_or_default();
            rows.push(Row::ok("etcd.read", &target, format!("{} keys under /registry/ at revision {rev}, cluster {id:x}", resp.count())));
            (id, rev)
        }
        Err(e) => {
            rows.push(Row::bad("etcd.read", target, Outcome::Fail, e, fix));
            return None;
        }
    };
    if own {
        rows.push(write_probe(&mut conn, &target, revision, opts).await);
    }
    let facts = async {
        let st = conn.client.status().await?;
        let members = conn.client.member_list().await?.members().len();
        Ok::<_, etcd_client::Error>(MemberFacts { version: st.version().to_string(), leader: st.leader(), errors: st.errors().to_vec(), members })
    };
    match within(opts.timeout, facts).await {
        Ok(f) => {
            rows.push(members_verdict(&target, &f));
            Some((cluster_id, f.version))
        }
        Err(e) => {
            rows.push(Row::bad(
                "etcd.members",
                target,
                Outcome::Fail,
                format!("maintenance status: {e}"),
                "the client certificate's user needs the maintenance Status and cluster MemberList calls",
            ));
            None
        }
    }
}

/// The standby's mirror writes its own etcd. A txn whose compare never holds (a key's version
/// is never negative) with a put of the mirror's checkpoint key in its success branch: etcd
/// checks the permission of every op of both branches, runs neither, and writes nothing.
async fn write_probe(conn: &mut etcd::Conn, target: &str, revision_before: i64, opts: &Options) -> Row {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let key = crate::checkpoint::CHECKPOINT_KEY;
    let txn = Txn::new().when([Compare::version(key, CompareOp::Less, 0)]).and_then([TxnOp::put(key, "preflight", None)]);
    match within(opts.timeout, conn.kv.txn(txn)).await {
        Ok(resp) if !resp.succeeded() => {
            let after = resp.header().map(|h| h.revision()).unwrap_or_default();
            Row::ok(
                "etcd.write",
                target,
                format!("a put of {key} is permitted (checked by a txn whose compare never holds; revision {revision_before} → {after}, nothing written)"),
            )
        }
        Ok(_) => {
            Row::bad("etcd.write", target, Outcome::Fail, "the never-true compare held: this is not an etcd drctl understands", "report this etcd's version")
        }
        Err(e) => Row::bad(
            "etcd.write",
            target,
            Outcome::Fail,
            e,
            "grant the client certificate's etcd user readwrite on the whole keyspace: the standby's mirror writes /registry/ and drctl's keys",
        ),
    }
}

/// The peer apiserver rows; its Kubernetes version when it answered.
async fn peer_checks(local: &Client, topo: &ValidatedTopology, me: &Cluster, peer_c: &Cluster, opts: &Options, rows: &mut Vec<Row>) -> Option<String> {
    let target = peer_c.name.clone();
    let secret = format!("{}/{}", peer_c.kubeconfig_secret_ref.namespace, peer_c.kubeconfig_secret_ref.name);
    let client = match peer::client_for(local, topo, &peer_c.name).await {
        Ok(c) => c,
        Err(e) => {
            rows.push(Row::bad(
                "peer.apiserver",
                target,
                Outcome::Fail,
                e.to_string(),
                format!("put a kubeconfig for {} under key kubeconfig of Secret {secret}", peer_c.name),
            ));
            return None;
        }
    };
    let (version, date, mid) = match within(opts.timeout, version_and_date(&client)).await {
        Ok(v) => v,
        Err(e) => {
            rows.push(Row::bad(
                "peer.apiserver",
                target,
                Outcome::Fail,
                e,
                format!("check {}'s apiserver ({}) is reachable from here and the kubeconfig in Secret {secret} is current", peer_c.name, peer_c.api_server),
            ));
            return None;
        }
    };
    rows.push(Row::ok("peer.apiserver", &target, format!("{} answered {version} through Secret {secret}", peer_c.api_server)));
    if let Some(d) = date {
        // The Date header is truncated to the second: its middle is half a second later.
        let offset = (d.as_millisecond() - mid.as_millisecond()) as f64 / 1000.0 + 0.5;
        rows.push(clock_verdict(&target, offset));
    } else {
        rows.push(Row::bad("clock.offset", &target, Outcome::Warn, "the peer's apiserver sent no Date header", "compare the clocks by hand"));
    }
    match peer::get_topology(&client, &peer_c.name, &topo.name()).await {
        Ok(Some(t)) if t.metadata.uid.is_some() && t.metadata.uid == topo.object().metadata.uid => rows.push(Row::bad(
            "peer.identity",
            &target,
            Outcome::Fail,
            format!("the kubeconfig in Secret {secret} reaches this global ({}), not {}", me.name, peer_c.name),
            format!("put {}'s own kubeconfig in Secret {secret}", peer_c.name),
        )),
        Ok(Some(t)) if t.spec.primary != topo.spec.primary => rows.push(Row::bad(
            "peer.identity",
            &target,
            Outcome::Warn,
            format!("its DRTopology names {} primary, this one {}", t.spec.primary, topo.spec.primary),
            "let Argo CD sync the same revision to both globals",
        )),
        Ok(Some(_)) => rows.push(Row::ok("peer.identity", &target, format!("DRTopology {} read; a distinct object naming the same primary", topo.name()))),
        Ok(None) => rows.push(Row::bad(
            "peer.identity",
            &target,
            Outcome::Warn,
            format!("no DRTopology {} there", topo.name()),
            "let Argo CD apply the topology to both globals",
        )),
        Err(e) => {
            let fix = if e.may_be_down() {
                "check the peer's apiserver".to_string()
            } else {
                format!("grant the user of Secret {secret}'s kubeconfig get on drtopologies.drctl.io (Preflight and Demote read the peer's DRTopology; nothing else there)")
            };
            rows.push(Row::bad("peer.identity", &target, Outcome::Fail, e.to_string(), fix));
        }
    }
    Some(version)
}

/// GET /version with the Date the server answered it at and the middle of the request's time.
async fn version_and_date(client: &Client) -> Result<(String, Option<Timestamp>, Timestamp), String> {
    let req = http::Request::get("/version").body(kube::client::Body::from(Vec::new())).map_err(|e| e.to_string())?;
    let t0 = Timestamp::now();
    let resp = client.send(req).await.map_err(|e| e.to_string())?;
    let t1 = Timestamp::now();
    let mid = Timestamp::from_millisecond((t0.as_millisecond() + t1.as_millisecond()) / 2).unwrap_or(t1);
    let status = resp.status();
    let date = resp.headers().get("date").and_then(|v| v.to_str().ok()).and_then(http_date);
    let body = resp.into_body().collect_bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let hint = if status.as_u16() == 401 { " (the credentials were rejected)" } else { "" };
        return Err(format!("GET /version answered {status}{hint}"));
    }
    let info: k8s_openapi::apimachinery::pkg::version::Info = serde_json::from_slice(&body).map_err(|e| format!("GET /version: {e}"))?;
    Ok((info.git_version, date, mid))
}

/// An HTTP `Date` (RFC 9110's IMF-fixdate, an RFC 2822 date in GMT).
fn http_date(s: &str) -> Option<Timestamp> {
    k8s_openapi::jiff::fmt::rfc2822::parse(s).ok().map(|z| z.timestamp())
}

async fn peer_fingerprint(local: &Client, topo: &ValidatedTopology, peer_name: &str) -> Option<String> {
    peer::read(local, topo, peer_name).await.ok().flatten()?.status?.encryption_config_sha256
}

async fn dns_checks(local: &Client, topo: &ValidatedTopology, opts: &Options, rows: &mut Vec<Row>) {
    let spec = &topo.spec;
    let secrets = KubeSecrets::new(local.clone());
    let ctx = dns::SwitchContext { secrets: &secrets, kube: Some(local.clone()), annotations: topo.annotations() };
    let provider = provider_name(&spec.dns.provider);
    rows.push(match within(opts.timeout, dns::probe(&spec.dns.provider, &spec.platform, &ctx)).await {
        Ok(Probe::Read(d)) => Row::ok("dns.provider", provider, d),
        Ok(Probe::NotReadable(d)) => Row::bad("dns.provider", provider, Outcome::Warn, d, "prove the provider by a drill or by hand: preflight cannot read it"),
        Err(e) => Row::bad(
            "dns.provider",
            provider,
            Outcome::Fail,
            e,
            format!("fix spec.dns.{provider} or the credentials its Secret holds: SwitchDNS makes this call first"),
        ),
    });
    match dns::verify_resolvers(&spec.dns.verify.resolvers) {
        Ok(resolvers) => {
            for a in dns::ask_all(&resolvers, &spec.platform.domain, opts.timeout).await {
                rows.push(resolver_verdict(&spec.platform.domain, &a));
            }
        }
        Err(e) => rows.push(Row::bad("dns.resolver", "system", Outcome::Fail, e.to_string(), "set spec.dns.verify.resolvers")),
    }
}

pub fn provider_name(p: &crate::validated::DnsProvider) -> &'static str {
    use crate::validated::DnsProvider as P;
    match p {
        P::Rfc2136(_) => "rfc2136",
        P::PowerDns(_) => "powerdns",
        P::ExternalDns(_) => "externalDns",
        P::Webhook(_) => "webhook",
        P::Manual(_) => "manual",
    }
}

/// Each workload cluster reached with its kubeconfig, and each restart's selector resolved where
/// it will run.
async fn workload_checks(local: &Client, topo: &ValidatedTopology, opts: &Options, rows: &mut Vec<Row>) {
    let spec = &topo.spec;
    let mut reached: Vec<(String, Client)> = Vec::new();
    for wc in &spec.workload_clusters {
        let secret = format!("{}/{}", wc.kubeconfig_secret_ref.namespace, wc.kubeconfig_secret_ref.name);
        let fix = format!("put a current kubeconfig for {} under key kubeconfig of Secret {secret}", wc.name);
        let client = match kubeconfig_client(local, &wc.kubeconfig_secret_ref).await {
            Ok(c) => c,
            Err(e) => {
                rows.push(Row::bad("workload.cluster", &wc.name, Outcome::Fail, e.to_string(), fix));
                continue;
            }
        };
        match within(opts.timeout, client.apiserver_version()).await {
            Ok(v) => {
                rows.push(Row::ok("workload.cluster", &wc.name, format!("{} through Secret {secret}", v.git_version)));
                reached.push((wc.name.clone(), client));
            }
            Err(e) => rows.push(Row::bad("workload.cluster", &wc.name, Outcome::Fail, e, fix)),
        }
    }
    for r in &spec.restarts {
        let clusters: Vec<(String, &Client)> = match r.scope {
            RestartScope::SelfCluster => vec![("this global".to_string(), local)],
            RestartScope::WorkloadClusters => reached.iter().map(|(n, c)| (n.clone(), c)).collect(),
        };
        for (where_, client) in clusters {
            let target = format!("{} in {where_}", r.name);
            let selector = format!("{}/{}", r.namespace, r.label_selector);
            rows.push(match within(opts.timeout, restart::selected(client, r)).await {
                Ok(found) => selector_verdict(&target, &selector, &found),
                Err(e) => {
                    Row::bad("restart.selector", target, Outcome::Fail, e, "grant drctl list (and patch/delete) on the restart's kinds in that namespace")
                }
            });
        }
    }
}

/// Hooks are never run: a webhook gets a HEAD (documented: receivers must not act on HEAD), a
/// Job hook its template parsed and its namespace read.
async fn hook_checks(local: &Client, topo: &ValidatedTopology, opts: &Options, rows: &mut Vec<Row>) {
    let f = &topo.spec.failover;
    for h in f.pre_hooks.iter().chain(&f.post_hooks) {
        if !opts.probe_hooks && matches!(h.kind, HookKind::Webhook(_)) {
            continue;
        }
        rows.push(hook_row(local, h, opts).await);
    }
}

async fn hook_row(local: &Client, h: &Hook, opts: &Options) -> Row {
    match &h.kind {
        HookKind::Webhook(w) => {
            let url = crate::urls::redact(&w.url);
            let head = async { reqwest::Client::builder().timeout(opts.timeout).build()?.head(&w.url).send().await.map_err(reqwest::Error::without_url) };
            match within(opts.timeout, head).await {
                Ok(resp) => hook_verdict(&h.name, &url, resp.status().as_u16()),
                Err(e) => Row::bad(
                    "hook",
                    &h.name,
                    Outcome::Fail,
                    format!("HEAD {url}: {e}"),
                    "check spec.failover.*Hooks[].webhook.url is reachable from this global",
                ),
            }
        }
        HookKind::Job(j) => {
            let spec = match serde_json::from_value::<k8s_openapi::api::batch::v1::JobSpec>(j.template.clone()) {
                Ok(s) => s,
                Err(e) => {
                    return Row::bad(
                        "hook",
                        &h.name,
                        Outcome::Fail,
                        format!("job template is not a batch/v1 JobSpec: {e}"),
                        "fix spec.failover.*Hooks[].job.template",
                    )
                }
            };
            // A server-side dry run: the apiserver and its admission judge the Job as the hook
            // would create it (with the `create jobs` drctl already holds); nothing is created.
            let job = k8s_openapi::api::batch::v1::Job {
                metadata: kube::api::ObjectMeta { generate_name: Some("drctl-preflight-".into()), ..Default::default() },
                spec: Some(spec),
                status: None,
            };
            let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(local.clone(), &j.namespace);
            let pp = kube::api::PostParams { dry_run: true, ..Default::default() };
            match within(opts.timeout, api.create(&pp, &job)).await {
                Ok(_) => Row::ok("hook", &h.name, format!("a dry-run create of its Job in {} was accepted", j.namespace)),
                Err(e) => Row::bad(
                    "hook",
                    &h.name,
                    Outcome::Fail,
                    format!("a dry-run create of its Job in {}: {e}", j.namespace),
                    "fix job.namespace (it must exist) or job.template, or grant drctl create on jobs there",
                ),
            }
        }
    }
}

/// A scheduled run of the checks.
type Run = tokio::task::JoinHandle<Vec<Row>>;

/// The controller's scheduled preflight: runs beside the reconciles (a run takes up to a few
/// probe timeouts), started when due and collected by a later reconcile.
#[derive(Default)]
pub struct Periodic {
    state: std::sync::Mutex<(Option<std::time::Instant>, Option<Run>)>,
}

impl Periodic {
    /// The rows of a run that finished since the last call, if any; starts a run (with `start`)
    /// when none runs and the last started `interval` ago or never. A zero interval never runs.
    pub fn poll(&self, interval: Duration, start: impl FnOnce() -> tokio::task::JoinHandle<Vec<Row>>) -> Option<Vec<Row>> {
        use futures::FutureExt;
        let Ok(mut st) = self.state.lock() else { return None };
        let (started, task) = &mut *st;
        let mut done = None;
        if task.as_ref().is_some_and(|t| t.is_finished()) {
            // Finished: the handle is ready; a panicked run gives no rows.
            done = task.take().and_then(|t| t.now_or_never()).and_then(Result::ok);
        }
        if !interval.is_zero() && task.is_none() && started.is_none_or(|s| s.elapsed() >= interval) {
            *started = Some(std::time::Instant::now());
            *task = Some(start());
        }
        done
    }
}

/// The `Preflight` condition from a run's rows: True unless a row failed; the message
/// [`summary`], cut to what a condition message carries.
pub fn condition(rows: &[Row]) -> (bool, crate::decide::conditions::Reason, String) {
    use crate::decide::conditions::Reason;
    let reason = match rows.iter().map(|r| r.outcome).max() {
        Some(Outcome::Fail) => Reason::ChecksFailed,
        Some(Outcome::Warn) => Reason::ChecksWarned,
        _ => Reason::ChecksPassed,
    };
    let mut msg = summary(rows);
    if msg.len() > 1024 {
        let cut = (0..=1000).rev().find(|i| msg.is_char_boundary(*i)).unwrap_or(0);
        msg.truncate(cut);
        msg.push_str(" … (drctl preflight lists all)");
    }
    (reason != Reason::ChecksFailed, reason, msg)
}

/// `drctl preflight`.
#[derive(clap::Args, Debug)]
pub struct PreflightArgs {
    /// This global's kubeconfig [default: $KUBECONFIG, else in-cluster].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Which of spec.clusters[].name this global is.
    #[arg(long)]
    cluster_name: String,
    /// The DRTopology [default: the oldest in the cluster].
    #[arg(long)]
    name: Option<String>,
    /// Print the rows as one JSON document.
    #[arg(long)]
    json: bool,
    /// Each probe's own time limit.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = |s: &str| crate::validate::parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| format!("{s:?} is not a duration like 5s")))]
    timeout: Duration,
}

/// The DRTopology `name` (else the oldest in the cluster), validated: what `drctl preflight`
/// and `drctl drill` act on.
pub async fn load_topology(client: &Client, name: Option<&str>) -> anyhow::Result<ValidatedTopology> {
    let api: Api<DRTopology> = Api::all(client.clone());
    let topo = match name {
        Some(n) => api.get(n).await?,
        None => crate::topology::oldest(api.list(&Default::default()).await?.items).ok_or_else(|| anyhow::anyhow!("no DRTopology in this cluster"))?,
    };
    ValidatedTopology::try_from(&topo).map_err(|errs| {
        anyhow::anyhow!("the DRTopology is invalid (`drctl validate` says more): {}", errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    })
}

/// Reads the topology, runs every check, prints the rows; exit 0 / 1 / 2 by the worst row.
pub async fn run(args: PreflightArgs, client: Client) -> anyhow::Result<ExitCode> {
    let topo = load_topology(&client, args.name.as_deref()).await?;
    let rows = run_checks(&client, &topo, &args.cluster_name, &Options { timeout: args.timeout, probe_hooks: true }).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "cluster": args.cluster_name, "rows": rows, "exitCode": exit_code(&rows) }))?);
    } else {
        print!("{}", render(&rows));
    }
    Ok(ExitCode::from(exit_code(&rows)))
}

/// The rows as a table, each failing one followed by its fix.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let w = rows.iter().map(|r| r.check.len()).max().unwrap_or(0);
    let t = rows.iter().map(|r| r.target.chars().count()).max().unwrap_or(0).min(40);
    for r in rows {
        let o = match r.outcome {
            Outcome::Ok => "ok",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        };
        out.push_str(&format!("{o:<4}  {:<w$}  {:<t$}  {}\n", r.check, r.target, r.detail));
        if let Some(f) = &r.fix {
            out.push_str(&format!("      fix: {f}\n"));
        }
    }
    out.push_str(&format!("{}\n", summary(rows)));
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn row(o: Outcome) -> Row {
        Row { check: "x", target: "t".into(), outcome: o, detail: "d".into(), fix: None }
    }

    #[test]
    fn the_worst_row_sets_the_exit_code() {
        let cases: [(&[Outcome], u8); 5] = [
            (&[], 0),
            (&[Outcome::Ok, Outcome::Ok], 0),
            (&[Outcome::Ok, Outcome::Warn], 1),
            (&[Outcome::Warn, Outcome::Fail, Outcome::Ok], 2),
            (&[Outcome::Fail], 2),
        ];
        for (outcomes, want) in cases {
            let rows: Vec<Row> = outcomes.iter().map(|o| row(*o)).collect();
            assert_eq!(exit_code(&rows), want, "{outcomes:?}");
        }
    }

    #[test]
    fn the_summary_lists_only_the_worst_rows() {
        let mut rows = vec![row(Outcome::Ok), row(Outcome::Warn), row(Outcome::Fail)];
        rows[2].check = "etcd.read";
        assert_eq!(summary(&rows), "1 of 3 checks failed: etcd.read t: d");
        assert_eq!(summary(&rows[..2]), "1 of 2 checks warned: x t: d");
        assert_eq!(summary(&rows[..1]), "all 1 checks passed");
    }

    #[test]
    fn the_condition_is_false_only_on_a_failure() {
        use crate::decide::conditions::Reason;
        let c = |o: &[Outcome]| {
            let rows: Vec<Row> = o.iter().map(|o| row(*o)).collect();
            let (ok, reason, _) = condition(&rows);
            (ok, reason)
        };
        assert_eq!(c(&[Outcome::Ok]), (true, Reason::ChecksPassed));
        assert_eq!(c(&[Outcome::Ok, Outcome::Warn]), (true, Reason::ChecksWarned));
        assert_eq!(c(&[Outcome::Warn, Outcome::Fail]), (false, Reason::ChecksFailed));
        let long: Vec<Row> = (0..100).map(|_| row(Outcome::Fail)).collect();
        assert!(condition(&long).2.len() < 1100, "a condition message stays short");
    }

    #[tokio::test]
    async fn a_scheduled_run_starts_when_due_and_is_collected_once() {
        let p = Periodic::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(p.poll(hour, || tokio::spawn(async { vec![row(Outcome::Ok)] })), None, "started, not finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = || -> tokio::task::JoinHandle<Vec<Row>> { panic!("not due again within the interval") };
        assert_eq!(p.poll(hour, again).map(|r| r.len()), Some(1), "collected");
        assert_eq!(p.poll(hour, again), None, "collected once");
        assert_eq!(Periodic::default().poll(Duration::ZERO, again), None, "a zero interval never runs");
    }

    #[test]
    fn versions_one_minor_apart_warn_and_further_fail() {
        let cases = [
            ("v1.34.4", "v1.34.1", Outcome::Ok),
            ("v1.34.4", "v1.33.9", Outcome::Warn),
            ("v1.34.4", "v1.32.0", Outcome::Fail),
            ("v1.34.4", "v2.34.0", Outcome::Fail),
            ("3.6.5", "3.6.0", Outcome::Ok),
            ("3.6.5", "3.5.17", Outcome::Warn),
            ("v1.34.0-rc.1", "v1.34.2", Outcome::Ok),
            ("v1.34.4", "unknown", Outcome::Warn),
        ];
        for (a, b, want) in cases {
            assert_eq!(skew_verdict(Component::Kubernetes, ("a", a), ("b", b)).outcome, want, "{a} vs {b}");
        }
    }

    #[test]
    fn an_http_date_parses() {
        assert_eq!(http_date("Sat, 05 Dec 2026 19:44:23 GMT").map(|t| t.as_second()), Some(1_796_499_863));
        assert_eq!(http_date("yesterday"), None);
    }

    #[test]
    fn clock_offsets_within_the_date_resolution_pass() {
        for (offset, want) in
            [(0.0, Outcome::Ok), (-1.9, Outcome::Ok), (2.5, Outcome::Warn), (-30.0, Outcome::Warn), (31.0, Outcome::Fail), (-600.0, Outcome::Fail)]
        {
            assert_eq!(clock_verdict("b", offset).outcome, want, "{offset}");
        }
    }

    #[test]
    fn the_encryption_config_must_match_unless_allowed() {
        let (a, b) = (Ok::<_, String>("aaaa".to_string()), "bbbb");
        assert_eq!(encryption_verdict("t", &a, Some("aaaa"), false).outcome, Outcome::Ok);
        assert_eq!(encryption_verdict("t", &a, Some(b), false).outcome, Outcome::Fail);
        assert_eq!(encryption_verdict("t", &a, Some(b), true).outcome, Outcome::Warn, "allowEncryptionConfigMismatch");
        assert_eq!(encryption_verdict("t", &a, None, false).outcome, Outcome::Warn, "the peer's fingerprint unknown");
        assert_eq!(encryption_verdict("t", &Err("no such file".into()), Some(b), false).outcome, Outcome::Warn, "ours unreadable");
    }

    #[test]
    fn a_member_without_leader_or_with_alarms_fails() {
        let ok = MemberFacts { version: "3.6.5".into(), leader: 7, errors: vec![], members: 3 };
        assert_eq!(members_verdict("a", &ok).outcome, Outcome::Ok);
        assert_eq!(members_verdict("a", &MemberFacts { leader: 0, ..ok.clone() }).outcome, Outcome::Fail);
        assert_eq!(members_verdict("a", &MemberFacts { errors: vec!["NOSPACE".into()], ..ok }).outcome, Outcome::Fail);
    }

    #[test]
    fn resolvers_selectors_and_hooks() {
        let r: SocketAddr = "127.0.0.1:53".parse().expect("addr");
        let ans = |result| ResolverAnswer { resolver: r, result };
        assert_eq!(resolver_verdict("p", &ans(Ok(vec!["127.0.0.10".parse().expect("ip")]))).outcome, Outcome::Ok);
        assert_eq!(resolver_verdict("p", &ans(Ok(vec![]))).outcome, Outcome::Warn);
        assert_eq!(resolver_verdict("p", &ans(Err("timeout".into()))).outcome, Outcome::Fail);
        assert_eq!(selector_verdict("vm", "ns/app=vm", &[]).outcome, Outcome::Warn);
        assert_eq!(selector_verdict("vm", "ns/app=vm", &["Pod/vmselect-0".to_string()]).outcome, Outcome::Ok);
        assert_eq!(hook_verdict("h", "u", 405).outcome, Outcome::Ok, "a receiver refusing HEAD is still reachable");
        assert_eq!(hook_verdict("h", "u", 503).outcome, Outcome::Warn);
    }
}
