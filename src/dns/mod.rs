//! Switching the platform domain's record to the new primary's VIP, and verifying that resolvers
//! answer it. One provider per file; this file holds the provider-neutral API the failover
//! executor calls and the decisions every provider shares.
//!
//! A switch is an idempotent *set*: the record for the domain becomes exactly one A (IPv4 target)
//! or AAAA (IPv6 target) record with the platform TTL, and the other family's record for the name
//! is removed, so dual-stack clients cannot keep reaching the old primary.

mod external_dns;
mod manual;
mod powerdns;
mod rfc2136;
pub mod webhook;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::secret::{KubeSecrets, SecretError, SecretSource};
use crate::topology::Platform;
use crate::validated::{DnsProvider, ValidatedTopology, Verify};

pub use manual::{manual_status, ManualStatus, CONFIRM_ANNOTATION};
pub use webhook::{json_post, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// One DNS query's own time limit; verification retries within its overall timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The record type a target address needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    A,
    Aaaa,
}

impl RecordKind {
    pub fn for_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => RecordKind::A,
            IpAddr::V6(_) => RecordKind::Aaaa,
        }
    }

    /// The other family, whose record for the name is removed.
    pub fn other(self) -> Self {
        match self {
            RecordKind::A => RecordKind::Aaaa,
            RecordKind::Aaaa => RecordKind::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "A",
            RecordKind::Aaaa => "AAAA",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider holds for the domain before a switch: every A and AAAA address, and the TTL
/// of the rrset of the target's type (None when that rrset does not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    pub addresses: Vec<IpAddr>,
    pub ttl: Option<u32>,
}

impl Current {
    /// True when the record is already exactly the target: nothing to change.
    pub fn is_set_to(&self, target: IpAddr, ttl: u32) -> bool {
        self.addresses == [target] && self.ttl == Some(ttl)
    }
}

/// What `switch` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchAction {
    /// The provider already held exactly the target; nothing was sent.
    Unchanged,
    /// The provider's record now holds the target.
    Updated,
    /// The change was handed to a system drctl cannot read back (webhook); verification tells.
    Requested,
    /// `manual`: an operator has to switch DNS and confirm; the message says how.
    WaitingForOperator(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchOutcome {
    pub provider: &'static str,
    pub domain: String,
    pub record: RecordKind,
    pub target: IpAddr,
    /// Addresses the provider held before, when it can be read.
    pub previous: Option<Vec<IpAddr>>,
    pub action: SwitchAction,
}

impl SwitchOutcome {
    /// True when the record is (or was handed off to become) the target; false while waiting for
    /// an operator.
    pub fn is_done(&self) -> bool {
        !matches!(self.action, SwitchAction::WaitingForOperator(_))
    }
}

impl fmt::Display for SwitchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, d, r, t) = (self.provider, &self.domain, self.record, self.target);
        let was = match &self.previous {
            Some(prev) => format!(" (was {})", list(prev)),
            None => String::new(),
        };
        match &self.action {
            SwitchAction::Unchanged => write!(f, "{p}: {d} {r} is already {t}; nothing changed"),
            SwitchAction::Updated => write!(f, "{p}: set {d} {r} {t}{was}"),
            SwitchAction::Requested => write!(f, "{p}: requested {d} {r} {t}"),
            SwitchAction::WaitingForOperator(m) => write!(f, "{p}: waiting for operator: {m}"),
        }
    }
}

/// Everything a provider may need besides the spec.
pub struct SwitchContext<'a> {
    pub secrets: &'a dyn SecretSource,
    /// This cluster's API, for providers that write Kubernetes objects (external-dns).
    pub kube: Option<kube::Client>,
    /// The DRTopology's annotations, where an operator confirms a manual switch.
    pub annotations: &'a BTreeMap<String, String>,
}

