//! The DNS switch and its verification against real servers: PowerDNS through its HTTP API,
//! BIND through RFC 2136 with TSIG, a webhook receiver that checks the HMAC.
use drctl_testsupport as support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drctl::dns::{self, DnsError, RecordKind, SwitchAction, SwitchContext};
use drctl::secret::LocalSecrets;
use drctl::topology::{DnsSpec, Platform};
use drctl::validated::{DnsProvider, Verify};
use serde_json::json;
use support::dns::{dig, BindServer, PowerDnsServer, Tsig};

const ZONE: &str = "example.test";
const DOMAIN: &str = "platform.example.test";
const OLD: &str = "192.0.2.1";
const NEW: &str = "192.0.2.2";
const NEW6: &str = "2001:db8::2";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn platform() -> Platform {
    Platform { domain: DOMAIN.into(), ttl: 30 }
}

fn spec(v: serde_json::Value) -> DnsProvider {
    DnsProvider::of(&serde_json::from_value::<DnsSpec>(v).expect("DnsSpec")).expect("one provider")
}

fn pdns_spec(p: &PowerDnsServer) -> DnsProvider {
    spec(json!({
        "powerdns": {"apiUrl": p.api_url(), "zone": ZONE, "apiKeySecretRef": {"namespace": "dns", "name": "pdns"}},
        "verify": {"resolvers": [p.addr().to_string()]},
    }))
}

fn bind_spec(b: &BindServer, key_name: &str, algorithm: &str) -> DnsProvider {
    spec(json!({
        "rfc2136": {
            "server": b.addr().to_string(), "zone": format!("{ZONE}."), "tsigKeyName": key_name,
            "tsigAlgorithm": algorithm, "tsigSecretRef": {"namespace": "dns", "name": "tsig"},
        },
        "verify": {"resolvers": [b.addr().to_string()]},
    }))
}

fn secrets(entries: &[(&str, &str, &str)]) -> LocalSecrets {
    let mut s = LocalSecrets::new();
    for (name, key, value) in entries {
        s.insert("dns", name, key, *value);
    }
    s
}

async fn switch(spec: &DnsProvider, target: &str, secrets: &LocalSecrets) -> Result<dns::SwitchOutcome, DnsError> {
    let annotations = BTreeMap::new();
    let ctx = SwitchContext { secrets, kube: None, annotations: &annotations };
    dns::switch(spec, &platform(), ip(target), &ctx).await
}

async fn resolved(server: SocketAddr) -> Vec<IpAddr> {
    dns::resolve(&[server], DOMAIN).await.expect("resolve")
}

/// The same sequence for any provider that can read its record back: set IPv4, set it again
/// (nothing to do), then switch to IPv6 (AAAA set, A removed). Checked through drctl's resolver
/// and through `dig`.
async fn switch_sequence(spec: &DnsProvider, server: SocketAddr, secrets: &LocalSecrets, provider: &str) {
    let o = switch(spec, NEW, secrets).await.expect("switch to NEW");
    assert_eq!(o.provider, provider);
    assert_eq!(o.action, SwitchAction::Updated);
    assert_eq!(o.record, RecordKind::A);
    assert_eq!(o.previous, Some(vec![ip(OLD)]));
    assert_eq!(resolved(server).await, vec![ip(NEW)]);
    assert_eq!(dig(server, DOMAIN, "A"), vec![NEW.to_string()]);

    let again = switch(spec, NEW, secrets).await.expect("switch to NEW again");
    assert_eq!(again.action, SwitchAction::Unchanged, "{again}");
    assert_eq!(again.previous, Some(vec![ip(NEW)]));

    let v6 = switch(spec, NEW6, secrets).await.expect("switch to NEW6");
    assert_eq!(v6.action, SwitchAction::Updated);
    assert_eq!(v6.record, RecordKind::Aaaa);
    assert_eq!(resolved(server).await, vec![ip(NEW6)]);
    assert_eq!(dig(server, DOMAIN, "AAAA"), vec![NEW6.to_string()]);
    assert!(dig(server, DOMAIN, "A").is_empty(), "the A record must be gone after switching to IPv6");

    // And back: the AAAA goes away again.
    switch(spec, NEW, secrets).await.expect("switch back to IPv4");
    assert_eq!(resolved(server).await, vec![ip(NEW)]);
    assert!(dig(server, DOMAIN, "AAAA").is_empty());
}

