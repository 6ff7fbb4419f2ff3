//! A generic webhook: POST `{domain, recordType, address, ttl}` as JSON, signed with
//! HMAC-SHA256 over a timestamp and the exact body so the receiver can trust it and refuse a
//! replay (an old "point at A" resent after a failover to B). Any 2xx means accepted; the
//! receiver must treat the request as an idempotent set.

use std::net::IpAddr;

use serde_json::json;

use super::{http_client, DnsError, RecordKind, SwitchAction, SwitchOutcome};
use crate::secret::SecretSource;
use crate::topology::{Platform, WebhookDns};

/// The header carrying `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Drctl-Signature";
/// The header carrying the signing time, Unix seconds; receivers refuse old ones.
pub const TIMESTAMP_HEADER: &str = "X-Drctl-Timestamp";

/// The value of [`SIGNATURE_HEADER`] for `body` signed with `key` at `timestamp`.
fn signature_header(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key));
    ctx.update(format!("{timestamp}.").as_bytes());
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// Both headers for `body` signed with `key` now.
fn signed_headers(key: &[u8], body: &[u8]) -> [(&'static str, String); 2] {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    [(TIMESTAMP_HEADER, now.to_string()), (SIGNATURE_HEADER, signature_header(key, now, body))]
}

/// A JSON POST of `body` to `url`, signed when there is a key (DNS webhook and hook webhooks).
pub fn json_post(client: &reqwest::Client, url: &str, key: Option<&[u8]>, body: Vec<u8>) -> reqwest::RequestBuilder {
    let mut req = client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in key.map(|k| signed_headers(k, &body)).into_iter().flatten() {
        req = req.header(name, value);
    }
    req.body(body)
}

pub(super) fn body(platform: &Platform, target: IpAddr) -> Vec<u8> {
    let v = json!({
        "domain": platform.domain,
        "recordType": RecordKind::for_ip(target).as_str(),
        "address": target.to_string(),
        "ttl": platform.ttl,
    });
    v.to_string().into_bytes()
}

#[tracing::instrument(skip_all, fields(url = %crate::urls::redact(&cfg.url)))]
pub(super) async fn switch(cfg: &WebhookDns, platform: &Platform, target: IpAddr, secrets: &dyn SecretSource) -> Result<SwitchOutcome, DnsError> {
    let r = &cfg.hmac_secret_ref;
    let key = secrets.get(r, "hmacKey").await?;
    if key.expose().is_empty() {
        return Err(DnsError::bad_secret("webhook HMAC key", r, "empty"));
    }
    let body = body(platform, target);
    let url = crate::urls::redact(&cfg.url);
    let http = |source: reqwest::Error| DnsError::Http { url: url.clone(), source: source.without_url() };
    let client = http_client().map_err(http)?;
    let resp = json_post(&client, &cfg.url, Some(key.expose()), body).send().await.map_err(http)?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(DnsError::HttpStatus { url, status: status.as_u16(), body: text.chars().take(300).collect() });
    }
    Ok(SwitchOutcome {
        provider: "webhook",
        domain: platform.domain.clone(),
        record: RecordKind::for_ip(target),
        target,
        previous: None,
        action: SwitchAction::Requested,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256_of_timestamp_dot_body() {
        // Streaming the two parts must equal one HMAC over the joined message.
        let got = signature_header(b"Jefe", 0, b"what do ya want for nothing?");
        let whole = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe"), b"0.what do ya want for nothing?");
        assert_eq!(got, format!("sha256={}", hex::encode(whole.as_ref())));
        assert_ne!(signature_header(b"Jefe", 1, b"what do ya want for nothing?"), got, "the timestamp is signed");
    }

    #[test]
    fn signed_headers_carry_the_time_they_sign() {
        let [(tn, t), (sn, sig)] = signed_headers(b"k", b"{}");
        assert_eq!((tn, sn), (TIMESTAMP_HEADER, SIGNATURE_HEADER));
        let t: u64 = t.parse().expect("unix seconds");
        assert!(t > 1_700_000_000);
        assert_eq!(sig, signature_header(b"k", t, b"{}"));
    }

    #[test]
    fn body_names_domain_type_address_and_ttl() {
        let p = Platform { domain: "platform.example.com".into(), ttl: 30 };
        let b: serde_json::Value = serde_json::from_slice(&body(&p, "2001:db8::2".parse().expect("ip"))).expect("json");
        assert_eq!(b, json!({"domain": "platform.example.com", "recordType": "AAAA", "address": "2001:db8::2", "ttl": 30}));
    }
}
