//! Real DNS servers for tests: PowerDNS (gsqlite3 backend, HTTP API) and BIND (`named`, dynamic
//! updates with TSIG), each on 127.0.0.1 free ports in a temp dir, killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, kill, spawn, tail};

const PDNS_SCHEMA_DIR: &str = "/usr/share/doc/pdns-backend-sqlite3";

/// Random bytes from the kernel, base64-encoded: TSIG secrets, API keys.
pub fn random_b64(n: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// `dig +short` through `server`: what a plain client sees, independent of drctl's own code.
pub fn dig(server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args(["+short", "+tries=2", "+time=2", &format!("@{}", server.ip()), "-p", &server.port().to_string(), name, rtype])
        .output()
        .expect("run dig");
    assert!(out.status.success(), "dig failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect();
    v.sort();
    v
}

/// A plain HTTP/1.0 request with an API key; returns (status, body).
fn http(addr: &str, method: &str, path: &str, key: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
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

/// PowerDNS authoritative server with the gsqlite3 backend and the HTTP API on loopback. The zone
/// is created through the API.
pub struct PowerDnsServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub dns: SocketAddr,
    web: String,
    pub api_key: String,
    pub zone: String,
}

impl PowerDnsServer {
    /// Starts PowerDNS and creates `zone` (e.g. `example.test.`).
    pub fn start(zone: &str) -> PowerDnsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        create_pdns_db(&dir.path().join("pdns.sqlite3"));
        std::fs::write(dir.path().join("pdns.conf"), "").expect("write pdns.conf");
        let zone = format!("{}.", zone.trim_end_matches('.'));
        let api_key = random_b64(18);
        let mut s = PowerDnsServer { child: None, dir, dns: ([127, 0, 0, 1], 0).into(), web: String::new(), api_key, zone };
        // A free port can be taken by someone else before pdns binds it: retry with new ports.
        for _ in 0..3 {
            s.dns = ([127, 0, 0, 1], free_port()).into();
            s.web = format!("127.0.0.1:{}", free_port());
            s.spawn();
            if s.wait_ready() {
                s.create_zone();
                return s;
            }
            s.stop();
        }
        panic!("pdns_server did not start:\n{}", tail(&s.dir.path().join("pdns.log")))
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let (web_addr, web_port) = self.web.split_once(':').expect("web addr");
        let mut cmd = Command::new("pdns_server");
        cmd.args([
            format!("--config-dir={}", d.display()),
            "--launch=gsqlite3".into(),
            format!("--gsqlite3-database={}", d.join("pdns.sqlite3").display()),
            format!("--local-address={}", self.dns.ip()),
            format!("--local-port={}", self.dns.port()),
            "--api=yes".into(),
            format!("--api-key={}", self.api_key),
            "--webserver=yes".into(),
            format!("--webserver-address={web_addr}"),
            format!("--webserver-port={web_port}"),
            "--webserver-allow-from=127.0.0.0/8".into(),
            format!("--socket-dir={}", d.display()),
            "--guardian=no".into(),
            "--daemon=no".into(),
            "--disable-syslog=yes".into(),
            // Tests read right after writing: no caches between the API and DNS answers.
            "--cache-ttl=0".into(),
            "--query-cache-ttl=0".into(),
            "--negquery-cache-ttl=0".into(),
            "--security-poll-suffix=".into(),
            "--receiver-threads=1".into(),
            "--distributor-threads=1".into(),
            "--loglevel=4".into(),
        ]);
        self.child = Some(spawn(cmd, &d.join("pdns.log")));
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http(&self.web, "GET", "/api/v1/servers/localhost", &self.api_key, "") {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pdns_server not ready:\n{}", tail(&self.dir.path().join("pdns.log")));
    }

    fn create_zone(&self) {
        let body = format!(r#"{{"name":"{}","kind":"Native","nameservers":["ns1.{}"]}}"#, self.zone, self.zone);
        let (status, resp) = self.api("POST", "/api/v1/servers/localhost/zones", &body);
        assert_eq!(status, 201, "create zone {}: {resp}", self.zone);
    }

    /// A raw API call with the right key; returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(&self.web, method, path, &self.api_key, body).expect("PowerDNS API request")
    }

    /// Sets `name`'s `rtype` rrset to `contents` directly through the API (test setup).
    pub fn set(&self, name: &str, rtype: &str, ttl: u32, contents: &[&str]) {
        let records: Vec<String> =
            contents.iter().map(|c| format!(r#"{{"content":"{c}","disabled":false}}"#)).collect();
        let body = format!(
            r#"{{"rrsets":[{{"name":"{}.","type":"{rtype}","ttl":{ttl},"changetype":"REPLACE","records":[{}]}}]}}"#,
            name.trim_end_matches('.'),
            records.join(",")
        );
        let (status, resp) = self.api("PATCH", &format!("/api/v1/servers/localhost/zones/{}", self.zone), &body);
        assert_eq!(status, 204, "set {name} {rtype}: {resp}");
    }

    /// The API base URL, as `spec.dns.powerdns.apiUrl` takes it.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.web)
    }

    pub fn addr(&self) -> SocketAddr {
        self.dns
    }

    pub fn key(&self) -> &str {
        &self.api_key
    }

    fn stop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c);
        }
        self.child = None;
    }
}

impl Drop for PowerDnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates the gsqlite3 database from the schema Debian ships (plain or gzipped).
fn create_pdns_db(db: &Path) {
    let plain = Path::new(PDNS_SCHEMA_DIR).join("schema.sqlite3.sql");
    let schema = if plain.exists() {
        std::fs::read_to_string(&plain).expect("read pdns schema")
    } else {
        let gz = plain.with_extension("sql.gz");
        let out = Command::new("zcat").arg(&gz).output().expect("run zcat");
        assert!(out.status.success(), "no PowerDNS sqlite schema at {} or {}", plain.display(), gz.display());
        String::from_utf8(out.stdout).expect("schema is UTF-8")
    };
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sqlite3");
    child.stdin.take().expect("stdin").write_all(schema.as_bytes()).expect("write schema");
    let out = child.wait_with_output().expect("wait sqlite3");
    assert!(out.status.success(), "sqlite3 schema: {}", String::from_utf8_lossy(&out.stderr));
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
            format!(
                "$TTL 60\n@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n"
            ),
        )
        .expect("write zone file");
        let mut s = BindServer { child: None, dir, dns: ([127, 0, 0, 1], 0).into(), zone, tsig: tsig.clone() };
        for _ in 0..3 {
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
                return s;
            }
            s.stop();
        }
        panic!("named did not start:\n{}", tail(&s.dir.path().join("named.log")))
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("named");
        cmd.args(["-g", "-n", "1", "-c"]).arg(self.dir.path().join("named.conf"));
        self.child = Some(spawn(cmd, &self.dir.path().join("named.log")));
    }

    /// Ready once the log says it is running; false when it exited (port taken).
    fn wait_ready(&mut self) -> bool {
        let log = self.dir.path().join("named.log");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("running")) {
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
        let mut child = Command::new("nsupdate")
            .args(["-y", &key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsupdate");
        child.stdin.take().expect("stdin").write_all(full.as_bytes()).expect("write nsupdate script");
        let out = child.wait_with_output().expect("wait nsupdate");
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
