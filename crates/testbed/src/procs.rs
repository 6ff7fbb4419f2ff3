//! The real servers a lab (and the integration tests) run on loopback: etcd, kube-apiserver with
//! generated PKI and an admin kubeconfig, PowerDNS with its HTTP API. This module builds their
//! command lines, prepares their directories and waits for them; it never decides how long they
//! live: the caller spawns with a [`Lifetime`] (tests: die with the test; lab: detached).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const KUBE_VERSION: &str = "v1.34.4";
pub const ARGOCD_VERSION: &str = "v3.6.1";
pub const KWOK_VERSION: &str = "v0.8.0";
/// The etcd every test, the lab and the benchmarks run unless `ETCD_VERSION` names another
/// (README, "Supported etcd versions"): the newest 3.6, the line Kubernetes 1.34 ships.
pub const ETCD_VERSION: &str = "v3.6.16";
/// The forge `drctl promote --open-pr` is tested against (tests/forge.rs).
pub const GITEA_VERSION: &str = "v1.27.3";
const PDNS_SCHEMA_DIR: &str = "/usr/share/doc/pdns-backend-sqlite3";

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("generate certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("{what} did not become ready within {timeout:?}; last log lines of {log}:\n{tail}")]
    NotReady { what: String, timeout: Duration, log: String, tail: String },
    #[error("{what} exited ({status}); last log lines of {log}:\n{tail}")]
    Exited { what: String, status: std::process::ExitStatus, log: String, tail: String },
    #[error("pick a port: {0}")]
    Port(#[from] crate::ports::PortError),
    #[error("{0}")]
    Failed(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcError {
    let what = what.into();
    move |source| ProcError::Io { what, source }
}

/// How long a spawned server lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed by the kernel when the spawning *thread* exits (PR_SET_PDEATHSIG): tests.
    WithParent,
    /// A session of its own, outliving the command that started it: the lab.
    Detached,
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn(mut cmd: Command, log: &Path, lifetime: Lifetime) -> Result<Child, ProcError> {
    use std::os::unix::process::CommandExt;
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(io(format!("open {}", log.display())))?;
    let f2 = f.try_clone().map_err(io("clone a log file handle"))?;
    cmd.stdout(f).stderr(f2).stdin(Stdio::null());
    // SAFETY: prctl and setsid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        match lifetime {
            Lifetime::WithParent => cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            }),
            Lifetime::Detached => cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            }),
        };
    }
    cmd.spawn().map_err(io(format!("spawn {}", cmd.get_program().to_string_lossy())))
}

/// A free loopback port (TCP and UDP), from below the ephemeral range: see [`crate::ports`].
pub fn free_port() -> Result<u16, ProcError> {
    Ok(crate::ports::free_port()?)
}

/// A plain HTTP/1.0 GET, enough for health endpoints; None on any failure.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The last 30 lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `ready` every `every` until it holds; the error carries the log's tail.
fn wait_until(what: &str, log: &Path, timeout: Duration, every: Duration, mut ready: impl FnMut() -> Result<bool, ProcError>) -> Result<(), ProcError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(every);
    }
    Err(ProcError::NotReady { what: what.into(), timeout, log: log.display().to_string(), tail: tail(log) })
}

/// Err when `child` has exited: a server that died will not become ready.
pub fn check_running(child: &mut Child, what: &str, log: &Path) -> Result<(), ProcError> {
    match child.try_wait() {
        Ok(Some(status)) => Err(ProcError::Exited { what: what.into(), status, log: log.display().to_string(), tail: tail(log) }),
        _ => Ok(()),
    }
}

/// The directory with kube-apiserver, kube-controller-manager, kube-scheduler and kubectl:
/// `$DRCTL_KUBE_BIN_DIR`, else what `hack/build-kube.sh` prints (it builds them once per machine
/// and caches them).
pub fn kube_bin_dir() -> Result<PathBuf, ProcError> {
    built("DRCTL_KUBE_BIN_DIR", "build-kube.sh", &[("KUBE_VERSION", KUBE_VERSION)])
}

