//! Test harness: real etcd and a real kube-apiserver on loopback, free ports, temp dirs.
//!
//! Every process is killed when its handle drops (also on panic), and asks the kernel to kill it
//! when the test process dies (PR_SET_PDEATHSIG), so a crashed test leaves nothing behind.
#![allow(dead_code)]

pub mod dns;
pub mod faults;
pub mod pair;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

pub const KUBE_VERSION: &str = "v1.34.4";

/// A free TCP port on 127.0.0.1. The listener is closed before the port is handed out, so
/// another process may win it; callers start servers with retries where that matters.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory with `kube-apiserver` and `kubectl` built from Go modules (built once per machine).
pub fn kube_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("DRCTL_KUBE_BIN_DIR") {
            return PathBuf::from(d);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("hack/build-kube.sh"))
            .env("KUBE_VERSION", KUBE_VERSION)
            .stderr(Stdio::inherit())
            .output()
            .expect("run hack/build-kube.sh");
        assert!(out.status.success(), "hack/build-kube.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

pub fn kubectl() -> PathBuf {
    kube_bin_dir().join("kubectl")
}

/// Spawns `cmd` so it dies with the spawning thread and logs into `log`. Spawn from the test's
/// own thread (not a helper thread that exits early), or the child is killed with that thread.
fn spawn(mut cmd: Command, log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let f = std::fs::File::create(log).expect("create log file");
    let f2 = f.try_clone().expect("clone log file");
    cmd.stdout(f).stderr(f2).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

/// A plain HTTP/1.0 GET, enough for health endpoints; None on any failure.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A single-member etcd (Debian `etcd-server`) in a temp dir.
pub struct Etcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub client_url: String,
    peer_url: String,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd::new();
        e.spawn();
        e.wait_ready();
        e
    }

    fn new() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        Etcd { child: None, dir, client_url, peer_url }
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = Command::new("etcd");
        cmd.args([
            "--name=default",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls={}", self.client_url),
            &format!("--advertise-client-urls={}", self.client_url),
            &format!("--listen-peer-urls={}", self.peer_url),
            &format!("--initial-advertise-peer-urls={}", self.peer_url),
            &format!("--initial-cluster=default={}", self.peer_url),
            "--max-request-bytes=10485760",
            "--quota-backend-bytes=8589934592",
            "--logger=zap",
            "--log-level=warn",
        ]);
        self.child = Some(spawn(cmd, &self.dir.path().join("etcd.log")));
    }

    fn wait_ready(&self) {
        let log = self.dir.path().join("etcd.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.client_url.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if http_get(&addr, "/health").is_some_and(|body| body.contains("\"health\":\"true\"")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not become healthy at {}:\n{}", self.client_url, tail(&log));
    }

    /// Kill -9, as a crash would.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c);
        }
        self.child = None;
    }

    /// Start again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.client_url.as_str()], None).await.expect("connect etcd")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Certificates for one apiserver: a CA, its serving cert, an admin client cert, an SA key.
struct Pki {
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

fn write_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.distinguished_name.push(DnType::CommonName, "drctl-test-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("self-sign ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().expect("serving key");
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("serving params");
    sp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    sp.subject_alt_names.push(SanType::DnsName("kubernetes.default.svc".try_into().expect("dns")));
    sp.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    sp.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    let serving = sp.signed_by(&serving_key, &issuer).expect("sign serving");

    let admin_key = KeyPair::generate().expect("admin key");
    let mut ap = CertificateParams::new(Vec::<String>::new()).expect("admin params");
    ap.distinguished_name.push(DnType::CommonName, "drctl-test-admin");
    ap.distinguished_name.push(DnType::OrganizationName, "system:masters");
    ap.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
    let admin = ap.signed_by(&admin_key, &issuer).expect("sign admin");

    let sa_key = KeyPair::generate().expect("sa key");

    let w = |name: &str, body: &str| std::fs::write(dir.join(name), body).expect("write pki file");
    w("ca.crt", &ca.pem());
    w("serving.crt", &serving.pem());
    w("serving.key", &serving_key.serialize_pem());
    w("sa.key", &sa_key.serialize_pem());
    w("sa.pub", &sa_key.public_key_pem());
    Pki { ca_pem: ca.pem(), admin_cert_pem: admin.pem(), admin_key_pem: admin_key.serialize_pem() }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A kube-apiserver built from the `k8s.io/kubernetes` Go module, on an etcd of its own.
pub struct ApiServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub kubeconfig: PathBuf,
    etcd_url: String,
    port: u16,
}

impl ApiServer {
    pub fn start(etcd: &Etcd) -> ApiServer {
        let mut a = ApiServer::spawn_new(etcd);
        a.wait_ready();
        a
    }

