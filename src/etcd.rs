//! Connecting to an etcd cluster: endpoints, optional mTLS, gRPC limits raised for big pages.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, KvClient, TlsOptions, WatchClient};

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

/// Bytes that are never printed (private keys).
#[derive(Clone)]
pub struct SecretBytes(pub Vec<u8>);

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
}

/// A connected etcd: the KV and watch clients with raised message limits.
#[derive(Clone)]
pub struct Conn {
    pub client: Client,
    pub kv: KvClient,
    pub watch: WatchClient,
}

/// Connects (lazily checked by the first request) to `endpoint`.
#[tracing::instrument(skip_all, fields(endpoints = %crate::urls::redact_all(&endpoint.urls)))]
pub async fn connect(endpoint: &Endpoint) -> Result<Conn, EtcdError> {
    if let Some(u) = endpoint.urls.iter().find(|u| crate::urls::has_userinfo(u)) {
        return Err(EtcdError::Userinfo(format!("etcd endpoint {}", crate::urls::redact(u))));
    }
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
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
    let client = Client::connect(endpoint.urls.clone(), Some(opts))
        .await
        .map_err(|source| EtcdError::Connect { endpoints: crate::urls::redact_all(&endpoint.urls), source })?;
    let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Conn { client, kv, watch })
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
            let ca = secrets.get(r, "ca.crt").await.map_err(err)?;
            let cert = secrets.get(r, "tls.crt").await.map_err(err)?;
            let key = secrets.get(r, "tls.key").await.map_err(err)?;
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
    let mut resp = kv.get(start.to_vec(), Some(opts)).await?;
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
    let resp = kv.get("\0", Some(etcd_client::GetOptions::new().with_count_only())).await?;
    Ok(resp.header().map(|h| (h.cluster_id(), h.revision())).unwrap_or_default())
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
