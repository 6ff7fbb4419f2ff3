//! Secrets never leak: a planned failover on two real globals with planted secret values — the
//! PowerDNS API key and the peer kubeconfig's client key (both used by the controller), a webhook
//! HMAC key (used to sign a post-hook), and a TSIG secret and an etcd client key (in Secrets the
//! mirror copies byte for byte) — then controller logs, Events, status, /metrics and /check are
//! searched for every value, raw and base64. `/check` requires its bearer token when given one.

use drctl_testsupport as support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use drctl::topology::{DRTopologyStatus, Phase, Role};
use support::pair::{Controller, Pair};

const STEADY: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(120);

fn standby_in_sync(s: &DRTopologyStatus) -> bool {
    s.role == Some(Role::Standby) && s.phase == Some(Phase::Steady) && s.sync.as_ref().is_some_and(|y| y.missed_keys == Some(0))
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A secret value and the fragments of it a leak could show.
struct Planted {
    what: &'static str,
    needles: Vec<String>,
}

impl Planted {
    fn text(what: &'static str, value: &str) -> Planted {
        Planted { what, needles: vec![value.to_string(), b64(value.as_bytes())] }
    }

    /// A PEM key: every body line is searched (a leak of any part of the key counts).
    fn pem(what: &'static str, pem: &str) -> Planted {
        let mut needles: Vec<String> = pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_string).collect();
        needles.push(b64(pem.as_bytes())[..40].to_string());
        Planted { what, needles }
    }
}

