//! Connecting to an etcd cluster: endpoints, optional mTLS, gRPC limits raised for big pages.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, KvClient, TlsOptions, WatchClient};
use futures::{StreamExt, TryStreamExt};

use crate::decide::revisions;
use crate::topology::RpoToken;

/// gRPC message limit both ways: a page of values or a txn of up to 128 Kubernetes objects
/// (each up to etcd's 1.5 MiB request limit) must fit; tonic's default is 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("the {0}: the URL carries credentials; remove the user:password@ part (etcd authenticates drctl by its client certificate)")]
    Userinfo(String),
    #[error("cannot read {what} from {path}: {source}")]
    ReadFile { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("a client certificate needs its key and a key needs its certificate")]
    HalfIdentity,
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect { endpoints: String, source: etcd_client::Error },
    #[error(
        "no member of the etcd cluster at {endpoints} answered with a leader within {timeout:?} ({failures}); \
         check that the members run and that the client certificate is trusted"
    )]
    NoMember { endpoints: String, timeout: Duration, failures: String },
}

impl EtcdError {
    /// True when connecting again can succeed: no member answered yet, or the connection failed
    /// for a reason other than a certificate refused ([`is_tls_refusal`]). A bad URL, file or
    /// identity is not.
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Connect { source, .. } => !is_tls_refusal(source),
            EtcdError::NoMember { .. } => true,
            EtcdError::Userinfo(_) | EtcdError::ReadFile { .. } | EtcdError::HalfIdentity => false,
        }
    }
}

/// Paths of PEM files for mTLS to one etcd (the controller fills them from a Secret).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Reads the files.
    pub fn load(&self) -> Result<TlsMaterial, EtcdError> {
        let read = |what: &'static str, path: &PathBuf| std::fs::read(path).map_err(|source| EtcdError::ReadFile { what, path: path.clone(), source });
        let ca = self.ca.as_ref().map(|p| read("CA certificate", p)).transpose()?;
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read("client certificate", c)?, SecretBytes(read("client key", k)?))),
            (None, None) => None,
            _ => return Err(EtcdError::HalfIdentity),
        };
        Ok(TlsMaterial { ca, identity })
    }
}

/// Bytes that are never printed and are zeroed on drop (private keys).
#[derive(Clone)]
pub struct SecretBytes(pub Vec<u8>);

impl zeroize::Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // The client key: do not leave it in freed memory. Copies made by the TLS stack
        // (tonic's Identity, rustls) are theirs and are not zeroed.
        zeroize::Zeroize::zeroize(self);
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// PEM material for mTLS: a CA bundle and a client certificate with its key.
#[derive(Debug, Clone, Default)]
pub struct TlsMaterial {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, SecretBytes)>,
}

/// Where an etcd cluster is and how to talk to it.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub urls: Vec<String>,
    pub tls: Option<TlsMaterial>,
}

impl Endpoint {
    pub fn plain(urls: Vec<String>) -> Endpoint {
        Endpoint { urls, tls: None }
    }

    /// A SHA-256 of the URLs and the TLS material: two endpoints with the same digest reach the
    /// same members with the same CA bundle, certificate and key. Compared to notice a TLS
    /// Secret rotated in place without keeping a second copy of the key to compare with.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Each part length-prefixed: no two different endpoints hash the same bytes.
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        part(&(self.urls.len() as u64).to_be_bytes());
        for u in &self.urls {
            part(u.as_bytes());
        }
        match &self.tls {
            None => part(b"plain"),
            Some(t) => {
                part(t.ca.as_deref().unwrap_or_default());
                let (cert, key) = t.identity.as_ref().map(|(c, k)| (c.as_slice(), k.0.as_slice())).unwrap_or_default();
                part(cert);
                part(key);
            }
        }
        h.finalize().into()
    }
}

/// A connected etcd: the KV and watch clients with raised message limits.
#[derive(Clone)]
pub struct Conn {
    pub client: Client,
    pub kv: KvClient,
    pub watch: WatchClient,
}