/// `etcd`, `etcdctl` or `etcdutl` of [`ETCD_VERSION`] (or `$ETCD_VERSION`): in
/// `$DRCTL_ETCD_BIN_DIR`, else where `hack/build-etcd.sh` built them from etcd's Go modules.
pub fn etcd_bin(name: &str) -> Result<PathBuf, ProcError> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| built("DRCTL_ETCD_BIN_DIR", "build-etcd.sh", &[("ETCD_VERSION", ETCD_VERSION)]).map_err(|e| e.to_string()));
    dir.as_ref().map(|d| d.join(name)).map_err(|e| ProcError::Failed(e.clone()))
}

/// [`etcd_bin`] for a command line: the path, or the bare name (which then fails to spawn with
/// a clear error) when it cannot be built.
pub fn etcd_command(name: &str) -> Command {
    match etcd_bin(name) {
        Ok(p) => Command::new(p),
        Err(e) => {
            eprintln!("{e}");
            Command::new(name)
        }
    }
}

/// The `argocd` multi-call binary: `$DRCTL_ARGOCD_BIN`, else what `hack/build-argocd.sh` prints.
/// Its directory also holds the wrapper scripts the repo-server runs and Argo CD's manifests.
pub fn argocd_bin() -> Result<PathBuf, ProcError> {
    built("DRCTL_ARGOCD_BIN", "build-argocd.sh", &[("ARGOCD_VERSION", ARGOCD_VERSION)])
}

/// The `kwok` binary (next to its `stages.yaml`): `$DRCTL_KWOK_BIN`, else `hack/build-kwok.sh`.
pub fn kwok_bin() -> Result<PathBuf, ProcError> {
    built("DRCTL_KWOK_BIN", "build-kwok.sh", &[("KWOK_VERSION", KWOK_VERSION)])
}

/// The `gitea` binary, next to the options/, templates/ and public/ it reads at run time:
/// `$DRCTL_GITEA_BIN`, else `hack/build-gitea.sh`.
pub fn gitea_bin() -> Result<PathBuf, ProcError> {
    built("DRCTL_GITEA_BIN", "build-gitea.sh", &[("GITEA_VERSION", GITEA_VERSION)])
}