/// (timestamp, signature, body) of each request a receiver got.
type Requests = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// Answers every HTTP request 200 and records (timestamp, signature, body) of each.
fn hook_receiver() -> (u16, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let (mut len, mut sig, mut ts) = (0usize, String::new(), String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-drctl-signature:") {
                    sig = line["x-drctl-signature:".len()..].trim().to_string();
                }
                if lower.starts_with("x-drctl-timestamp:") {
                    ts = line["x-drctl-timestamp:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            record.lock().expect("lock").push((ts, sig, body));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, seen)
}

/// GET with an optional bearer token: (status code, body).
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect controller");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, resp)
}

#[tokio::test(flavor = "multi_thread")]
async fn planted_secrets_never_appear_in_logs_events_or_status() {
    let mut pair = Pair::start().await;
    let nonce = format!("{}{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos());
    let hmac_key = format!("canary-hmac-{nonce}");
    let tsig = b64(format!("canary-tsig-{nonce}").as_bytes());
    let etcd_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let kubeconfig = std::fs::read_to_string(&pair.a.api.kubeconfig).expect("kubeconfig");
    let client_key_b64 = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("client-key-data: ")).expect("client key").to_string();
    let client_key_pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&client_key_b64).expect("b64")).expect("pem");
    let mut planted = vec![
        Planted::text("PowerDNS API key", &pair.pdns.api_key),
        Planted::text("webhook HMAC key", &hmac_key),
        Planted::text("TSIG secret", &tsig),
        Planted::pem("etcd client key", &etcd_key),
        Planted::pem("peer kubeconfig client key", &client_key_pem),
    ];
    planted[4].needles.push(client_key_b64[..40].to_string());

    let (port, received) = hook_receiver();
    pair.failover_extra = format!(
        "    postHooks:\n    - name: notify\n      webhook: {{url: \"http://127.0.0.1:{port}/hook\", hmacSecretRef: {{name: hook-hmac, namespace: drctl-system}}}}\n"
    );
    let key_file = pair.dir.path().join("etcd-client.key");
    std::fs::write(&key_file, &etcd_key).expect("write key");
    let key_arg = format!("--from-file=tls.key={}", key_file.display());
    for g in [&pair.a, &pair.b] {
        g.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "hook-hmac", &format!("--from-literal=hmacKey={hmac_key}")]);
        g.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "tsig", &format!("--from-literal=secret={tsig}")]);
        g.api.kubectl_ok(&["-n", "drctl-system", "create", "secret", "generic", "etcd-client", &key_arg]);
    }
    // In a replicated namespace: the mirror carries these bytes from A to B.
    pair.a.api.kubectl_ok(&["create", "namespace", "apps"]);
    pair.a.api.kubectl_ok(&["-n", "apps", "create", "secret", "generic", "app-creds", &format!("--from-literal=tsig={tsig}"), &key_arg]);

    let token = format!("check-token-{nonce}");
    let token_file = pair.dir.path().join("check-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");
    let token_arg = format!("--check-token-file={}", token_file.display());
    pair.apply_both("global-a");
    let ca = pair.controller(&pair.a, &[&token_arg]);
    let cb = pair.controller(&pair.b, &[&token_arg]);
    pair.wait(&pair.a, "A primary", STEADY, &[&ca, &cb], |s| s.role == Some(Role::Primary) && s.phase == Some(Phase::Steady)).await;
    pair.wait(&pair.b, "B standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    let copied = pair.b.api.kubectl_ok(&["-n", "apps", "get", "secret", "app-creds", "-o", "jsonpath={.data.tsig}"]);
    assert_eq!(copied, b64(tsig.as_bytes()), "the mirror copied the Secret byte for byte");

    // /check answers only with the token.
    let addr = cb.listen.to_string();
    assert_eq!(get(&addr, "/check", None).0, 401);
    assert_eq!(get(&addr, "/check", Some("wrong")).0, 401);
    let (code, body) = get(&addr, "/check", Some(&token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"consistent\""), "{body}");
    assert_eq!(get(&addr, "/metrics", None).0, 200, "metrics need no token");

    // A planned failover: DNS switched with the API key, the peer reached with its kubeconfig,
    // the post-hook signed with the HMAC key.
    pair.apply_both("global-b");
    pair.wait(&pair.b, "B failover done", FAILOVER, &[&ca, &cb], |s| s.failover.as_ref().is_some_and(|f| f.completed_at.is_some())).await;
    pair.wait(&pair.a, "A standby in sync", STEADY, &[&ca, &cb], standby_in_sync).await;
    let calls = received.lock().expect("lock").clone();
    assert!(!calls.is_empty(), "the post-hook was called");
    for (ts, sig, body) in &calls {
        assert!(ts.parse::<u64>().is_ok(), "a signed Unix timestamp: {ts:?}");
        let signed = [format!("{ts}.").as_bytes(), body].concat();
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hmac_key.as_bytes()), &signed);
        assert_eq!(sig, &format!("sha256={}", hex::encode(tag.as_ref())), "signature verifies with the planted key");
    }

    // Everything an operator or an attacker with read access to these could see.
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for c in [&ca, &cb] {
        haystacks.push((c.log.display().to_string(), std::fs::read_to_string(&c.log).expect("log")));
        haystacks.push((format!("{} /metrics", c.listen), get(&c.listen.to_string(), "/metrics", None).1));
        haystacks.push((format!("{} /check", c.listen), get(&c.listen.to_string(), "/check", Some(&token)).1));
    }
    for g in [&pair.a, &pair.b] {
        let events = g.api.kubectl_ok(&["get", "events.events.k8s.io", "-A", "-o", "yaml"]);
        haystacks.push((format!("{} events", g.name), events));
        haystacks.push((format!("{} status", g.name), g.api.kubectl_ok(&["get", "drt", "-o", "yaml"])));
    }
    let total: usize = haystacks.iter().map(|(_, h)| h.len()).sum();
    let all_events: String = haystacks.iter().filter(|(n, _)| n.ends_with("events")).map(|(_, h)| h.as_str()).collect();
    for reason in ["FailoverStarted", "StepSwitchDNS", "StepPostHooks", "DemotionAcknowledged"] {
        assert!(all_events.contains(&format!("reason: {reason}")), "no {reason} Event to search:\n{all_events}");
    }
    let mut leaks = Vec::new();
    for p in &planted {
        for n in &p.needles {
            for (where_, h) in &haystacks {
                if h.contains(n.as_str()) {
                    leaks.push(format!("{} ({n:.12}…) in {where_}", p.what));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secret values leaked:\n{}", leaks.join("\n"));
    let needles: usize = planted.iter().map(|p| p.needles.len()).sum();
    eprintln!("security: {} planted values ({needles} fragments) searched in {} sources, {total} bytes: 0 found", planted.len(), haystacks.len());
    drop::<[Controller; 2]>([ca, cb]);
}

/// Credentials in an etcd URL given on the command line are refused before any connection, and
/// neither the error nor the log repeats them (at any log level).
#[test]
fn credentials_in_etcd_flags_are_refused_and_never_printed() {
    let canary = format!("canary-pw-{}", std::process::id());
    let url = format!("https://root:{canary}@127.0.0.1:1");
    for cmd in ["check", "mirror"] {
        let out = support::drctl().env("DRCTL_LOG", "trace").args([cmd, "--source", &url, "--dest", "https://127.0.0.1:2"]).output().expect("run drctl");
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{cmd}: {all}");
        assert!(all.contains("etcd endpoint https://***@127.0.0.1:1: the URL carries credentials"), "{cmd}: {all}");
        assert!(!all.contains(&canary) && !all.contains("root:"), "{cmd} printed the credentials: {all}");
    }
}