/// How long one member has to answer [`connect`]'s probe before the others are used without it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `endpoint`. Given several members, each is probed first and the connection is
/// pinned to one that answers with a leader, a follower when there is one (as etcd's own client
/// pins one endpoint). Balancing over all of them would not do: the client does not retry a
/// refused connection on another endpoint, so one member down (a rolling reboot) fails every
/// request that picks it, and it prefers the member that fails fastest, so one cut off from its
/// quorum ("no leader") gets most requests. When the pinned member fails, the caller's next
/// connection probes again. A follower also spares the leader, which every write of the
/// primary's apiservers goes through, the copy's and the check's scans (a past revision reads
/// the same on every member that has applied it). A single URL (a load balancer) is used as is;
/// the load balancer is what skips dead members then.
#[tracing::instrument(skip_all, fields(endpoints = %crate::urls::redact_all(&endpoint.urls)))]
pub async fn connect(endpoint: &Endpoint) -> Result<Conn, EtcdError> {
    if let Some(u) = endpoint.urls.iter().find(|u| crate::urls::has_userinfo(u)) {
        return Err(EtcdError::Userinfo(format!("etcd endpoint {}", crate::urls::redact(u))));
    }
    let opts = options(endpoint);
    let client = match endpoint.urls.len() {
        0 | 1 => Client::connect(endpoint.urls.clone(), Some(opts))
            .await
            .map_err(|source| EtcdError::Connect { endpoints: crate::urls::redact_all(&endpoint.urls), source })?,
        // The probe's own client: its connection is already made.
        _ => {
            let mut live = live_members(&endpoint.urls, &opts).await?;
            let pinned = live.iter().position(|m| !m.leads).unwrap_or(0);
            live.swap_remove(pinned).client
        }
    };
    let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Conn { client, kv, watch })
}

/// A member that answered the probe, and the client that asked it.
struct Member {
    leads: bool,
    client: Client,
}

fn options(endpoint: &Endpoint) -> ConnectOptions {
    // require_leader: a member cut off from its quorum refuses requests and cancels watches
    // ("no leader") instead of serving its stale state, so the mirror never follows a minority
    // member and a check never compares against one (etcd's clientv3.WithRequireLeader).
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = &endpoint.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, &key.0));
        }
        opts = opts.with_tls(t);
    }
    opts
}

/// The members of `urls` that answer a status request with a leader, in their given order.
async fn live_members(urls: &[String], opts: &ConnectOptions) -> Result<Vec<Member>, EtcdError> {
    let probes = urls.iter().map(|url| async move { (url, probe(url, opts).await) });
    let mut live = Vec::new();
    let mut failures = Vec::new();
    for (url, outcome) in futures::future::join_all(probes).await {
        match outcome {
            Ok((leads, client)) => live.push(Member { leads, client }),
            Err(why) => {
                tracing::warn!(member = %crate::urls::redact(url), %why, "etcd member skipped");
                failures.push(format!("{}: {why}", crate::urls::redact(url)));
            }
        }
    }
    if live.is_empty() {
        return Err(EtcdError::NoMember { endpoints: crate::urls::redact_all(urls), timeout: PROBE_TIMEOUT, failures: failures.join("; ") });
    }
    Ok(live)
}

/// Ok(whether the member leads, the client that asked) when it answers with a leader.
async fn probe(url: &str, opts: &ConnectOptions) -> Result<(bool, Client), String> {
    // The status says whom the member takes for its leader; only a linearizable read proves it
    // still reaches a quorum: a member whose messages to its peers are lost keeps hearing its
    // leader, keeps answering status, and serves an ever older state to serializable reads
    // and watches.
    let status = async {
        let mut client = Client::connect([url], Some(opts.clone())).await?;
        let status = client.status().await?;
        client.get("\0", Some(etcd_client::GetOptions::new().with_count_only())).await?;
        Ok::<_, etcd_client::Error>((status, client))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, status).await {
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?} (a linearizable read needs the quorum)")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((s, _))) if s.leader() == 0 => Err("no leader".to_string()),
        Ok(Ok((s, client))) => Ok((s.header().is_some_and(|h| h.member_id() == s.leader()), client)),
    }
}

/// The TLS Secret of a global's etcd could not be read.
#[derive(Debug, thiserror::Error)]
#[error("etcd TLS for cluster {cluster}: {source}")]
pub struct TlsSecretError {
    pub cluster: String,
    pub source: crate::secret::SecretError,
}