/// A path from `$override_var`, else the last stdout line of `hack/SCRIPT` (which builds the
/// program from Go modules once per machine, caches it by version, and prints where it is).
fn built(override_var: &str, script: &str, versions: &[(&str, &str)]) -> Result<PathBuf, ProcError> {
    if let Ok(d) = std::env::var(override_var) {
        return Ok(PathBuf::from(d));
    }
    let path = crate::tree_candidates(&Path::new("hack").join(script))
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| ProcError::Failed(format!("no hack/{script} here; set {override_var}")))?;
    let mut cmd = Command::new("bash");
    cmd.arg(&path).stderr(Stdio::inherit());
    for (var, default) in versions {
        cmd.env(var, std::env::var(var).unwrap_or_else(|_| (*default).to_string()));
    }
    let out = cmd.output().map_err(io(format!("run {}", path.display())))?;
    if !out.status.success() {
        return Err(ProcError::Failed(format!("{} failed ({})", path.display(), out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    if last.is_empty() {
        return Err(ProcError::Failed(format!("{} printed no path", path.display())));
    }
    Ok(PathBuf::from(last))
}

// ---------------------------------------------------------------------------------------------
// etcd

/// A single-member etcd (built by `hack/build-etcd.sh`) with its data under `dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdServer {
    pub dir: PathBuf,
    pub client_url: String,
    pub peer_url: String,
    /// A plain-HTTP listener for /health, needed when the client port speaks TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_addr: Option<String>,
    /// Set for an etcd that serves HTTPS and requires client certificates signed by its CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
    /// This member's name and the cluster's `--initial-cluster` (empty: a cluster of itself).
    #[serde(default = "default_member")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub initial_cluster: String,
    /// The peer URL the other members are told to use, when not `peer_url` itself (a proxy
    /// that can cut this member off from its peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_peer_url: Option<String>,
}

fn default_member() -> String {
    "default".to_string()
}

/// PEM files for an mTLS etcd: its CA, a client certificate with key, its serving pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// The Node every real node (`kubelet`) registers as, each with its own global's apiserver
/// (whose PKI holds its client certificate: [`ApiServer::node_kubeconfig`]).
pub const NODE_NAME: &str = "real-node";

impl EtcdServer {
    pub fn on_free_ports(dir: &Path) -> Result<EtcdServer, ProcError> {
        Ok(EtcdServer {
            dir: dir.to_path_buf(),
            client_url: format!("http://127.0.0.1:{}", free_port()?),
            peer_url: format!("http://127.0.0.1:{}", free_port()?),
            health_addr: None,
            tls: None,
            name: default_member(),
            initial_cluster: String::new(),
            advertised_peer_url: None,
        })
    }

    /// `n` members of one cluster that require mTLS from their clients (one CA, one client
    /// certificate for all), each with its data under `dir/<name>`, as a global's control-plane
    /// nodes run them. Members talk to each other over plain HTTP: only the client side is
    /// what drctl meets.
    pub fn cluster_tls(dir: &Path, n: usize) -> Result<Vec<EtcdServer>, ProcError> {
        let tls = write_etcd_pki(dir)?;
        let mut members = Vec::new();
        for i in 0..n {
            let name = format!("m{i}");
            let member_dir = dir.join(&name);
            std::fs::create_dir_all(&member_dir).map_err(io(format!("create {}", member_dir.display())))?;
            members.push(EtcdServer {
                dir: member_dir,
                client_url: format!("https://127.0.0.1:{}", free_port()?),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
                health_addr: Some(format!("127.0.0.1:{}", free_port()?)),
                tls: Some(tls.clone()),
                name,
                initial_cluster: String::new(),
                advertised_peer_url: None,
            });
        }
        EtcdServer::introduce(&mut members);
        Ok(members)
    }

    /// The peer URL the other members use.
    pub fn advertised_peer(&self) -> &str {
        self.advertised_peer_url.as_deref().unwrap_or(&self.peer_url)
    }

    /// Sets every member's `--initial-cluster` from the members' advertised peer URLs.
    pub fn introduce(members: &mut [EtcdServer]) {
        let initial = members.iter().map(|m| format!("{}={}", m.name, m.advertised_peer())).collect::<Vec<_>>().join(",");
        for m in members {
            m.initial_cluster = initial.clone();
        }
    }

    /// An etcd that requires mTLS from its clients, with a fresh CA and certificates in `dir`.
    pub fn on_free_ports_tls(dir: &Path) -> Result<EtcdServer, ProcError> {
        Ok(EtcdServer {
            dir: dir.to_path_buf(),
            client_url: format!("https://127.0.0.1:{}", free_port()?),
            peer_url: format!("http://127.0.0.1:{}", free_port()?),
            health_addr: Some(format!("127.0.0.1:{}", free_port()?)),
            tls: Some(write_etcd_pki(dir)?),
            name: default_member(),
            initial_cluster: String::new(),
            advertised_peer_url: None,
        })
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// `--initial-cluster`: the cluster's members, or this member alone.
    fn initial_cluster(&self) -> String {
        match self.initial_cluster.as_str() {
            "" => format!("{}={}", self.name, self.advertised_peer()),
            all => all.to_string(),
        }
    }

    /// `etcdutl snapshot restore` of `snapshot` into this member's data dir (which must not
    /// exist), with its name, peer URL and the cluster's `--initial-cluster`, so every member
    /// restored from one snapshot joins the same new cluster: etcd's disaster-recovery step.
    pub fn restore_command(&self, snapshot: &Path) -> Command {
        let mut cmd = etcd_command("etcdutl");
        cmd.args(["snapshot", "restore"]).arg(snapshot).arg(format!("--data-dir={}", self.dir.join("data").display())).args([
            format!("--name={}", self.name),
            format!("--initial-cluster={}", self.initial_cluster()),
            format!("--initial-advertise-peer-urls={}", self.advertised_peer()),
        ]);
        cmd
    }

    pub fn command(&self) -> Command {
        let mut cmd = etcd_command("etcd");
        let initial_cluster = self.initial_cluster();
        cmd.args([
            &format!("--name={}", self.name),
            &format!("--data-dir={}", self.dir.join("data").display()),
            &format!("--listen-client-urls={}", self.client_url),
            &format!("--advertise-client-urls={}", self.client_url),
            &format!("--listen-peer-urls={}", self.peer_url),
            &format!("--initial-advertise-peer-urls={}", self.advertised_peer()),
            &format!("--initial-cluster={initial_cluster}"),
            "--max-request-bytes=10485760",
            "--quota-backend-bytes=8589934592",
            "--logger=zap",
            "--log-level=warn",
        ]);
        if let Some(h) = &self.health_addr {
            cmd.arg(format!("--listen-metrics-urls=http://{h}"));
        }
        if let Some(t) = &self.tls {
            cmd.args([
                format!("--cert-file={}", t.server_cert.display()),
                format!("--key-file={}", t.server_key.display()),
                format!("--trusted-ca-file={}", t.ca.display()),
                "--client-cert-auth".to_string(),
            ]);
        }
        cmd
    }

    pub fn spawn(&self, lifetime: Lifetime) -> Result<Child, ProcError> {
        spawn(self.command(), &self.log(), lifetime)
    }

    pub fn healthy(&self) -> bool {
        let addr = match &self.health_addr {
            Some(h) => h.as_str(),
            None => self.client_url.trim_start_matches("http://"),
        };
        http_get(addr, "/health").is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    /// Waits for /health, which needs a leader: for a member of a cluster, a quorum started.
    pub fn wait_ready(&self, child: &mut Child) -> Result<(), ProcError> {
        wait_until(&format!("etcd at {}", self.client_url), &self.log(), Duration::from_secs(30), Duration::from_millis(100), || {
            check_running(child, "etcd", &self.log())?;
            Ok(self.healthy())
        })
    }
}

/// A throwaway CA for one server's certificates (tests and the lab only).
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(common_name: &str) -> Result<Ca, ProcError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca { pem, issuer: rcgen::Issuer::new(params, key) })
    }

    /// A serving certificate for localhost and 127.0.0.1 (plus `extra_dns`).
    fn server(&self, common_name: &str, extra_dns: &[&str]) -> Result<Issued, ProcError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, SanType};
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        for d in extra_dns {
            p.subject_alt_names.push(SanType::DnsName((*d).try_into()?));
        }
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        self.sign(p)
    }

    /// A client certificate; `organization` becomes the Kubernetes group.
    fn client(&self, common_name: &str, organization: Option<&str>) -> Result<Issued, ProcError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        self.sign(p)
    }

    fn sign(&self, params: rcgen::CertificateParams) -> Result<Issued, ProcError> {
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert: cert.pem(), key: key.serialize_pem() })
    }
}

