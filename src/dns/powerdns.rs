//! The PowerDNS authoritative HTTP API: read the zone's rrsets, then PATCH with REPLACE for the
//! target's type and DELETE for the other family, in one request (PowerDNS applies it atomically).

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::json;

use super::{fqdn, http_client, list, Current, DnsError, RecordKind, SwitchAction, SwitchOutcome};
use crate::secret::SecretSource;
use crate::topology::{Platform, PowerDns};

#[derive(Deserialize)]
struct Zone {
    #[serde(default)]
    rrsets: Vec<RrSet>,
}

#[derive(Deserialize)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    #[serde(default)]
    ttl: Option<u32>,
    #[serde(default)]
    records: Vec<RecordEntry>,
}

#[derive(Deserialize)]
struct RecordEntry {
    content: String,
    #[serde(default)]
    disabled: bool,
}

/// What the zone holds for `name`: enabled A/AAAA addresses and the TTL of the `kind` rrset.
fn current(zone: &Zone, name: &str, kind: RecordKind) -> Current {
    let mut c = Current::default();
    for set in zone.rrsets.iter().filter(|s| fqdn(&s.name) == name) {
        if set.rtype != "A" && set.rtype != "AAAA" {
            continue;
        }
        let enabled: Vec<IpAddr> = set.records.iter().filter(|r| !r.disabled).filter_map(|r| r.content.parse().ok()).collect();
        if set.rtype == kind.as_str() && !enabled.is_empty() {
            c.ttl = set.ttl;
        }
        c.addresses.extend(enabled);
    }
    c.addresses.sort();
    c
}

fn patch_body(name: &str, target: IpAddr, ttl: u32) -> serde_json::Value {
    let kind = RecordKind::for_ip(target);
    json!({
        "rrsets": [
            {
                "name": name,
                "type": kind.as_str(),
                "ttl": ttl,
                "changetype": "REPLACE",
                "records": [{ "content": target.to_string(), "disabled": false }],
            },
            { "name": name, "type": kind.other().as_str(), "changetype": "DELETE" },
        ]
    })
}

/// A session with the zone's API: the client, the zone URL (and its redacted form) and the key.
struct ZoneApi {
    client: reqwest::Client,
    url: String,
    shown: String,
    key: reqwest::header::HeaderValue,
}

impl ZoneApi {
    async fn open(cfg: &PowerDns, platform: &Platform, secrets: &dyn SecretSource) -> Result<ZoneApi, DnsError> {
        let r = &cfg.api_key_secret_ref;
        let secret = secrets.get(r, "apiKey").await?;
        let bad = |reason: &str| DnsError::bad_secret("PowerDNS API key", r, reason);
        let text = secret.expose_trimmed_str().filter(|k| !k.is_empty()).ok_or_else(|| bad("empty or not text"))?;
        let mut key = reqwest::header::HeaderValue::from_str(text).map_err(|_| bad("not a valid HTTP header value"))?;
        // Sensitive header values print as `Sensitive` in any Debug output of the request.
        key.set_sensitive(true);
        let zone = fqdn(&cfg.zone);
        let name = fqdn(&platform.domain);
        if !name.ends_with(&format!(".{zone}")) && name != zone {
            return Err(DnsError::Config(format!("powerdns: {} is not inside zone {}", platform.domain, cfg.zone)));
        }
        let url = format!("{}/api/v1/servers/{}/zones/{}", cfg.api_url.trim_end_matches('/'), cfg.server_id, zone);
        let shown = crate::urls::redact(&url);
        let client = http_client().map_err(|source| DnsError::Http { url: shown.clone(), source })?;
        Ok(ZoneApi { client, url, shown, key })
    }

    fn http(&self) -> impl Fn(reqwest::Error) -> DnsError + '_ {
        |source: reqwest::Error| DnsError::Http { url: self.shown.clone(), source: source.without_url() }
    }

    /// GET of the zone: what the switch reads first, and all `probe` does.
    async fn read(&self) -> Result<Zone, DnsError> {
        let resp = self.client.get(&self.url).header("X-API-Key", self.key.clone()).send().await.map_err(self.http())?;
        let resp = check(resp, &self.shown).await?;
        resp.json().await.map_err(self.http())
    }
}