/// A global's etcd (`spec.clusters[].etcd`) as an endpoint, the mTLS material (`ca.crt`,
/// `tls.crt`, `tls.key`) read from its Secret through `secrets`: the mirror, preflight and the
/// drill connect the same way.
pub async fn cluster_endpoint(secrets: &dyn crate::secret::SecretSource, c: &crate::validated::Cluster) -> Result<Endpoint, TlsSecretError> {
    let tls = match &c.etcd.tls_secret_ref {
        None => None,
        Some(r) => {
            let err = |source| TlsSecretError { cluster: c.name.clone(), source };
            let [ca, cert, key] = <[_; 3]>::try_from(secrets.get_keys(r, &["ca.crt", "tls.crt", "tls.key"]).await.map_err(err)?).map_err(|_| {
                let (namespace, name) = (r.namespace.clone(), r.name.clone());
                err(crate::secret::SecretError::MissingKey { namespace, name, key: "ca.crt, tls.crt, tls.key".into(), keys: String::new() })
            })?;
            Some(TlsMaterial { ca: Some(ca.expose().to_vec()), identity: Some((cert.expose().to_vec(), SecretBytes(key.expose().to_vec()))) })
        }
    };
    Ok(Endpoint { urls: c.etcd.endpoints.clone(), tls })
}

/// One key with what the mirror and the check compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl From<etcd_client::KeyValue> for Kv {
    fn from(kv: etcd_client::KeyValue) -> Kv {
        let mod_revision = kv.mod_revision();
        let (key, value) = kv.into_key_value();
        Kv { key, value, mod_revision }
    }
}

/// One page of a range read.
#[derive(Debug)]
pub struct Page {
    pub kvs: Vec<Kv>,
    pub more: bool,
    /// The store revision the read saw (the read revision when one was given).
    pub revision: i64,
    pub cluster_id: u64,
}

/// gRPC's UNAVAILABLE: a leader election under way ("leader changed", "no leader"), or a member
/// that went away under an open connection.
const UNAVAILABLE: i32 = 14;

/// True when another try, perhaps on another member, can succeed where `e` failed: not a
/// [`is_tls_refusal`], which gRPC reports as UNAVAILABLE too.
pub fn is_transient(e: &etcd_client::Error) -> bool {
    let unavailable = match e {
        etcd_client::Error::GRpcStatus(s) => i32::from(s.code()) == UNAVAILABLE,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    };
    unavailable && !is_tls_refusal(e)
}

/// A TLS handshake that failed on a certificate, ours or the other side's (not trusted,
/// expired, for another name, none presented where one is required): TLS material that is
/// wrong or missing, which no retry mends. gRPC reports it as UNAVAILABLE, like a member that is
/// not up yet.
pub fn is_tls_refusal(e: &etcd_client::Error) -> bool {
    let first: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(t) => t,
        _ => return false,
    };
    std::iter::successors(Some(first), |e| e.source()).any(|e| {
        // rustls's error travels inside an io::Error, whose `source()` skips it.
        let inner = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        e.downcast_ref::<rustls::Error>().or_else(|| inner.and_then(|i| i.downcast_ref::<rustls::Error>())).is_some_and(refuses_certificate)
    })
}

/// A request one side's etcd refused on a certificate ([`is_tls_refusal`]): the message says
/// which side and which TLS material to give, since a retry does not mend it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {side}'s etcd and drctl do not accept each other's TLS certificates: give the CA that signed its serving certificate and a client certificate it trusts (--{p}-cacert, --{p}-cert, --{p}-key; for the controller, the cluster's tlsSecretRef); a retry does not mend this ({source})",
    p = side.flag_prefix()
)]
pub struct TlsRefused {
    pub side: Side,
    pub source: etcd_client::Error,
}

fn refuses_certificate(e: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
        rustls::Error::AlertReceived(a) => matches!(
            a,
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::CertificateRequired
        ),
        _ => false,
    }
}

/// How long a read is retried for. A member cut off from its quorum answers a linearizable read
/// only when etcd's own request timeout ends (7 s at its default election timeout; "request
/// timed out", which is UNAVAILABLE like an election): asked six more times, as the retries
/// allowed, a mirror's anti-entropy pass waited over 40 s on it and stopped following meanwhile.
/// An election takes 1–3 s. A try under way is never cut short: a large page from a distant
/// primary may take long.
const RETRY_WITHIN: Duration = Duration::from_secs(10);