/// A CA, a serving certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn write_etcd_pki(dir: &Path) -> Result<EtcdTls, ProcError> {
    EtcdTls::issue(dir, "etcd")
}

impl EtcdTls {
    /// A client's TLS flags as etcdctl and drctl spell them: `--<prefix>cacert`, `--<prefix>cert`,
    /// `--<prefix>key` (etcdctl's own with `""`, make-mirror's with `"dest-"`, drctl's with
    /// `"source-"` or `"dest-"`).
    pub fn cli_args(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--{prefix}cacert={}", self.ca.display()),
            format!("--{prefix}cert={}", self.cert.display()),
            format!("--{prefix}key={}", self.key.display()),
        ]
    }

    /// A new CA named `<prefix>-ca`, a serving certificate for 127.0.0.1 and a client
    /// certificate from it, as PEM files `<prefix>-ca.crt`, `<prefix>-client.{crt,key}` and
    /// `<prefix>-server.{crt,key}` in `dir` (a test rotating an etcd's CA issues a second set).
    pub fn issue(dir: &Path, prefix: &str) -> Result<EtcdTls, ProcError> {
        let ca = Ca::new(&format!("drctl-{prefix}-ca"))?;
        let server = ca.server("etcd", &[])?;
        let client = ca.client("drctl", None)?;
        let w = |name: &str, body: &str| -> Result<PathBuf, ProcError> {
            let p = dir.join(format!("{prefix}-{name}"));
            write_private(&p, body)?;
            Ok(p)
        };
        Ok(EtcdTls {
            ca: w("ca.crt", &ca.pem)?,
            cert: w("client.crt", &client.cert)?,
            key: w("client.key", &client.key)?,
            server_cert: w("server.crt", &server.cert)?,
            server_key: w("server.key", &server.key)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// kube-apiserver

/// Certificates for one apiserver: a CA, its serving cert, an admin client cert, an SA key.
struct Pki {
    ca_pem: String,
    admin: Issued,
    /// The identities the bootstrap RBAC grants the control plane's own components.
    controller_manager: Issued,
    scheduler: Issued,
    /// The kubelet of a real node ([`NODE_NAME`]), as the Node authorizer knows it.
    node: Issued,
}

/// The admin client certificate as files (the kubeconfig carries it inline), for curl.
const ADMIN_CERT: &str = "admin.crt";
const ADMIN_KEY: &str = "admin.key";

fn write_pki(dir: &Path) -> Result<Pki, ProcError> {
    let ca = Ca::new("drctl-lab-ca")?;
    let serving = ca.server("kube-apiserver", &["kubernetes.default.svc"])?;
    let admin = ca.client("drctl-lab-admin", Some("system:masters"))?;
    let controller_manager = ca.client("system:kube-controller-manager", None)?;
    let scheduler = ca.client("system:kube-scheduler", None)?;
    let node = ca.client(&format!("system:node:{}", NODE_NAME), Some("system:nodes"))?;
    let sa_key = rcgen::KeyPair::generate()?;
    for (name, body) in [
        ("ca.crt", ca.pem.clone()),
        ("serving.crt", serving.cert),
        ("serving.key", serving.key),
        (ADMIN_CERT, admin.cert.clone()),
        (ADMIN_KEY, admin.key.clone()),
        ("sa.key", sa_key.serialize_pem()),
        ("sa.pub", sa_key.public_key_pem()),
    ] {
        write_private(&dir.join(name), &body)?;
    }
    Ok(Pki { ca_pem: ca.pem, admin, controller_manager, scheduler, node })
}

/// Writes a file only its owner can read (keys, kubeconfigs, API keys).
pub fn write_private(path: &Path, body: &str) -> Result<(), ProcError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).map_err(io(format!("create {}", path.display())))?;
    f.write_all(body.as_bytes()).map_err(io(format!("write {}", path.display())))
}

/// A kubeconfig for `url` as the client `user`, certificates inline.
fn kubeconfig_yaml(url: &str, ca_pem: &str, user: &Issued) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: user\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: user}}\ncurrent-context: lab\n",
        b64(ca_pem),
        b64(&user.cert),
        b64(&user.key)
    )
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A kube-apiserver (built from the `k8s.io/kubernetes` Go module) on its own etcd, with its PKI
/// and an admin kubeconfig under `dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServer {
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
    /// etcd's client URLs, comma-separated.
    pub etcd_url: String,
    pub kubeconfig: PathBuf,
    /// The client certificate it shows an etcd that requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_tls: Option<EtcdTls>,
    /// `--encryption-provider-config`: encryption at rest of what the file names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_config: Option<PathBuf>,
    /// A global with real nodes (`kubelet`): runs the ServiceAccount admission plugin, which
    /// mounts each Pod's token, and NodeRestriction. Off elsewhere: there Pods go to kwok's fake
    /// nodes, often before their namespace's ServiceAccount exists.
    #[serde(default)]
    pub real_nodes: bool,
}