    fn spawn_new(etcd: &Etcd) -> ApiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = write_pki(dir.path());
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.path().join("kubeconfig");
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
            b64(&pki.ca_pem),
            b64(&pki.admin_cert_pem),
            b64(&pki.admin_key_pem)
        );
        std::fs::write(&kubeconfig, kc).expect("write kubeconfig");
        let mut a = ApiServer { child: None, dir, url, kubeconfig, etcd_url: etcd.client_url.clone(), port };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let p = |n: &str| d.join(n).display().to_string();
        let mut cmd = Command::new(kube_bin_dir().join("kube-apiserver"));
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
            "--authorization-mode=RBAC".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            "--endpoint-reconciler-type=none".into(),
            "-v=1".into(),
        ]);
        self.child = Some(spawn(cmd, &d.join("kube-apiserver.log")));
    }

    fn wait_ready(&mut self) {
        let log = self.dir.path().join("kube-apiserver.log");
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let ok = self
                .kubectl(&["get", "--raw", "/readyz"])
                .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok")
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("kube-apiserver exited with {status}:\n{}", tail(&log));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("kube-apiserver not ready at {}:\n{}", self.url, tail(&log));
    }

    /// Runs kubectl against this apiserver as admin.
    pub fn kubectl(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(kubectl()).arg(format!("--kubeconfig={}", self.kubeconfig.display())).args(args).output()
    }

    /// `kubectl apply -f -` with `manifest` on stdin; (success, stdout+stderr).
    pub fn apply_stdin(&self, manifest: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new(kubectl())
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        child.stdin.take().expect("stdin").write_all(manifest.as_bytes()).expect("write manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kube config");
        Client::try_from(cfg).expect("kube client")
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c);
        }
        self.child = None;
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One global cluster: its etcd and its kube-apiserver.
pub struct Global {
    pub name: String,
    // Field order matters: the apiserver drops (stops) before its etcd.
    pub api: ApiServer,
    pub etcd: Etcd,
}

impl Global {
    pub fn start(name: &str) -> Global {
        let etcd = Etcd::start();
        let api = ApiServer::start(&etcd);
        Global { name: name.to_string(), api, etcd }
    }

    /// Two independent globals. Processes are spawned from this thread (PR_SET_PDEATHSIG fires
    /// when the spawning *thread* exits) and then waited for together.
    pub fn start_pair(a: &str, b: &str) -> (Global, Global) {
        let (mut ea, mut eb) = (Etcd::new(), Etcd::new());
        ea.spawn();
        eb.spawn();
        ea.wait_ready();
        eb.wait_ready();
        let (mut aa, mut ab) = (ApiServer::spawn_new(&ea), ApiServer::spawn_new(&eb));
        aa.wait_ready();
        ab.wait_ready();
        (
            Global { name: a.to_string(), api: aa, etcd: ea },
            Global { name: b.to_string(), api: ab, etcd: eb },
        )
    }

    pub async fn client(&self) -> Client {
        self.api.client().await
    }
}

/// The `drctl` binary under test.
pub fn drctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_drctl"))
}
