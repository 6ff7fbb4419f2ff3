//! RFC 2136 dynamic update signed with TSIG (RFC 8945), sent over TCP to the zone's primary.
//! One update message deletes both address rrsets of the name and adds the target, so the server
//! applies the switch atomically.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hickory_proto::op::{Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HickoryAlg, TsigError};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};

use super::wire::{self, RrAnswer};
use super::{Current, DnsError, RecordKind, SwitchAction, SwitchOutcome};
use crate::secret::SecretSource;
use crate::topology::{Platform, Rfc2136Dns, TsigAlgorithm};
use crate::validate::parse_resolver;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed clock difference with the server (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

fn rtype(k: RecordKind) -> RecordType {
    match k {
        RecordKind::A => RecordType::A,
        RecordKind::Aaaa => RecordType::AAAA,
    }
}

fn algorithm(a: TsigAlgorithm) -> HickoryAlg {
    match a {
        TsigAlgorithm::HmacSha256 => HickoryAlg::HmacSha256,
        TsigAlgorithm::HmacSha384 => HickoryAlg::HmacSha384,
        TsigAlgorithm::HmacSha512 => HickoryAlg::HmacSha512,
    }
}

/// `host:port`, `ip`, `[v6]:port` or `host`; port 53 when omitted.
async fn server_addr(s: &str) -> Result<SocketAddr, DnsError> {
    if let Some(sa) = parse_resolver(s) {
        return Ok(sa);
    }
    let with_port = if s.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) { s.to_string() } else { format!("{s}:53") };
    let mut addrs = tokio::net::lookup_host(&with_port).await.map_err(|source| DnsError::Io { server: s.to_string(), source })?;
    addrs.next().ok_or_else(|| DnsError::Config(format!("rfc2136.server {s:?} resolves to no address")))
}

#[tracing::instrument(skip_all, fields(server = %cfg.server, zone = %cfg.zone, key = %cfg.tsig_key_name))]
pub(super) async fn switch(cfg: &Rfc2136Dns, platform: &Platform, target: IpAddr, secrets: &dyn SecretSource) -> Result<SwitchOutcome, DnsError> {
    let server = server_addr(&cfg.server).await?;
    let zone = wire::name(&cfg.zone)?;
    let domain = wire::name(&platform.domain)?;
    if !zone.zone_of(&domain) {
        return Err(DnsError::Config(format!("rfc2136: {} is not inside zone {}", platform.domain, cfg.zone)));
    }
    let kind = RecordKind::for_ip(target);
    let signer = signer(cfg, secrets).await?;

    // Ask the primary itself, without recursion, so the decision rests on the zone's data.
    let (want, other) =
        futures::future::join(wire::query(server, &domain, rtype(kind), false, TIMEOUT), wire::query(server, &domain, rtype(kind.other()), false, TIMEOUT))
            .await;
    let (want, other): (RrAnswer, RrAnswer) = (want?, other?);
    let mut previous = want.addresses.clone();
    previous.extend(&other.addresses);
    let current = Current { addresses: previous.clone(), ttl: want.ttl };
    let action = if current.is_set_to(target, platform.ttl) {
        SwitchAction::Unchanged
    } else {
        let msg = update_message(&zone, &domain, target, platform.ttl);
        send_update(server, &cfg.zone, msg, &signer).await?;
        SwitchAction::Updated
    };
    Ok(SwitchOutcome { provider: "rfc2136", domain: platform.domain.clone(), record: kind, target, previous: Some(previous), action })
}

/// Preflight: the TSIG key parses and the zone's primary answers a non-recursive query for the
/// zone's SOA. The key itself is proven only by an update, which preflight never sends.
pub(super) async fn probe(cfg: &Rfc2136Dns, platform: &Platform, secrets: &dyn SecretSource) -> Result<String, DnsError> {
    let server = server_addr(&cfg.server).await?;
    let zone = wire::name(&cfg.zone)?;
    if !zone.zone_of(&wire::name(&platform.domain)?) {
        return Err(DnsError::Config(format!("rfc2136: {} is not inside zone {}", platform.domain, cfg.zone)));
    }
    signer(cfg, secrets).await?;
    wire::query(server, &zone, RecordType::SOA, false, TIMEOUT).await?;
    Ok(format!(
        "{server} answered the SOA of {}; TSIG key {} parses (it is proven only by an update, which preflight does not send)",
        cfg.zone, cfg.tsig_key_name
    ))
}