/// A read retried while [`is_transient`], for [`RETRY_WITHIN`]: etcd's own client retries reads
/// across an election and a member going down; a copy, a check or a FinalSync must not fail on
/// one. Past it the error is returned as it is (still transient): the caller's next connection
/// probes the members and leaves out one that cannot reach its quorum.
async fn read<T, F: std::future::Future<Output = Result<T, etcd_client::Error>>>(mut attempt: impl FnMut() -> F) -> Result<T, etcd_client::Error> {
    use backon::Retryable;
    let waits = backon::ExponentialBuilder::default().with_min_delay(Duration::from_millis(100)).with_max_delay(Duration::from_secs(2)).with_max_times(6);
    let started = tokio::time::Instant::now();
    (|| attempt())
        .retry(waits)
        .when(|e| is_transient(e) && started.elapsed() < RETRY_WITHIN)
        .notify(|e, wait| tracing::debug!(error = %e, ?wait, "etcd read retried"))
        .await
}

/// Reads up to `limit` keys of `[start, end)`, at `revision` (0 = now).
pub async fn range_page(kv: &mut KvClient, start: &[u8], end: &[u8], revision: i64, limit: i64) -> Result<Page, etcd_client::Error> {
    range_page_of(kv, start, end, revision, limit, false).await
}

/// [`range_page`], with empty values when `keys_only`.
pub async fn range_page_of(kv: &mut KvClient, start: &[u8], end: &[u8], revision: i64, limit: i64, keys_only: bool) -> Result<Page, etcd_client::Error> {
    let mut opts = etcd_client::GetOptions::new().with_range(end.to_vec()).with_revision(revision).with_limit(limit);
    if keys_only {
        opts = opts.with_keys_only();
    }
    let kv: &KvClient = kv;
    let get = |opts: etcd_client::GetOptions| {
        read(move || {
            let mut kv = kv.clone();
            let opts = opts.clone();
            async move { kv.get(start.to_vec(), Some(opts)).await }
        })
    };
    // A past revision is read serializably: the member answers from its own store without a
    // round trip through the leader. One that has not applied the revision yet says "future
    // revision": asked again linearizably, it first catches up with the quorum, so only a
    // source whose history really went back still says it.
    let mut resp = match revision > 0 {
        true => match get(opts.clone().with_serializable()).await {
            Err(e) if is_future_revision(&e) => get(opts).await?,
            r => r?,
        },
        false => get(opts).await?,
    };
    let (rev, cluster_id) = resp.header().map(|h| (h.revision(), h.cluster_id())).unwrap_or_default();
    let more = resp.more();
    let kvs = resp.take_kvs().into_iter().map(Kv::from).collect();
    Ok(Page { kvs, more, revision: if revision > 0 { revision } else { rev }, cluster_id })
}

/// The smallest key greater than `key`.
pub fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// The cluster ID and current revision of an etcd.
pub async fn head(kv: &mut KvClient) -> Result<(u64, i64), etcd_client::Error> {
    let resp = read(|| {
        let mut kv = kv.clone();
        async move { kv.get("\0", Some(etcd_client::GetOptions::new().with_count_only())).await }
    })
    .await?;
    Ok(resp.header().map(|h| (h.cluster_id(), h.revision())).unwrap_or_default())
}

/// Where kube-apiserver keeps the revision it last compacted at (its compactors coordinate
/// through it).
pub const APISERVER_COMPACT_KEY: &str = "compact_rev_key";

/// Where [`raise_revision`] writes: outside `/registry/`, so no apiserver sees it and no mirror
/// copies it.
pub const REVISION_FLOOR_KEY: &str = "drctl/mirror/revision-floor";

/// Advances this etcd, at `head`, by `by` revisions (one put each, `in_flight` at a time: etcd
/// has no online way to skip revisions) and returns its head after the last.
pub async fn raise_revision(kv: &KvClient, head: i64, by: u64, in_flight: usize) -> Result<i64, etcd_client::Error> {
    let puts = (0..by).map(|_| {
        let mut kv = kv.clone();
        async move { kv.put(REVISION_FLOOR_KEY, "", None).await.map(|r| r.header().map_or(0, |h| h.revision())) }
    });
    futures::stream::iter(puts).buffer_unordered(in_flight.max(1)).try_fold(head, |max, r| async move { Ok(max.max(r)) }).await
}