/// Errors name the server, zone, key name or Secret involved, never secret values.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("spec.dns: {0}")]
    Config(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{what} in Secret {namespace}/{name} is not usable: {reason}")]
    BadSecret { what: &'static str, namespace: String, name: String, reason: String },
    #[error("DNS server {server}: {source}")]
    Io {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS server {server} did not answer within {after:?}")]
    Timeout { server: String, after: Duration },
    #[error("DNS server {server}: {message}")]
    Protocol { server: String, message: String },
    #[error("DNS server {server} refused the update of zone {zone}: {message}")]
    Refused { server: String, zone: String, message: String },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}: {body}")]
    HttpStatus { url: String, status: u16, body: String },
    #[error("{object}: {source}")]
    Kube {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    VerifyTimeout(String),
}

impl DnsError {
    fn bad_secret(what: &'static str, r: &crate::topology::SecretRef, reason: &str) -> Self {
        DnsError::BadSecret { what, namespace: r.namespace.clone(), name: r.name.clone(), reason: reason.to_string() }
    }
}

/// Sets the platform domain's record to `target` through the configured provider.
#[tracing::instrument(skip_all, fields(domain = %platform.domain, %target))]
pub async fn switch(provider: &DnsProvider, platform: &Platform, target: IpAddr, ctx: &SwitchContext<'_>) -> Result<SwitchOutcome, DnsError> {
    let outcome = match provider {
        DnsProvider::Rfc2136(p) => rfc2136::switch(p, platform, target, ctx.secrets).await?,
        DnsProvider::PowerDns(p) => powerdns::switch(p, platform, target, ctx.secrets).await?,
        DnsProvider::ExternalDns(p) => {
            let Some(client) = &ctx.kube else {
                return Err(DnsError::Config("externalDns needs a Kubernetes client".into()));
            };
            external_dns::switch(p, platform, target, client).await?
        }
        DnsProvider::Webhook(p) => webhook::switch(p, platform, target, ctx.secrets).await?,
        DnsProvider::Manual(p) => manual::switch(p, platform, target, ctx.annotations),
    };
    info!(outcome = %outcome, "dns switch");
    Ok(outcome)
}

/// Sets the platform domain's record to `target` with the topology's provider, on behalf of the
/// cluster whose API `client` reaches (its Secrets, its external-dns objects, the topology's
/// annotations for a manual switch): the runbook's SwitchDNS and a primary's DNS repair.
pub async fn switch_for(topo: &ValidatedTopology, client: &kube::Client, target: IpAddr) -> Result<SwitchOutcome, DnsError> {
    let secrets = KubeSecrets::new(client.clone());
    let ctx = SwitchContext { secrets: &secrets, kube: Some(client.clone()), annotations: topo.annotations() };
    switch(&topo.spec.dns.provider, &topo.spec.platform, target, &ctx).await
}

/// What a preflight read of the DNS provider found, without changing any record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The provider answered a read made with drctl's credentials.
    Read(String),
    /// The provider offers no read drctl can make; the message says what was checked instead.
    NotReadable(String),
}

/// Preflight: one read call to the provider with its credentials (PowerDNS: GET the zone;
/// RFC 2136: the zone's SOA from the server, the TSIG key parsed; external-dns: GET the
/// DNSEndpoint; webhook: its HMAC key read, the receiver not called, since any call is a
/// switch; manual: nothing to reach).
pub async fn probe(provider: &DnsProvider, platform: &Platform, ctx: &SwitchContext<'_>) -> Result<Probe, DnsError> {
    Ok(match provider {
        DnsProvider::PowerDns(p) => Probe::Read(powerdns::probe(p, platform, ctx.secrets).await?),
        DnsProvider::Rfc2136(p) => Probe::Read(rfc2136::probe(p, platform, ctx.secrets).await?),
        DnsProvider::ExternalDns(p) => {
            let Some(client) = &ctx.kube else {
                return Err(DnsError::Config("externalDns needs a Kubernetes client".into()));
            };
            Probe::Read(external_dns::probe(p, client).await?)
        }
        DnsProvider::Webhook(p) => {
            let key = ctx.secrets.get(&p.hmac_secret_ref, "hmacKey").await?;
            if key.expose().is_empty() {
                return Err(DnsError::bad_secret("webhook HMAC key", &p.hmac_secret_ref, "empty"));
            }
            Probe::NotReadable(format!("HMAC key read; {} not called (every call is a switch)", crate::urls::redact(&p.url)))
        }
        DnsProvider::Manual(_) => Probe::NotReadable("manual: an operator switches DNS; nothing to reach".into()),
    })
}

/// The addresses (A and AAAA) of one name as one resolver answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverAnswer {
    pub resolver: SocketAddr,
    /// The addresses, or why the resolver gave none (timeout, SERVFAIL, ...).
    pub result: Result<Vec<IpAddr>, String>,
}