async fn signer(cfg: &Rfc2136Dns, secrets: &dyn SecretSource) -> Result<TSigner, DnsError> {
    let r = &cfg.tsig_secret_ref;
    let bad = |reason: &str| DnsError::bad_secret("TSIG secret", r, reason);
    let secret = secrets.get(r, "secret").await?;
    let text = secret.expose_trimmed_str().ok_or_else(|| bad("not text; expected base64"))?;
    let key = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| bad("not valid base64 (as in BIND's `secret \"...\"`)"))?;
    if key.is_empty() {
        return Err(bad("empty"));
    }
    let key_name = wire::name(&cfg.tsig_key_name)?;
    TSigner::new(key, algorithm(cfg.tsig_algorithm), key_name, FUDGE).map_err(|e| DnsError::Config(format!("rfc2136.tsigAlgorithm: {e}")))
}

/// Zone section = the zone's SOA; update section = delete both address rrsets, add the target.
fn update_message(zone: &Name, domain: &Name, target: IpAddr, ttl: u32) -> Message {
    let mut msg = Message::query();
    msg.metadata.op_code = OpCode::Update;
    msg.metadata.recursion_desired = false;
    msg.add_zone(Query::query(zone.clone(), RecordType::SOA));
    for t in [RecordType::A, RecordType::AAAA] {
        let mut del = Record::update0(domain.clone(), 0, t);
        del.dns_class = DNSClass::ANY;
        msg.add_update(del);
    }
    let data = match target {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    msg.add_update(Record::from_rdata(domain.clone(), ttl, data));
    msg
}

async fn send_update(server: SocketAddr, zone: &str, mut msg: Message, signer: &TSigner) -> Result<(), DnsError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let protocol = |message: String| DnsError::Protocol { server: server.to_string(), message };
    let mut verifier = msg
        .finalize(signer, now)
        .map_err(|e| protocol(format!("signing the update: {e}")))?
        .ok_or_else(|| protocol("signing the update produced no verifier".into()))?;
    let bytes = wire::encode(&msg, server)?;
    let raw = wire::tcp_exchange(server, &bytes, TIMEOUT).await?;
    let resp = wire::decode(&raw, server)?;
    if resp.metadata.id != msg.metadata.id {
        return Err(protocol(format!("answered id {} to update id {}", resp.metadata.id, msg.metadata.id)));
    }
    let code = resp.metadata.response_code;
    if code != ResponseCode::NoError {
        let tsig_error = resp.signature.as_ref().and_then(|s| s.data.error);
        return Err(DnsError::Refused { server: server.to_string(), zone: zone.to_string(), message: refusal(code, tsig_error, signer) });
    }
    // A success that is not signed by the same key could be forged; do not trust it.
    verifier.verify(&raw).map_err(|e| protocol(format!("the success response failed TSIG verification: {e}")))?;
    Ok(())
}

/// Says what a refusal means for the operator.
fn refusal(code: ResponseCode, tsig: Option<TsigError>, signer: &TSigner) -> String {
    let key = signer.signer_name();
    let alg = signer.algorithm();
    match (code, tsig) {
        (_, Some(TsigError::BadSig)) => {
            format!("BADSIG: the server knows TSIG key {key} but the signature does not match; the secret (or algorithm {alg}) differs from the server's")
        }
        (_, Some(TsigError::BadKey)) => {
            format!("BADKEY: the server does not know TSIG key {key} with algorithm {alg}")
        }
        (_, Some(TsigError::BadTime)) => {
            format!("BADTIME: this machine's clock and the server's differ by more than {FUDGE}s")
        }
        (ResponseCode::Refused, _) => format!("REFUSED: TSIG key {key} may not update this zone (check allow-update / update-policy)"),
        (ResponseCode::NotAuth, _) => format!("NOTAUTH: the server is not authoritative for this zone or rejected key {key}"),
        (ResponseCode::NotZone, _) => "NOTZONE: the name is not inside the zone".to_string(),
        (code, _) => format!("{code}"),
    }
}
