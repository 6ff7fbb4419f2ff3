//! `manual`: an operator switches DNS by hand and confirms by annotating the DRTopology with the
//! address now served. A pure check on the annotations; the controller supplies them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{RecordKind, SwitchAction, SwitchOutcome};
use crate::topology::{ManualDns, Platform};

/// The annotation an operator sets to the new VIP once the record points at it.
pub const CONFIRM_ANNOTATION: &str = "drctl.io/dns-confirmed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualStatus {
    Confirmed,
    /// Not (yet) confirmed for this target; the message tells the operator what to do.
    Waiting(String),
}

pub fn manual_status(cfg: &ManualDns, platform: &Platform, target: IpAddr, annotations: &BTreeMap<String, String>) -> ManualStatus {
    let kind = RecordKind::for_ip(target);
    let ask = format!(
        "point {} {kind} at {target} (TTL {}), remove its {} record, then annotate the DRTopology with {CONFIRM_ANNOTATION}={target}",
        platform.domain,
        platform.ttl,
        kind.other()
    );
    let hint = cfg.instructions.as_deref().map(|i| format!(" ({i})")).unwrap_or_default();
    match annotations.get(CONFIRM_ANNOTATION).map(|v| v.trim()) {
        Some(v) if v.parse::<IpAddr>().ok() == Some(target) => ManualStatus::Confirmed,
        Some(v) => ManualStatus::Waiting(format!("{CONFIRM_ANNOTATION} is {v:?}, not {target}; {ask}{hint}")),
        None => ManualStatus::Waiting(format!("{ask}{hint}")),
    }
}

pub(super) fn switch(cfg: &ManualDns, platform: &Platform, target: IpAddr, annotations: &BTreeMap<String, String>) -> SwitchOutcome {
    let action = match manual_status(cfg, platform, target, annotations) {
        ManualStatus::Confirmed => SwitchAction::Updated,
        ManualStatus::Waiting(m) => SwitchAction::WaitingForOperator(m),
    };
    SwitchOutcome { provider: "manual", domain: platform.domain.clone(), record: RecordKind::for_ip(target), target, previous: None, action }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Platform {
        Platform { domain: "platform.example.com".into(), ttl: 30 }
    }

    #[test]
    fn waits_until_the_annotation_names_the_target() {
        let target: IpAddr = "192.0.2.2".parse().expect("ip");
        let cfg = ManualDns { instructions: Some("ask the network team".into()) };
        let mut ann = BTreeMap::new();
        let ManualStatus::Waiting(m) = manual_status(&cfg, &platform(), target, &ann) else { panic!("confirmed without annotation") };
        assert_eq!(
            m,
            "point platform.example.com A at 192.0.2.2 (TTL 30), remove its AAAA record, then annotate the DRTopology with drctl.io/dns-confirmed=192.0.2.2 (ask the network team)"
        );
        ann.insert(CONFIRM_ANNOTATION.to_string(), "192.0.2.1".to_string());
        let ManualStatus::Waiting(m) = manual_status(&cfg, &platform(), target, &ann) else { panic!("confirmed with the old address") };
        assert!(m.starts_with("drctl.io/dns-confirmed is \"192.0.2.1\", not 192.0.2.2;"), "{m}");
        ann.insert(CONFIRM_ANNOTATION.to_string(), " 192.0.2.2".to_string());
        assert_eq!(manual_status(&cfg, &platform(), target, &ann), ManualStatus::Confirmed);
    }

    #[test]
    fn ipv6_confirmation_compares_addresses_not_text() {
        let target: IpAddr = "2001:db8::2".parse().expect("ip");
        let ann = BTreeMap::from([(CONFIRM_ANNOTATION.to_string(), "2001:0db8:0:0::2".to_string())]);
        let o = switch(&ManualDns::default(), &platform(), target, &ann);
        assert_eq!(o.action, SwitchAction::Updated);
        assert_eq!(o.record, RecordKind::Aaaa);
    }
}