impl ResolverAnswer {
    pub fn is(&self, target: IpAddr) -> bool {
        matches!(&self.result, Ok(a) if a == &[target])
    }
}

impl fmt::Display for ResolverAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(a) if a.is_empty() => write!(f, "{} answered no address", self.resolver),
            Ok(a) => write!(f, "{} answered {}", self.resolver, list(a)),
            Err(e) => write!(f, "{} failed: {e}", self.resolver),
        }
    }
}

fn list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "nothing".into();
    }
    addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// The A and AAAA addresses of `name` from the first of `resolvers` that answers (the system's
/// resolvers from /etc/resolv.conf when empty). A name without addresses gives an empty list.
pub async fn resolve(resolvers: &[SocketAddr], name: &str) -> Result<Vec<IpAddr>, DnsError> {
    let system;
    let resolvers = if resolvers.is_empty() {
        system = system_resolvers()?;
        &system[..]
    } else {
        resolvers
    };
    let mut last = None;
    for r in resolvers {
        match wire::lookup(*r, name, QUERY_TIMEOUT).await {
            Ok(a) => return Ok(a),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| DnsError::Config("no resolver to ask".into())))
}

/// Asks every resolver for `name`, concurrently.
pub async fn ask_all(resolvers: &[SocketAddr], name: &str, timeout: Duration) -> Vec<ResolverAnswer> {
    let asks = resolvers.iter().map(|r| async move {
        let result = wire::lookup(*r, name, timeout).await.map_err(|e| e.to_string());
        ResolverAnswer { resolver: *r, result }
    });
    futures::future::join_all(asks).await
}

/// How verification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOutcome {
    pub resolvers: Vec<SocketAddr>,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// `resolvers` (`spec.dns.verify.resolvers`), or the system's resolvers when there are none.
pub fn verify_resolvers(resolvers: &[SocketAddr]) -> Result<Vec<SocketAddr>, DnsError> {
    if resolvers.is_empty() {
        return system_resolvers();
    }
    Ok(resolvers.to_vec())
}

/// Resolves the platform domain through `spec.dns.verify.resolvers` until every one answers
/// exactly `target` (and no address of the other family). While any is wrong, calls `on_wrong`
/// with what each answered (the controller restarts CoreDNS there), then retries with backoff.
/// Gives up after `timeout` with an error naming what each resolver last answered.
pub async fn verify<F, Fut>(spec: &Verify, platform: &Platform, target: IpAddr, timeout: Duration, on_wrong: F) -> Result<VerifyOutcome, DnsError>
where
    F: FnMut(Vec<ResolverAnswer>) -> Fut,
    Fut: Future<Output = ()>,
{
    let resolvers = verify_resolvers(&spec.resolvers)?;
    verify_at(&resolvers, &platform.domain, target, timeout, on_wrong).await
}

/// One look of a verification: what each of `resolvers` answers for `name` now.
pub async fn ask_verify(resolvers: &[SocketAddr], name: &str, target: IpAddr) -> Result<Vec<ResolverAnswer>, DnsError> {
    if resolvers.is_empty() {
        return Err(DnsError::Config("verify: no resolver to ask".into()));
    }
    let answers = ask_all(resolvers, name, QUERY_TIMEOUT).await;
    tracing::debug!(%name, %target, right = answers.iter().filter(|a| a.is(target)).count(), of = answers.len(), "dns asked");
    Ok(answers)
}