#[tokio::test]
async fn powerdns_switch_is_an_idempotent_set_for_ipv4_and_ipv6() {
    let p = PowerDnsServer::start(ZONE);
    p.set(DOMAIN, "A", 30, &[OLD]);
    let s = secrets(&[("pdns", "apiKey", p.key())]);
    switch_sequence(&pdns_spec(&p), p.addr(), &s, "powerdns").await;
}

#[tokio::test]
async fn powerdns_wrong_api_key_is_rejected_without_showing_it() {
    let p = PowerDnsServer::start(ZONE);
    let wrong = "not-the-key-123";
    let s = secrets(&[("pdns", "apiKey", wrong)]);
    let err = switch(&pdns_spec(&p), NEW, &s).await.expect_err("a wrong API key must fail");
    let msg = err.to_string();
    assert!(matches!(err, DnsError::HttpStatus { status: 401, .. }), "{msg}");
    assert!(msg.contains("API key was rejected"), "{msg}");
    assert!(!msg.contains(wrong) && !format!("{err:?}").contains(wrong), "error leaks the key: {err:?}");
}

#[tokio::test]
async fn rfc2136_switch_is_an_idempotent_set_for_ipv4_and_ipv6() {
    let tsig = Tsig::generate("drctl-key.", "hmac-sha256");
    let b = BindServer::start(ZONE, &tsig);
    b.nsupdate(&format!("update add {DOMAIN}. 30 A {OLD}"));
    assert_eq!(dig(b.addr(), DOMAIN, "A"), vec![OLD.to_string()]);
    let s = secrets(&[("tsig", "secret", &tsig.secret)]);
    switch_sequence(&bind_spec(&b, &tsig.name, &tsig.algorithm), b.addr(), &s, "rfc2136").await;
}

#[tokio::test]
async fn rfc2136_with_hmac_sha512_and_a_fresh_name() {
    let tsig = Tsig::generate("sha512-key", "hmac-sha512");
    let b = BindServer::start(ZONE, &tsig);
    let s = secrets(&[("tsig", "secret", &tsig.secret)]);
    let o = switch(&bind_spec(&b, &tsig.name, &tsig.algorithm), NEW, &s).await.expect("switch");
    assert_eq!(o.action, SwitchAction::Updated);
    assert_eq!(o.previous, Some(vec![]));
    assert_eq!(dig(b.addr(), DOMAIN, "A"), vec![NEW.to_string()]);
}

#[tokio::test]
async fn rfc2136_wrong_tsig_is_refused_clearly_and_changes_nothing() {
    let tsig = Tsig::generate("drctl-key.", "hmac-sha256");
    let b = BindServer::start(ZONE, &tsig);
    b.nsupdate(&format!("update add {DOMAIN}. 30 A {OLD}"));

    // Right key name, wrong secret.
    let wrong = support::dns::random_b64(32);
    let s = secrets(&[("tsig", "secret", &wrong)]);
    let err = switch(&bind_spec(&b, &tsig.name, &tsig.algorithm), NEW, &s).await.expect_err("wrong secret");
    let msg = err.to_string();
    assert!(matches!(err, DnsError::Refused { .. }), "{err:?}");
    assert!(msg.contains("BADSIG") && msg.contains("drctl-key."), "{msg}");
    for secret in [&wrong, &tsig.secret] {
        assert!(!msg.contains(secret.as_str()) && !format!("{err:?}").contains(secret.as_str()), "error leaks a key: {msg}");
    }

    // A key name the server does not know.
    let s = secrets(&[("tsig", "secret", &tsig.secret)]);
    let err = switch(&bind_spec(&b, "unknown-key.", &tsig.algorithm), NEW, &s).await.expect_err("unknown key");
    assert!(err.to_string().contains("BADKEY: the server does not know TSIG key unknown-key."), "{err}");

    // Not base64 at all: named as the Secret's problem, value not shown.
    let s = secrets(&[("tsig", "secret", "not base64 !!")]);
    let err = switch(&bind_spec(&b, &tsig.name, &tsig.algorithm), NEW, &s).await.expect_err("bad base64");
    assert_eq!(err.to_string(), "TSIG secret in Secret dns/tsig is not usable: not valid base64 (as in BIND's `secret \"...\"`)");

    assert_eq!(dig(b.addr(), DOMAIN, "A"), vec![OLD.to_string()], "a refused update must change nothing");
}