impl ApiServer {
    /// Generates the certificates and the kubeconfig for a server on a free port.
    pub fn prepare(dir: &Path, etcd_url: &str) -> Result<ApiServer, ProcError> {
        let pki = write_pki(dir)?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.join("kubeconfig");
        let write = |path: &Path, user: &Issued| write_private(path, &kubeconfig_yaml(&url, &pki.ca_pem, user));
        write(&kubeconfig, &pki.admin)?;
        let a = ApiServer {
            dir: dir.to_path_buf(),
            port,
            url: url.clone(),
            etcd_url: etcd_url.to_string(),
            kubeconfig,
            etcd_tls: None,
            encryption_config: None,
            real_nodes: false,
        };
        write(&a.controller_manager_kubeconfig(), &pki.controller_manager)?;
        write(&a.node_kubeconfig(), &pki.node)?;
        write(&a.scheduler_kubeconfig(), &pki.scheduler)?;
        Ok(a)
    }

    /// Acts as the kubelet of the real node [`NODE_NAME`] (group `system:nodes`): the Node
    /// authorizer and NodeRestriction admission limit it to its own Node and the Pods bound to it.
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.dir.join("node.kubeconfig")
    }

    /// Acts as `system:kube-controller-manager`, as the bootstrap RBAC expects.
    pub fn controller_manager_kubeconfig(&self) -> PathBuf {
        self.dir.join("kube-controller-manager.kubeconfig")
    }

    /// Acts as `system:kube-scheduler`.
    pub fn scheduler_kubeconfig(&self) -> PathBuf {
        self.dir.join("kube-scheduler.kubeconfig")
    }

    /// The CA that signs the serving and client certificates (the controller-manager publishes
    /// it as every namespace's `kube-root-ca.crt`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The key service-account tokens are signed with.
    pub fn sa_signing_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    pub fn command(&self, kube_bin: &Path) -> Command {
        let p = |n: &str| self.dir.join(n).display().to_string();
        let mut cmd = Command::new(kube_bin.join("kube-apiserver"));
        // Every pair test (and the lab) starts two apiservers on a shared 2-core machine: collecting garbage
        // less often cut the CPU to /readyz from ~3.1 to ~2.4 s (three runs each, 12-07) for
        // ~100 MiB more at its peak (~365 MiB). An environment that sets GOGC keeps its own.
        if std::env::var_os("GOGC").is_none() {
            cmd.env("GOGC", "400");
        }
        cmd.args([
            format!("--etcd-servers={}", self.etcd_url),
            format!("--secure-port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--endpoint-reconciler-type=none".into(),
            "-v=1".into(),
        ]);
        if self.real_nodes {
            cmd.arg("--enable-admission-plugins=NodeRestriction");
        } else {
            cmd.arg("--disable-admission-plugins=ServiceAccount");
        }
        if let Some(t) = &self.etcd_tls {
            cmd.args([
                format!("--etcd-cafile={}", t.ca.display()),
                format!("--etcd-certfile={}", t.cert.display()),
                format!("--etcd-keyfile={}", t.key.display()),
            ]);
        }
        if let Some(c) = &self.encryption_config {
            cmd.arg(format!("--encryption-provider-config={}", c.display()));
        }
        cmd
    }

    pub fn spawn(&self, kube_bin: &Path, lifetime: Lifetime) -> Result<Child, ProcError> {
        spawn(self.command(kube_bin), &self.log(), lifetime)
    }

    /// kubectl against this apiserver as admin.
    pub fn kubectl(&self, kube_bin: &Path) -> Command {
        let mut cmd = Command::new(kube_bin.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// A GET of `path` with curl, as `admin` (its certificate) or anonymously; the body when the
    /// answer is 2xx. The readiness polls below use it instead of kubectl: they run every 100–250
    /// ms while a server starts or a CRD is established, and a kubectl run costs ~80 ms of CPU
    /// against curl's ~10.
    fn get(&self, path: &str, admin: bool) -> Option<Vec<u8>> {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--fail", "--max-time", "2", "--cacert"]).arg(self.ca_file());
        if admin {
            cmd.arg("--cert").arg(self.dir.join(ADMIN_CERT)).arg("--key").arg(self.dir.join(ADMIN_KEY));
        }
        let out = cmd.arg(format!("{}{path}", self.url)).output().ok()?;
        out.status.success().then_some(out.stdout)
    }

    /// `/readyz` answers ok (anonymous clients may read it).
    pub fn ready(&self) -> bool {
        self.get("/readyz", false).is_some_and(|b| String::from_utf8_lossy(&b).trim() == "ok")
    }

    pub fn wait_ready(&self, child: &mut Child) -> Result<(), ProcError> {
        wait_until(&format!("kube-apiserver at {}", self.url), &self.log(), Duration::from_secs(90), Duration::from_millis(250), || {
            check_running(child, "kube-apiserver", &self.log())?;
            Ok(self.ready())
        })
    }

    /// Waits until the CRD named `crd` is Established (a new CRD has no conditions at first,
    /// which `kubectl wait --for=condition=Established` fails on at once).
    pub fn wait_crd_established(&self, crd: &str) -> Result<(), ProcError> {
        let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}");
        wait_until(&format!("CustomResourceDefinition {crd}"), &self.log(), Duration::from_secs(60), Duration::from_millis(100), || {
            let Some(body) = self.get(&path, true) else { return Ok(false) };
            let crd: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let conditions = crd.pointer("/status/conditions").and_then(|c| c.as_array()).cloned().unwrap_or_default();
            Ok(conditions.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
        })
    }
}

/// Runs `cmd` with `input` on its stdin and collects its output (status not checked).
pub fn run_with_stdin(mut cmd: Command, input: &[u8], what: &str) -> Result<std::process::Output, ProcError> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(io(format!("run {what}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(io(format!("write to {what}")))?;
    }
    child.wait_with_output().map_err(io(format!("wait for {what}")))
}

/// `kubectl apply -f -` with `manifest` on stdin; Ok(output) or Err(output).
pub fn kubectl_apply(mut kubectl: Command, manifest: &str) -> Result<String, ProcError> {
    kubectl.args(["apply", "-f", "-"]);
    let out = run_with_stdin(kubectl, manifest.as_bytes(), "kubectl apply")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(ProcError::Failed(format!("kubectl apply: {}", text.trim())))
    }
}

// ---------------------------------------------------------------------------------------------
// PowerDNS

/// Random bytes from the kernel, base64-encoded: TSIG secrets, API keys.
pub fn random_b64(n: usize) -> Result<String, ProcError> {
    use base64::Engine;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).map_err(io("read /dev/urandom"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// `dig +short` through `server`, sorted: what a plain client sees, independent of drctl's own
/// resolver.
pub fn dig(server: SocketAddr, name: &str, rtype: &str) -> Result<Vec<String>, ProcError> {
    let out = Command::new("dig")
        .args(["+short", "+tries=2", "+time=2", &format!("@{}", server.ip()), "-p", &server.port().to_string(), name, rtype])
        .output()
        .map_err(io("run dig"))?;
    if !out.status.success() {
        return Err(ProcError::Failed(format!("dig failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect();
    v.sort();
    Ok(v)
}

/// A plain HTTP/1.0 request with an API key; returns (status, body).
pub fn http_with_key(addr: &str, method: &str, path: &str, key: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let key = key.trim();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// PowerDNS authoritative server (gsqlite3 backend, HTTP API) under `dir`; the API key lives in
/// its `pdns.conf` (mode 0600), not on the command line, and `Debug` does not show it.
#[derive(Clone)]
pub struct PowerDns {
    pub dir: PathBuf,
    pub dns: SocketAddr,
    pub web: String,
    /// Without surrounding whitespace.
    pub api_key: String,
    /// Fully qualified, with the trailing dot.
    pub zone: String,
}

impl std::fmt::Debug for PowerDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerDns")
            .field("dir", &self.dir)
            .field("dns", &self.dns)
            .field("web", &self.web)
            .field("api_key", &format_args!("<redacted {} bytes>", self.api_key.len()))
            .field("zone", &self.zone)
            .finish()
    }
}

impl PowerDns {
    /// Creates the database and picks free ports; call again (new ports) when the spawn fails.
    pub fn prepare(dir: &Path, zone: &str, api_key: &str) -> Result<PowerDns, ProcError> {
        let db = dir.join("pdns.sqlite3");
        if !db.exists() {
            create_pdns_db(&db)?;
        }
        let key = api_key.trim();
        write_private(&dir.join("pdns.conf"), &format!("api-key={key}\n"))?;
        // A fresh log per attempt: `wait_ready` reads it for a failed bind of the API port.
        let _ = std::fs::remove_file(dir.join("pdns.log"));
        Ok(PowerDns {
            dir: dir.to_path_buf(),
            dns: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            web: format!("127.0.0.1:{}", free_port()?),
            api_key: key.to_string(),
            zone: format!("{}.", zone.trim_end_matches('.')),
        })
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("pdns.log")
    }

    pub fn command(&self) -> Command {
        let d = &self.dir;
        let (web_addr, web_port) = self.web.split_once(':').unwrap_or((&self.web, "8081"));
        let mut cmd = Command::new("pdns_server");
        cmd.args([
            format!("--config-dir={}", d.display()),
            "--launch=gsqlite3".into(),
            format!("--gsqlite3-database={}", d.join("pdns.sqlite3").display()),
            format!("--local-address={}", self.dns.ip()),
            format!("--local-port={}", self.dns.port()),
            "--api=yes".into(),
            "--webserver=yes".into(),
            format!("--webserver-address={web_addr}"),
            format!("--webserver-port={web_port}"),
            "--webserver-allow-from=127.0.0.0/8".into(),
            format!("--socket-dir={}", d.display()),
            "--guardian=no".into(),
            "--daemon=no".into(),
            "--disable-syslog=yes".into(),
            // Readers look right after writes: no caches between the API and DNS answers.
            "--cache-ttl=0".into(),
            "--query-cache-ttl=0".into(),
            "--negquery-cache-ttl=0".into(),
            "--security-poll-suffix=".into(),
            "--receiver-threads=1".into(),
            "--distributor-threads=1".into(),
            "--loglevel=4".into(),
        ]);
        cmd
    }

    pub fn spawn(&self, lifetime: Lifetime) -> Result<Child, ProcError> {
        spawn(self.command(), &self.log(), lifetime)
    }

    /// Ok(false) when the server exited (its port was taken): retry with new ports.
    pub fn wait_ready(&self, child: &mut Child) -> Result<bool, ProcError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.api("GET", "/api/v1/servers/localhost", "") {
                return Ok(true);
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(false);
            }
            // pdns keeps serving DNS when its API port was taken meanwhile (free ports race):
            // report it like an exit, so the caller retries on new ports.
            if std::fs::read_to_string(self.log()).is_ok_and(|l| l.contains("Listening on HTTP socket failed")) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ProcError::NotReady {
            what: "pdns_server".into(),
            timeout: Duration::from_secs(15),
            log: self.log().display().to_string(),
            tail: tail(&self.log()),
        })
    }

    /// A raw API call with the key; returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        http_with_key(&self.web, method, path, &self.api_key, body)
    }

    pub fn create_zone(&self) -> Result<(), ProcError> {
        let body = format!(r#"{{"name":"{}","kind":"Native","nameservers":["ns1.{}"]}}"#, self.zone, self.zone);
        match self.api("POST", "/api/v1/servers/localhost/zones", &body).map_err(io("PowerDNS API"))? {
            (201, _) => Ok(()),
            (status, resp) => Err(ProcError::Failed(format!("create zone {}: HTTP {status}: {resp}", self.zone))),
        }
    }

    /// Sets `name`'s `rtype` rrset to exactly `contents`.
    pub fn set(&self, name: &str, rtype: &str, ttl: u32, contents: &[&str]) -> Result<(), ProcError> {
        let records: Vec<String> = contents.iter().map(|c| format!(r#"{{"content":"{c}","disabled":false}}"#)).collect();
        let body = format!(
            r#"{{"rrsets":[{{"name":"{}.","type":"{rtype}","ttl":{ttl},"changetype":"REPLACE","records":[{}]}}]}}"#,
            name.trim_end_matches('.'),
            records.join(",")
        );
        match self.api("PATCH", &format!("/api/v1/servers/localhost/zones/{}", self.zone), &body).map_err(io("PowerDNS API"))? {
            (204, _) => Ok(()),
            (status, resp) => Err(ProcError::Failed(format!("set {name} {rtype}: HTTP {status}: {resp}"))),
        }
    }

    /// The API base URL, as `spec.dns.powerdns.apiUrl` takes it.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.web)
    }
}

/// Creates the gsqlite3 database from the schema Debian ships (plain or gzipped).
fn create_pdns_db(db: &Path) -> Result<(), ProcError> {
    let plain = Path::new(PDNS_SCHEMA_DIR).join("schema.sqlite3.sql");
    let schema = if plain.exists() {
        std::fs::read_to_string(&plain).map_err(io(format!("read {}", plain.display())))?
    } else {
        let gz = plain.with_extension("sql.gz");
        let out = Command::new("zcat").arg(&gz).output().map_err(io("run zcat"))?;
        if !out.status.success() {
            return Err(ProcError::Failed(format!("no PowerDNS sqlite schema at {} or {} (make deps)", plain.display(), gz.display())));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut sqlite = Command::new("sqlite3");
    sqlite.arg(db);
    let out = run_with_stdin(sqlite, schema.as_bytes(), "sqlite3")?;
    if !out.status.success() {
        return Err(ProcError::Failed(format!("sqlite3 schema: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}