/// [`verify`] with explicit resolvers.
#[tracing::instrument(skip_all, fields(%name, %target))]
pub async fn verify_at<F, Fut>(resolvers: &[SocketAddr], name: &str, target: IpAddr, timeout: Duration, mut on_wrong: F) -> Result<VerifyOutcome, DnsError>
where
    F: FnMut(Vec<ResolverAnswer>) -> Fut,
    Fut: Future<Output = ()>,
{
    if resolvers.is_empty() {
        return Err(DnsError::Config("verify: no resolver to ask".into()));
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let answers = ask_all(resolvers, name, left.clamp(Duration::from_millis(100), QUERY_TIMEOUT)).await;
        if answers.iter().all(|a| a.is(target)) {
            let outcome = VerifyOutcome { resolvers: resolvers.to_vec(), attempts, elapsed: start.elapsed() };
            info!(attempts, elapsed = ?outcome.elapsed, "dns verified");
            return Ok(outcome);
        }
        let seen = answers.iter().map(ResolverAnswer::to_string).collect::<Vec<_>>().join("; ");
        if Instant::now() >= deadline {
            return Err(DnsError::VerifyTimeout(format!(
                "{name} did not resolve to exactly {target} within {timeout:?} ({attempts} attempts); last answers: {seen}"
            )));
        }
        warn!(attempts, answers = %seen, "dns still wrong; retrying");
        on_wrong(answers).await;
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The `nameserver` lines of /etc/resolv.conf.
fn system_resolvers() -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string("/etc/resolv.conf").map_err(|source| DnsError::Io { server: "/etc/resolv.conf".into(), source })?;
    let found = parse_resolv_conf(&text);
    if found.is_empty() {
        return Err(DnsError::Config("no resolvers given and /etc/resolv.conf lists no nameserver".into()));
    }
    Ok(found)
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        // Link-local IPv6 with a zone (`fe80::1%eth0`) does not parse; such resolvers are skipped.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// `name` as a fully qualified, lower-case domain name with its trailing dot.
fn fqdn(name: &str) -> String {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    format!("{n}.")
}

/// An HTTP client for provider APIs. reqwest is built without a default TLS crypto provider, so
/// install ring's (kube uses the same) before building one.
pub(crate) fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    http_client_builder().build()
}

/// How long one HTTP request of drctl's (DNS providers' APIs, the forge's) may take, whole.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// [`http_client`]'s settings, for a caller that needs one more (the forge's: no redirects).
pub(crate) fn http_client_builder() -> reqwest::ClientBuilder {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(HTTP_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_kind_follows_the_target_family() {
        let v4: IpAddr = "192.0.2.1".parse().expect("ip");
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(RecordKind::for_ip(v4), RecordKind::A);
        assert_eq!(RecordKind::for_ip(v6), RecordKind::Aaaa);
        assert_eq!(RecordKind::for_ip(v6).other(), RecordKind::A);
    }

    #[test]
    fn set_means_exactly_the_target_with_the_ttl() {
        let t: IpAddr = "192.0.2.2".parse().expect("ip");
        let old: IpAddr = "192.0.2.1".parse().expect("ip");
        let v6: IpAddr = "2001:db8::2".parse().expect("ip");
        assert!(Current { addresses: vec![t], ttl: Some(30) }.is_set_to(t, 30));
        assert!(!Current { addresses: vec![t], ttl: Some(60) }.is_set_to(t, 30), "ttl differs");
        assert!(!Current { addresses: vec![old], ttl: Some(30) }.is_set_to(t, 30));
        assert!(!Current { addresses: vec![t, old], ttl: Some(30) }.is_set_to(t, 30), "extra address");
        assert!(!Current { addresses: vec![t, v6], ttl: Some(30) }.is_set_to(t, 30), "other family left");
        assert!(!Current::default().is_set_to(t, 30));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.10\nnameserver  2001:db8::53 \nnameserver fe80::1%eth0\n";
        let got = parse_resolv_conf(text);
        assert_eq!(got, vec!["10.0.0.10:53".parse().expect("sa"), "[2001:db8::53]:53".parse().expect("sa")]);
    }

    #[test]
    fn fqdn_is_lower_case_with_a_dot() {
        assert_eq!(fqdn("Platform.Example.com"), "platform.example.com.");
        assert_eq!(fqdn("example.com."), "example.com.");
    }

    #[test]
    fn outcome_messages_say_what_happened() {
        let t: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut o = SwitchOutcome {
            provider: "powerdns",
            domain: "platform.example.com".into(),
            record: RecordKind::A,
            target: t,
            previous: Some(vec!["192.0.2.1".parse().expect("ip")]),
            action: SwitchAction::Updated,
        };
        assert_eq!(o.to_string(), "powerdns: set platform.example.com A 192.0.2.2 (was 192.0.2.1)");
        o.action = SwitchAction::Unchanged;
        assert_eq!(o.to_string(), "powerdns: platform.example.com A is already 192.0.2.2; nothing changed");
        assert!(o.is_done());
        o.action = SwitchAction::WaitingForOperator("x".into());
        assert!(!o.is_done());
    }
}