/// Two authoritative servers as two resolvers: verification waits for *every* one, reports each
/// answer when it gives up, and succeeds once the hook fixes the lagging one.
#[tokio::test]
async fn verify_times_out_naming_each_answer_then_succeeds_after_the_hook_fixes_it() {
    let p = PowerDnsServer::start(ZONE);
    let tsig = Tsig::generate("drctl-key.", "hmac-sha256");
    let b = BindServer::start(ZONE, &tsig);
    p.set(DOMAIN, "A", 30, &[NEW]);
    b.nsupdate(&format!("update add {DOMAIN}. 30 A {OLD}"));
    let resolvers = [p.addr(), b.addr()];
    let verify_spec = Verify { resolvers: resolvers.to_vec(), restart_core_dns: false, timeout: Duration::from_millis(1500) };

    let hooks = AtomicU32::new(0);
    let started = std::time::Instant::now();
    let err = dns::verify(&verify_spec, &platform(), ip(NEW), Duration::from_millis(1500), |answers| {
        hooks.fetch_add(1, Ordering::SeqCst);
        assert_eq!(answers.len(), 2);
        async {}
    })
    .await
    .expect_err("BIND still answers the old address");
    let msg = err.to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "timeout not honoured: {:?}", started.elapsed());
    assert!(msg.starts_with(&format!("{DOMAIN} did not resolve to exactly {NEW} within 1.5s")), "{msg}");
    assert!(msg.contains(&format!("{} answered {NEW}", p.addr())), "{msg}");
    assert!(msg.contains(&format!("{} answered {OLD}", b.addr())), "{msg}");
    assert!(hooks.load(Ordering::SeqCst) >= 2, "the hook runs on every wrong round");

    // The hook fixes BIND the way the controller's CoreDNS restart would fix a stale cache.
    let s = secrets(&[("tsig", "secret", &tsig.secret)]);
    let fix_spec = bind_spec(&b, &tsig.name, &tsig.algorithm);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let outcome = dns::verify_at(&resolvers, DOMAIN, ip(NEW), Duration::from_secs(10), |answers| {
        seen.lock().expect("lock").push(answers);
        let (fix_spec, s) = (&fix_spec, &s);
        async move {
            switch(fix_spec, NEW, s).await.expect("fix BIND");
        }
    })
    .await
    .expect("verify after the fix");
    assert_eq!(outcome.attempts, 2);
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0][1].result, Ok(vec![ip(OLD)]));
    assert_eq!(dig(b.addr(), DOMAIN, "A"), vec![NEW.to_string()]);
}

#[tokio::test]
async fn verify_fails_on_a_name_that_does_not_exist_and_on_a_dead_resolver() {
    let p = PowerDnsServer::start(ZONE);
    let dead: SocketAddr = ([127, 0, 0, 1], support::free_port()).into();
    let err = dns::verify_at(&[p.addr(), dead], DOMAIN, ip(NEW), Duration::from_millis(800), |_| async {}).await.expect_err("no record, dead resolver");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{} answered no address", p.addr())), "{msg}");
    assert!(msg.contains(&format!("{dead} failed:")), "{msg}");
}

