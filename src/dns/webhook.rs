//! A generic webhook: POST `{domain, recordType, address, ttl}` as JSON, signed with
//! HMAC-SHA256 of the exact body so the receiver can trust it. Any 2xx means accepted; the
//! receiver must treat the request as an idempotent set.

use std::net::IpAddr;

use serde_json::json;

use super::{http_client, DnsError, RecordKind, SwitchAction, SwitchOutcome};
use crate::secret::SecretSource;
use crate::topology::{Platform, WebhookDns};

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Drctl-Signature";

/// The value of [`SIGNATURE_HEADER`] for `body` signed with `key`.
pub fn signature_header(key: &[u8], body: &[u8]) -> String {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), body);
    format!("sha256={}", hex::encode(tag.as_ref()))
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

#[tracing::instrument(skip_all, fields(url = %cfg.url))]
pub(super) async fn switch(
    cfg: &WebhookDns,
    platform: &Platform,
    target: IpAddr,
    secrets: &dyn SecretSource,
) -> Result<SwitchOutcome, DnsError> {
    let r = &cfg.hmac_secret_ref;
    let key = secrets.get(r, "hmacKey").await?;
    if key.expose().is_empty() {
        return Err(DnsError::bad_secret("webhook HMAC key", r, "empty"));
    }
    let body = body(platform, target);
    let signature = signature_header(key.expose(), &body);
    let url = cfg.url.clone();
    let http = |source: reqwest::Error| DnsError::Http { url: url.clone(), source: source.without_url() };
    let client = http_client().map_err(http)?;
    let resp = client
        .post(&cfg.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(http)?;
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
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let got = signature_header(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(got, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn body_names_domain_type_address_and_ttl() {
        let p = Platform { domain: "platform.example.com".into(), ttl: 30 };
        let b: serde_json::Value = serde_json::from_slice(&body(&p, "2001:db8::2".parse().expect("ip"))).expect("json");
        assert_eq!(b, json!({"domain": "platform.example.com", "recordType": "AAAA", "address": "2001:db8::2", "ttl": 30}));
    }
}
