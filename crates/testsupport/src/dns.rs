//! Real DNS servers for tests: PowerDNS (gsqlite3 backend, HTTP API) and BIND (`named`, dynamic
//! updates with TSIG), each on 127.0.0.1 free ports in a temp dir, killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use drctl_testbed::procs;

use super::{free_port, kill, spawn, tail};

/// Random bytes from the kernel, base64-encoded: TSIG secrets, API keys.
pub fn random_b64(n: usize) -> String {
    procs::random_b64(n).expect("random bytes")
}

/// `dig +short` through `server`: what a plain client sees, independent of drctl's own code.
pub fn dig(server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    procs::dig(server, name, rtype).unwrap_or_else(|e| panic!("{e}"))
}

/// PowerDNS authoritative server with the gsqlite3 backend and the HTTP API on loopback. The zone
/// is created through the API.
pub struct PowerDnsServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub dns: SocketAddr,
    pub api_key: String,
    pub zone: String,
    server: procs::PowerDns,
}

impl PowerDnsServer {
    /// Starts PowerDNS and creates `zone` (e.g. `example.test.`).
    pub fn start(zone: &str) -> PowerDnsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let api_key = random_b64(18);
        let (child, server) = super::on_fresh_ports("pdns_server", || {
            let server = procs::PowerDns::prepare(dir.path(), zone, &api_key).expect("prepare pdns");
            let mut child = spawn(server.command(), &server.log());
            if !server.wait_ready(&mut child).unwrap_or_else(|e| panic!("{e}")) {
                kill(&mut child);
                return Err(tail(&dir.path().join("pdns.log")));
            }
            server.create_zone().unwrap_or_else(|e| panic!("{e}"));
            Ok((child, server))
        });
        let (dns, zone) = (server.dns, server.zone.clone());
        PowerDnsServer { child: Some(child), dir, dns, api_key, zone, server }
    }

    /// A raw API call with the right key; returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.server.api(method, path, body).expect("PowerDNS API request")
    }

    /// Sets `name`'s `rtype` rrset to `contents` directly through the API (test setup).
    pub fn set(&self, name: &str, rtype: &str, ttl: u32, contents: &[&str]) {
        self.server.set(name, rtype, ttl, contents).unwrap_or_else(|e| panic!("{e}"));
    }

    /// The API base URL, as `spec.dns.powerdns.apiUrl` takes it.
    pub fn api_url(&self) -> String {
        self.server.api_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.dns
    }

    pub fn key(&self) -> &str {
        &self.api_key
    }
}

impl Drop for PowerDnsServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c);
        }
    }
}

/// A TSIG key as BIND and `spec.dns.rfc2136` name it.
#[derive(Clone)]
pub struct Tsig {
    pub name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    /// Base64, as in BIND's `secret "..."` and the Secret's `secret` key.
    pub secret: String,
}

impl Tsig {
    pub fn generate(name: &str, algorithm: &str) -> Tsig {
        Tsig { name: name.to_string(), algorithm: algorithm.to_string(), secret: random_b64(32) }
    }
}

/// BIND 9 (`named -g`) serving one primary zone from a file in the temp dir; `tsig` may update it.
pub struct BindServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub dns: SocketAddr,
    pub zone: String,
    pub tsig: Tsig,
}

impl BindServer {
    pub fn start(zone: &str, tsig: &Tsig) -> BindServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let zone = zone.trim_end_matches('.').to_string();
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("zone.db"),
            format!("$TTL 60\n@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n"),
        )
        .expect("write zone file");
        let mut s = BindServer { child: None, dir, dns: ([127, 0, 0, 1], 0).into(), zone, tsig: tsig.clone() };
        super::on_fresh_ports("named", || {
            s.dns = ([127, 0, 0, 1], free_port()).into();
            let conf = format!(
                r#"options {{
  directory "{d}"; pid-file "{d}/named.pid"; session-keyfile "{d}/session.key"; managed-keys-directory "{d}";
  listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
  recursion no; dnssec-validation no; notify no;
}};
controls {{ }};
key "{key}" {{ algorithm {alg}; secret "{secret}"; }};
zone "{zone}" {{ type primary; file "{d}/zone.db"; allow-update {{ key "{key}"; }}; }};
"#,
                port = s.dns.port(),
                key = s.tsig.name,
                alg = s.tsig.algorithm,
                secret = s.tsig.secret,
                zone = s.zone,
            );
            std::fs::write(s.dir.path().join("named.conf"), conf).expect("write named.conf");
            s.spawn();
            if s.wait_ready() {
                return Ok(());
            }
            s.stop();
            Err(tail(&s.dir.path().join("named.log")))
        });
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("named");
        cmd.args(["-g", "-n", "1", "-c"]).arg(self.dir.path().join("named.conf"));
        self.child = Some(spawn(cmd, &self.dir.path().join("named.log")));
    }

    /// Ready once the log says it is running and listening on our port; false when it exited
    /// or could not bind (the free port was taken meanwhile: named then runs on without it).
    fn wait_ready(&mut self) -> bool {
        let log = self.dir.path().join("named.log");
        let listening = format!("127.0.0.1#{}", self.dns.port());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("address in use") || text.contains("interface ignored") {
                return false;
            }
            if text.contains("running") && text.contains(&listening) {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("named not ready:\n{}", tail(&log));
    }

    /// Applies an `nsupdate` script (without `server`/`zone`/`send`) signed with the key (test
    /// setup through BIND's own client).
    pub fn nsupdate(&self, script: &str) {
        let full = format!("server {} {}\nzone {}\n{script}\nsend\n", self.dns.ip(), self.dns.port(), self.zone);
        let key = format!("{}:{}:{}", self.tsig.algorithm, self.tsig.name, self.tsig.secret);
        let mut cmd = Command::new("nsupdate");
        cmd.args(["-y", &key]);
        let out = procs::run_with_stdin(cmd, full.as_bytes(), "nsupdate").unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "nsupdate failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn addr(&self) -> SocketAddr {
        self.dns
    }

    pub fn key(&self) -> &Tsig {
        &self.tsig
    }

    fn stop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c);
        }
        self.child = None;
    }
}

impl Drop for BindServer {
    fn drop(&mut self) {
        self.stop();
    }
}