/// A one-shot HTTP/1.1 server: reads one request, answers with the status the handler picks
/// from the request's head and body.
async fn webhook_server<F>(handler: F) -> (String, tokio::task::JoinHandle<(String, Vec<u8>)>)
where
    F: FnOnce(&str, &[u8]) -> u16 + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/dns", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, body) = loop {
            let n = sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before a full request");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
                let len: usize =
                    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().expect("len"))).unwrap_or(0);
                while buf.len() < pos + 4 + len {
                    let n = sock.read(&mut chunk).await.expect("read body");
                    assert!(n > 0, "connection closed mid-body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                break (head, buf[pos + 4..pos + 4 + len].to_vec());
            }
        };
        let status = handler(&head, &body);
        let reason = if status < 300 { "OK" } else { "Unauthorized" };
        let answer = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 9\r\nConnection: close\r\n\r\nbad hmac\n");
        sock.write_all(answer.as_bytes()).await.expect("write");
        (head, body)
    });
    (url, task)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// What a careful receiver does, independently of drctl's signing code: a timestamp within five
/// minutes, then a constant-time check of the HMAC over "<timestamp>.<body>".
fn hmac_ok(key: &[u8], head: &str, body: &[u8]) -> bool {
    let Some(ts) = header(head, dns::TIMESTAMP_HEADER) else { return false };
    let Ok(t) = ts.parse::<u64>() else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let Some(hex_tag) = header(head, dns::SIGNATURE_HEADER).and_then(|s| s.strip_prefix("sha256=")) else { return false };
    let Ok(tag) = hex::decode(hex_tag) else { return false };
    let signed = [format!("{ts}.").as_bytes(), body].concat();
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), &signed, &tag).is_ok()
}

#[tokio::test]
async fn webhook_posts_a_signed_set_and_reports_rejection() {
    let key = "webhook-shared-key";
    let (url, server) = webhook_server(move |head, body| if hmac_ok(key.as_bytes(), head, body) { 204 } else { 401 }).await;
    let wh = spec(json!({"webhook": {"url": url, "hmacSecretRef": {"namespace": "dns", "name": "hook"}}}));
    let s = secrets(&[("hook", "hmacKey", key)]);
    let o = switch(&wh, NEW6, &s).await.expect("webhook accepted");
    assert_eq!(o.action, SwitchAction::Requested);
    let (head, body) = server.await.expect("server task");
    assert!(head.starts_with("POST /dns HTTP/1.1"), "{head}");
    assert!(hmac_ok(key.as_bytes(), &head, &body));
    // A replay: the same body and signature under a timestamp an hour old no longer verifies,
    // nor does the captured signature with the timestamp moved forward.
    let ts: u64 = header(&head, dns::TIMESTAMP_HEADER).expect("timestamp").parse().expect("unix seconds");
    let sig = header(&head, dns::SIGNATURE_HEADER).expect("signature");
    let stale = format!("{}: {}\r\n{}: {sig}", dns::TIMESTAMP_HEADER, ts - 3600, dns::SIGNATURE_HEADER);
    assert!(!hmac_ok(key.as_bytes(), &stale, &body));
    let moved = format!("{}: {}\r\n{}: {sig}", dns::TIMESTAMP_HEADER, ts + 1, dns::SIGNATURE_HEADER);
    assert!(!hmac_ok(key.as_bytes(), &moved, &body), "the timestamp is covered by the signature");
    let got: serde_json::Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(got, json!({"domain": DOMAIN, "recordType": "AAAA", "address": NEW6, "ttl": 30}));

    // The receiver holds another key: drctl's signature does not verify, and the error says so.
    let (url, server) = webhook_server(|head, body| if hmac_ok(b"receiver-key", head, body) { 204 } else { 401 }).await;
    let wh = spec(json!({"webhook": {"url": url, "hmacSecretRef": {"namespace": "dns", "name": "hook"}}}));
    let err = switch(&wh, NEW, &s).await.expect_err("receiver rejects the signature");
    server.await.expect("server task");
    assert!(matches!(err, DnsError::HttpStatus { status: 401, .. }), "{err:?}");
    assert!(err.to_string().ends_with("answered HTTP 401: bad hmac\n"), "{err}");
    assert!(!err.to_string().contains(key));
}