#[tracing::instrument(skip_all, fields(api = %crate::urls::redact(&cfg.api_url), zone = %cfg.zone))]
pub(super) async fn switch(cfg: &PowerDns, platform: &Platform, target: IpAddr, secrets: &dyn SecretSource) -> Result<SwitchOutcome, DnsError> {
    let api = ZoneApi::open(cfg, platform, secrets).await?;
    let zone_data = api.read().await?;
    let name = fqdn(&platform.domain);
    let kind = RecordKind::for_ip(target);
    let current = current(&zone_data, &name, kind);
    let previous = Some(current.addresses.clone());
    let action = if current.is_set_to(target, platform.ttl) {
        SwitchAction::Unchanged
    } else {
        let resp =
            api.client.patch(&api.url).header("X-API-Key", api.key.clone()).json(&patch_body(&name, target, platform.ttl)).send().await.map_err(api.http())?;
        check(resp, &api.shown).await?;
        SwitchAction::Updated
    };
    Ok(SwitchOutcome { provider: "powerdns", domain: platform.domain.clone(), record: kind, target, previous, action })
}

/// Preflight: reads the zone with the API key (what a switch does first), changes nothing.
pub(super) async fn probe(cfg: &PowerDns, platform: &Platform, secrets: &dyn SecretSource) -> Result<String, DnsError> {
    let api = ZoneApi::open(cfg, platform, secrets).await?;
    let zone_data = api.read().await?;
    let name = fqdn(&platform.domain);
    let now = current(&zone_data, &name, RecordKind::A);
    Ok(format!("GET {} with the API key: zone read, {} holds {}", api.shown, platform.domain, list(&now.addresses)))
}

/// Turns a non-2xx answer into an error carrying PowerDNS's own message.
async fn check(resp: reqwest::Response, url: &str) -> Result<reqwest::Response, DnsError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.chars().take(300).collect());
    let body = match status.as_u16() {
        401 | 403 => format!("the API key was rejected ({detail})"),
        404 | 422 if detail.contains("not found") || detail.contains("Could not find") => {
            format!("zone or server not found ({detail})")
        }
        _ => detail,
    };
    Err(DnsError::HttpStatus { url: url.to_string(), status: status.as_u16(), body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(json: serde_json::Value) -> Zone {
        serde_json::from_value(json).expect("zone json")
    }

    #[test]
    fn current_reads_enabled_addresses_of_both_families() {
        let z = zone(json!({"rrsets": [
            {"name": "platform.example.com.", "type": "A", "ttl": 30, "records": [{"content": "192.0.2.1", "disabled": false}]},
            {"name": "platform.example.com.", "type": "AAAA", "ttl": 60, "records": [{"content": "2001:db8::1", "disabled": false}, {"content": "2001:db8::9", "disabled": true}]},
            {"name": "other.example.com.", "type": "A", "ttl": 30, "records": [{"content": "192.0.2.7", "disabled": false}]},
            {"name": "platform.example.com.", "type": "TXT", "ttl": 30, "records": [{"content": "\"x\"", "disabled": false}]},
        ]}));
        let c = current(&z, "platform.example.com.", RecordKind::A);
        let want: Vec<IpAddr> = vec!["192.0.2.1".parse().expect("ip"), "2001:db8::1".parse().expect("ip")];
        assert_eq!(c, Current { addresses: want, ttl: Some(30) });
        assert_eq!(current(&z, "platform.example.com.", RecordKind::Aaaa).ttl, Some(60));
        assert_eq!(current(&z, "missing.example.com.", RecordKind::A), Current::default());
    }

    #[test]
    fn patch_replaces_the_target_type_and_deletes_the_other() {
        let b = patch_body("platform.example.com.", "2001:db8::2".parse().expect("ip"), 30);
        assert_eq!(b["rrsets"][0]["type"], "AAAA");
        assert_eq!(b["rrsets"][0]["changetype"], "REPLACE");
        assert_eq!(b["rrsets"][0]["records"][0]["content"], "2001:db8::2");
        assert_eq!(b["rrsets"][1]["type"], "A");
        assert_eq!(b["rrsets"][1]["changetype"], "DELETE");
    }
}