/// Puts in flight while StopSync raises the new primary's revision.
const PROMOTION_IN_FLIGHT: usize = 64;

/// A promotion's compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub revision: i64,
    /// Revisions skipped first, to reach the old primary's numbering.
    pub raised: u64,
}

/// Raises this etcd to the old primary's numbering as far as `token` tells
/// ([`revisions::promotion_raise`]), then compacts it at its head, announced as kube-apiserver
/// announces its own compactions (its compaction key first). After a failover the global's
/// clients come back holding resourceVersions of the other etcd's numbering; with every one of
/// them at or below the compaction, a read or watch from one is answered 410 Gone (from etcd; a
/// watch cache answers from its own window, which the floor makes safe) and the client relists:
/// the online counterpart of `etcdutl snapshot restore --bump-revision --mark-compacted`.
pub async fn compact_at_head(conn: &mut Conn, token: Option<&RpoToken>) -> Result<Compacted, etcd_client::Error> {
    let (_, mut head) = head(&mut conn.kv).await?;
    let raised = revisions::promotion_raise(head, token);
    if raised > 0 {
        head = raise_revision(&conn.kv, head, raised, PROMOTION_IN_FLIGHT).await?;
    }
    conn.kv.put(APISERVER_COMPACT_KEY, head.to_string(), None).await?;
    match conn.client.compact(head, None).await {
        // Compacted there already (a resumed step): the same outcome.
        Err(e) if !is_compacted(&e) => Err(e),
        _ => Ok(Compacted { revision: head, raised }),
    }
}

/// The source and the destination are one etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the source and the destination are the same etcd (cluster ID {0:x}): copying or checking it against itself would \
     write the mirror's checkpoint into the source and report it consistent. Give the standby's own etcd as the destination"
)]
pub struct SameCluster(pub u64);

/// Refuses a destination that is the source. Compared by cluster ID, as etcd reports it after
/// connecting, not by URL: two spellings (a name and an IP, another member) reach one cluster.
/// Two clusters bootstrapped with identical members and token share an ID too; the checkpoint
/// ties a copy to its source by this ID, so such a pair could not be mirrored safely anyway.
pub fn distinct(source_id: u64, dest_id: u64) -> Result<(), SameCluster> {
    // 0: a response without a header, which says nothing either way.
    if source_id != 0 && source_id == dest_id {
        Err(SameCluster(source_id))
    } else {
        Ok(())
    }
}

/// Which of the two etcds of a copy or a check a request went to: errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl Side {
    /// The prefix of its TLS flags on the command line (`--source-cacert`, `--dest-cacert`).
    pub fn flag_prefix(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "dest",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// True when `e` says the requested revision was compacted away.
pub fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

/// etcd's answer to a read at a revision it has not reached ("required revision is a future
/// revision"): asked of a source, its history went back (restored from a snapshot).
pub fn is_future_revision(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("future revision"))
}

/// Which of its txn limits an etcd refused a write for: `--max-txn-ops` and
/// `--max-request-bytes` are server flags that no API reports, so a client learns them so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnRefusal {
    TooManyOps,
    TooLarge,
}

pub fn txn_refusal(e: &etcd_client::Error) -> Option<TxnRefusal> {
    match e {
        etcd_client::Error::GRpcStatus(s) if s.message().contains("too many operations in txn request") => Some(TxnRefusal::TooManyOps),
        etcd_client::Error::GRpcStatus(s) if s.message().contains("request is too large") => Some(TxnRefusal::TooLarge),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroize;

    #[test]
    fn secret_bytes_are_redacted_and_zeroed_whole() {
        let mut key = SecretBytes(b"-----BEGIN PRIVATE KEY-----".to_vec());
        assert_eq!(format!("{key:?}"), "<redacted>");
        let len = key.0.len();
        key.zeroize();
        assert!(key.0.is_empty());
        // The bytes stay allocated until the Vec is freed: every one of them is zero now.
        let spare = &key.0.spare_capacity_mut()[..len];
        // SAFETY: zeroize wrote every byte of the capacity (volatile writes of 0) before clearing the length.
        let bytes: Vec<u8> = spare.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(bytes, vec![0; len]);
    }
}