#[tokio::test]
async fn manual_waits_for_the_operators_annotation() {
    let m = spec(json!({"manual": {"instructions": "call the NOC"}}));
    let secrets = LocalSecrets::new();
    let mut annotations = BTreeMap::new();
    let ctx = SwitchContext { secrets: &secrets, kube: None, annotations: &annotations };
    let o = dns::switch(&m, &platform(), ip(NEW), &ctx).await.expect("manual");
    let SwitchAction::WaitingForOperator(msg) = &o.action else { panic!("not waiting: {o}") };
    assert!(msg.contains("drctl.io/dns-confirmed=192.0.2.2") && msg.ends_with("(call the NOC)"), "{msg}");
    assert!(!o.is_done());
    annotations.insert(dns::CONFIRM_ANNOTATION.to_string(), NEW.to_string());
    let ctx = SwitchContext { secrets: &secrets, kube: None, annotations: &annotations };
    let o = dns::switch(&m, &platform(), ip(NEW), &ctx).await.expect("manual");
    assert!(o.is_done(), "{o}");
}

#[tokio::test]
async fn cli_dns_resolve_prints_each_resolvers_answer() {
    let p = PowerDnsServer::start(ZONE);
    p.set(DOMAIN, "A", 30, &[NEW]);
    p.set(DOMAIN, "AAAA", 30, &[NEW6]);
    let dead: SocketAddr = ([127, 0, 0, 1], support::free_port()).into();
    let out =
        support::drctl().args(["dns", "resolve", DOMAIN, "--resolver", &p.addr().to_string(), "--resolver", &dead.to_string()]).output().expect("run drctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failing resolver fails the command: {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("{}: {NEW}, {NEW6}", p.addr()));
    assert!(lines[1].starts_with(&format!("{dead}: error: ")), "{stdout}");
}

/// external-dns's `DNSEndpoint` CRD, trimmed to the fields drctl writes (upstream
/// kubernetes-sigs/external-dns config/crd/standard/dnsendpoint.yaml has the same shape).
const DNSENDPOINT_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: dnsendpoints.externaldns.k8s.io
  annotations:
    api-approved.kubernetes.io: "https://github.com/kubernetes-sigs/external-dns/pull/2007"
spec:
  group: externaldns.k8s.io
  names: {kind: DNSEndpoint, listKind: DNSEndpointList, plural: dnsendpoints, singular: dnsendpoint}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              endpoints:
                type: array
                items:
                  type: object
                  properties:
                    dnsName: {type: string}
                    recordTTL: {type: integer, format: int64}
                    recordType: {type: string}
                    setIdentifier: {type: string}
                    targets: {type: array, items: {type: string}}
                    labels: {type: object, additionalProperties: {type: string}}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"#;

fn endpoints(g: &support::Global, name: &str) -> serde_json::Value {
    let out = g.api.kubectl_ok(&["-n", "dns", "get", "dnsendpoint", name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["spec"]["endpoints"].clone()
}

/// On a real kube-apiserver: the TSIG key comes from a Kubernetes Secret (KubeSecrets), and the
/// external-dns provider rewrites a DNSEndpoint with server-side apply.
#[tokio::test(flavor = "multi_thread")]
async fn kube_secrets_and_external_dns_on_a_real_apiserver() {
    use drctl::secret::{KubeSecrets, SecretSource};
    let g = support::Global::start("global-a");
    let tsig = Tsig::generate("drctl-key.", "hmac-sha256");
    let b = BindServer::start(ZONE, &tsig);
    let tmp = tempfile::tempdir().expect("tempdir");
    let crd = tmp.path().join("crd.yaml");
    std::fs::write(&crd, DNSENDPOINT_CRD).expect("write crd");
    g.api.kubectl_ok(&["apply", "-f", crd.to_str().expect("path")]);
    g.api.kubectl_ok(&["create", "namespace", "dns"]);
    g.api.kubectl_ok(&["-n", "dns", "create", "secret", "generic", "tsig", &format!("--from-literal=secret={}", tsig.secret)]);
    g.api.wait_crd("dnsendpoints.externaldns.k8s.io");
    let client = g.client().await;
    let secrets = KubeSecrets::new(client.clone());

    // KubeSecrets: found, missing key, missing Secret.
    let r = |name: &str, key: Option<&str>| drctl::topology::SecretRef { namespace: "dns".into(), name: name.into(), key: key.map(str::to_string) };
    let got = secrets.get(&r("tsig", None), "secret").await.expect("read Secret");
    assert_eq!(got.expose(), tsig.secret.as_bytes());
    let err = secrets.get(&r("tsig", Some("apiKey")), "secret").await.expect_err("missing key");
    assert_eq!(err.to_string(), "Secret dns/tsig has no key \"apiKey\" (keys: secret)");
    let err = secrets.get(&r("nope", None), "secret").await.expect_err("missing Secret");
    assert_eq!(err.to_string(), "Secret dns/nope not found");

    // RFC 2136 with the key read from the Secret.
    let annotations = BTreeMap::new();
    let ctx = SwitchContext { secrets: &secrets, kube: Some(client.clone()), annotations: &annotations };
    let o = dns::switch(&bind_spec(&b, &tsig.name, &tsig.algorithm), &platform(), ip(NEW), &ctx).await.expect("rfc2136");
    assert_eq!(o.action, SwitchAction::Updated);
    assert_eq!(dig(b.addr(), DOMAIN, "A"), vec![NEW.to_string()]);

    // external-dns: an existing object with another name's endpoint, which must survive.
    let existing = tmp.path().join("endpoint.yaml");
    std::fs::write(
        &existing,
        format!(
            "apiVersion: externaldns.k8s.io/v1alpha1\nkind: DNSEndpoint\nmetadata: {{name: platform, namespace: dns}}\nspec:\n  endpoints:\n  - {{dnsName: other.{ZONE}, recordType: A, recordTTL: 60, targets: [192.0.2.9]}}\n  - {{dnsName: {DOMAIN}, recordType: A, recordTTL: 30, targets: [{OLD}]}}\n"
        ),
    )
    .expect("write endpoint");
    g.api.kubectl_ok(&["apply", "-f", existing.to_str().expect("path")]);
    let ext = spec(json!({"externalDns": {"namespace": "dns", "name": "platform"}}));
    let o = dns::switch(&ext, &platform(), ip(NEW), &ctx).await.expect("externalDns");
    assert_eq!((o.action.clone(), o.previous.clone()), (SwitchAction::Updated, Some(vec![ip(OLD)])));
    assert_eq!(
        endpoints(&g, "platform"),
        json!([
            {"dnsName": format!("other.{ZONE}"), "recordType": "A", "recordTTL": 60, "targets": ["192.0.2.9"]},
            {"dnsName": DOMAIN, "recordType": "A", "recordTTL": 30, "targets": [NEW]},
        ])
    );
    let again = dns::switch(&ext, &platform(), ip(NEW), &ctx).await.expect("externalDns again");
    assert_eq!(again.action, SwitchAction::Unchanged);
    let v6 = dns::switch(&ext, &platform(), ip(NEW6), &ctx).await.expect("externalDns v6");
    assert_eq!(v6.action, SwitchAction::Updated);
    assert_eq!(endpoints(&g, "platform")[1], json!({"dnsName": DOMAIN, "recordType": "AAAA", "recordTTL": 30, "targets": [NEW6]}));
    assert_eq!(endpoints(&g, "platform").as_array().map(Vec::len), Some(2));

    // A missing object is created.
    let fresh = spec(json!({"externalDns": {"namespace": "dns", "name": "fresh"}}));
    let o = dns::switch(&fresh, &platform(), ip(NEW), &ctx).await.expect("create DNSEndpoint");
    assert_eq!((o.action, o.previous), (SwitchAction::Updated, Some(vec![])));
    assert_eq!(endpoints(&g, "fresh"), json!([{"dnsName": DOMAIN, "recordType": "A", "recordTTL": 30, "targets": [NEW]}]));
}
