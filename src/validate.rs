//! Client-side validation of DRTopology manifests: what `drctl validate` and the controller's
//! `Valid` condition report. It repeats every CEL rule of the CRD (so a pull request fails before
//! Argo CD ever applies it) and adds checks CEL cannot express. Every error names the field path
//! and says how to fix it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::decide::plan::FinalSyncBound;
use crate::exclusions::{default_namespaces, default_resources};
pub use crate::fields::{parse_duration, parse_go_duration, parse_resolver, DurationError, FieldError};
use crate::guards::Parsed;
use crate::keyspace::REGISTRY_PREFIX;
use crate::topology::{DRTopology, DRTopologySpec, ExcludeSpec, Hook, RestartScope, SyncDriver, DOMAIN_PATTERN, GROUP, KIND, VERSION};
use crate::validated::{self, ValidatedTopology};

/// Problems with `spec.sync.exclude` (also what `drctl mirror/check` refuse in their flags):
/// lists add to the defaults, so an entry that would exclude (nearly) the whole keyspace, or a
/// prefix outside what the mirror copies, is a mistake, never an intent.
pub fn exclude_errors(ex: &ExcludeSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, ns) in ex.namespaces.iter().enumerate() {
        if !is_dns_label(ns) {
            errs.push(FieldError::new(
                format!("spec.sync.exclude.namespaces[{i}]"),
                format!("{ns:?} is not a valid namespace name (RFC 1123 label, at most 63 characters)"),
            ));
        }
    }
    for (i, r) in ex.resources.iter().enumerate() {
        let path = format!("spec.sync.exclude.resources[{i}]");
        let ok = !r.is_empty() && r.split('/').count() <= 2 && r.split('/').all(|p| !p.is_empty() && !p.contains(char::is_whitespace));
        if r.contains('*') {
            errs.push(FieldError::new(path, format!("{r:?}: wildcards are not supported; list each resource (e.g. events, example.com/widgets)")));
        } else if r == "namespaces" || r == "v1/namespaces" {
            errs.push(FieldError::new(
                path,
                "excluding namespaces would leave every namespaced object without its Namespace on the standby; exclude the namespaces themselves in spec.sync.exclude.namespaces",
            ));
        } else if !ok {
            errs.push(FieldError::new(path, format!("{r:?} is not a resource; write `resource` (e.g. events) or `group/resource` (e.g. example.com/widgets)")));
        }
    }
    for (i, k) in ex.key_prefixes.iter().enumerate() {
        if !is_excludable_prefix(k) {
            errs.push(FieldError::new(
                format!("spec.sync.exclude.keyPrefixes[{i}]"),
                format!(
                    "{k:?} would exclude {}; a prefix is under /registry/ and names at least one whole segment, e.g. /registry/example.com/widgets/",
                    if REGISTRY_PREFIX.starts_with(k.as_str()) {
                        "the whole keyspace"
                    } else if k.starts_with(REGISTRY_PREFIX) {
                        "more than one resource"
                    } else {
                        "nothing (only /registry/ is replicated)"
                    }
                ),
            ));
        }
    }
    for (i, o) in ex.opt_out.iter().enumerate() {
        let path = format!("spec.sync.exclude.optOut[{i}]");
        match (o.namespace.as_deref(), o.resource.as_deref()) {
            (Some(n), None) if !default_namespaces().any(|d| d == n) => errs.push(FieldError::new(
                format!("{path}.namespace"),
                format!("{n:?} is not excluded by default; only these are: {}", default_namespaces().collect::<Vec<_>>().join(", ")),
            )),
            (None, Some(r)) if !default_resources().any(|d| d == r) => errs.push(FieldError::new(
                format!("{path}.resource"),
                format!("{r:?} is not excluded by default; only these are: {}", default_resources().collect::<Vec<_>>().join(", ")),
            )),
            (Some(n), None) if ex.namespaces.iter().any(|x| x == n) => {
                errs.push(FieldError::new(format!("{path}.namespace"), format!("{n:?} is also listed in spec.sync.exclude.namespaces; keep one of the two")))
            }
            (None, Some(r)) if ex.resources.iter().any(|x| x == r) => {
                errs.push(FieldError::new(format!("{path}.resource"), format!("{r:?} is also listed in spec.sync.exclude.resources; keep one of the two")))
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => errs.push(FieldError::new(path.clone(), "names exactly one of namespace or resource")),
        }
        if o.reason.trim().is_empty() {
            errs.push(FieldError::new(format!("{path}.reason"), "is required: say why this pair replicates a default exclusion"));
        }
    }
    errs
}

/// Under `/registry/` and naming a whole first segment (`KEY_PREFIX_PATTERN`).
fn is_excludable_prefix(k: &str) -> bool {
    k.strip_prefix(REGISTRY_PREFIX).and_then(|rest| rest.split_once('/')).is_some_and(|(seg, _)| !seg.is_empty())
}

/// A document that is not YAML at all.
#[derive(Debug, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One YAML document of a file, checked.
#[derive(Debug)]
pub struct DocumentReport {
    /// 1-based index of the document in its file.
    pub index: usize,
    pub name: Option<String>,
    pub errors: Vec<FieldError>,
    /// The parsed object when it deserialized (it may still have semantic errors).
    pub topology: Option<DRTopology>,
}

/// Splits a (multi-document) YAML text into JSON values, reporting syntax errors with their line.
/// `---` followed by nothing is an empty document, not an object to validate: it is dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, SyntaxError> {
    serde_saphyr::from_multiple_with_options(text, crate::kyaml::serde_options()).map_err(|e| syntax_error(text, &e))
}

/// A reader error told so a user can act on it: the event pass names syntax errors, tabs,
/// alias bombs and out-of-range integers at their real line; anything else keeps the reader's.
fn syntax_error(text: &str, e: &serde_saphyr::Error) -> SyntaxError {
    if let Err(u) = crate::kyaml::read(text) {
        return SyntaxError { line: u.line, column: u.column, message: u.message };
    }
    let at = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let (line, column) = e.location().map_or((1, 1), |l| (at(l.line()), at(l.column())));
    SyntaxError { line, column, message: e.to_string() }
}

/// Validates every document of a YAML text, read as Kubernetes reads it (`kyaml`).
pub fn validate_text(text: &str) -> Result<Vec<DocumentReport>, SyntaxError> {
    let lint = crate::kyaml::read(text).map_err(|u| SyntaxError { line: u.line, column: u.column, message: u.message })?;
    let docs = parse_documents(text)?;
    Ok(docs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut r = validate_value(i + 1, v);
            let found = lint.get(i).cloned().unwrap_or_default();
            r.errors = first_stage_wins(found, std::mem::take(&mut r.errors));
            r
        })
        .collect())
}

/// One problem per field, the earliest stage's: a YAML trap or duplicate key explains the type
/// error it causes, a schema limit explains a later "not a valid name".
fn first_stage_wins(earlier: Vec<FieldError>, later: Vec<FieldError>) -> Vec<FieldError> {
    let taken: BTreeSet<String> = earlier.iter().map(|e| e.path.clone()).collect();
    earlier.into_iter().chain(later.into_iter().filter(|e| !taken.contains(&e.path))).collect()
}

/// The apiserver's rule for `metadata.name` (a DNS subdomain), in its own words.
fn metadata_name_error(name: &str) -> Option<FieldError> {
    let subdomain = regex::Regex::new(crate::topology::SUBDOMAIN_PATTERN).is_ok_and(|re| re.is_match(name));
    let message = if name.len() > OBJECT_NAME_MAX {
        format!("is {} characters long: must be no more than {OBJECT_NAME_MAX} characters; shorten it", name.len())
    } else if !subdomain {
        format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com'); rename it, e.g. {:?}",
            suggest_name(name)
        )
    } else {
        return None;
    };
    Some(FieldError::new("metadata.name", message))
}

/// The most an object's name may hold (the apiserver's DNS subdomain limit).
pub const OBJECT_NAME_MAX: usize = 253;

fn suggest_name(name: &str) -> String {
    let s: String = name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    let s = s.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if s.is_empty() {
        "platform".into()
    } else {
        s
    }
}

/// Validates one document: shape against the CRD schema, types, then semantics.
pub fn validate_value(index: usize, value: &Value) -> DocumentReport {
    let raw_name = value.pointer("/metadata/name");
    let name = raw_name.and_then(Value::as_str).map(str::to_string);
    let mut errors = Vec::new();
    let want_api_version = format!("{GROUP}/{VERSION}");
    match value.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == want_api_version => {}
        other => errors.push(FieldError::new("apiVersion", format!("is {}; set it to {want_api_version}", describe(other)))),
    }
    match value.get("kind").and_then(Value::as_str) {
        Some(KIND) => {}
        other => errors.push(FieldError::new("kind", format!("is {}; set it to {KIND}", describe(other)))),
    }
    match (raw_name, &name) {
        (_, Some(n)) => errors.extend(metadata_name_error(n)),
        (None | Some(Value::Null), None) => errors.push(FieldError::new("metadata.name", "is missing; name the object, e.g. `platform`")),
        (Some(other), None) => errors.push(FieldError::new("metadata.name", format!("is {other}, not a string; quote it, e.g. \"{other}\""))),
    }
    if !errors.is_empty() {
        return DocumentReport { index, name, errors, topology: None };
    }

    crate::schema_check::check(value, &crd_schema(), "", &mut errors);
    // The typed reading is only tried on a document the schema admits, so serde's first error
    // never hides the schema's complete list.
    let topology = if errors.is_empty() {
        match serde_path_to_error::deserialize::<_, DRTopology>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(type_error(&e.path().to_string(), &e.inner().to_string()));
                None
            }
        }
    } else {
        None
    };
    if let Some(t) = &topology {
        errors.extend(validate_spec(&t.spec));
    }
    DocumentReport { index, name, errors, topology }
}

fn describe(v: Option<&str>) -> String {
    v.map(|s| format!("{s:?}")).unwrap_or_else(|| "missing".into())
}

/// serde's messages are accurate but terse; say what a user should write instead. A missing
/// field is reported at its own path (`spec.dns`), not its parent's.
fn type_error(path: &str, msg: &str) -> FieldError {
    if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        let full = if path == "." { field.to_string() } else { format!("{path}.{field}") };
        FieldError::new(full, "is missing; this field is required")
    } else if msg.starts_with("unknown variant") {
        FieldError::new(path, format!("{msg}; use one of the listed values"))
    } else {
        FieldError::new(path, format!("{msg}; fix the value's type"))
    }
}

fn crd_schema() -> Value {
    let crd = DRTopology::crd();
    let schema =
        crd.spec.versions.first().and_then(|v| v.schema.as_ref()).and_then(|s| s.open_api_v3_schema.as_ref()).and_then(|s| serde_json::to_value(s).ok());
    schema.unwrap_or(Value::Null)
}

impl TryFrom<&DRTopology> for ValidatedTopology {
    type Error = Vec<FieldError>;

    /// Every validation error of the spec ([`validate_spec`]), or the typed topology.
    fn try_from(topo: &DRTopology) -> Result<Self, Self::Error> {
        Ok(ValidatedTopology::new(topo.clone(), parse_spec(&topo.spec)?))
    }
}

/// Semantic checks on a typed spec: every CEL rule of the CRD, with richer messages, plus more.
pub fn validate_spec(spec: &DRTopologySpec) -> Vec<FieldError> {
    parse_spec(spec).err().unwrap_or_default()
}

/// [`validate_spec`]'s checks, giving the typed spec they prove when there are no errors: the
/// one place a VIP, duration, resolver, DNS provider or hook is parsed (`validated`).
fn parse_spec(spec: &DRTopologySpec) -> Result<validated::Spec, Vec<FieldError>> {
    let mut errs = Vec::new();
    let names: Vec<&str> = spec.clusters.iter().map(|c| c.name.as_str()).collect();

    let mut seen_names = BTreeSet::new();
    let mut seen_vips = BTreeSet::new();
    // What the guards read too, and the typed spec is made of.
    let mut parsed = Parsed::default();
    for (i, c) in spec.clusters.iter().enumerate() {
        let p = format!("spec.clusters[{i}]");
        if !is_dns_label(&c.name) {
            errs.push(FieldError::new(
                format!("{p}.name"),
                format!("{:?} is not an RFC 1123 label; use lower-case letters, digits and '-', at most 63 characters", c.name),
            ));
        }
        if !seen_names.insert(c.name.as_str()) {
            errs.push(FieldError::new(format!("{p}.name"), format!("{:?} is used by another cluster; give each cluster a unique name", c.name)));
        }
        parsed.vips.push(match c.vip.parse::<IpAddr>() {
            Ok(ip) => {
                if !seen_vips.insert(ip) {
                    errs.push(FieldError::new(format!("{p}.vip"), format!("{} is also another cluster's VIP; each global has its own VIP", c.vip)));
                }
                Some(ip)
            }
            Err(_) => {
                errs.push(FieldError::new(format!("{p}.vip"), format!("{:?} is not an IPv4 or IPv6 address; write e.g. 192.0.2.10 or 2001:db8::10", c.vip)));
                None
            }
        });
        check_url(&c.api_server, &format!("{p}.apiServer"), "https://api.global-a.example.com:6443", &mut errs);
        if c.etcd.endpoints.is_empty() {
            errs.push(FieldError::new(format!("{p}.etcd.endpoints"), "is empty; list this cluster's etcd client URLs, e.g. https://10.0.0.1:2379"));
        }
        for (j, e) in c.etcd.endpoints.iter().enumerate() {
            check_url(e, &format!("{p}.etcd.endpoints[{j}]"), "https://10.0.0.1:2379", &mut errs);
        }
    }
    if !names.contains(&spec.primary.as_str()) {
        errs.push(FieldError::new("spec.primary", format!("{:?} is not one of spec.clusters[].name ({})", spec.primary, names.join(", "))));
    }

    if !is_domain(&spec.platform.domain) {
        errs.push(FieldError::new(
            "spec.platform.domain",
            format!("{:?} is not a lower-case fully qualified domain name; write e.g. platform.example.com", spec.platform.domain),
        ));
    }

    errs.extend(exclude_errors(&spec.sync.exclude));
    parsed.check_interval = check_duration(&spec.sync.check_interval, "spec.sync.checkInterval", &mut errs);
    if spec.sync.check_read_rate > 0 && spec.sync.check_read_rate < crate::topology::CHECK_READ_RATE_MIN {
        errs.push(FieldError::new(
            "spec.sync.checkReadRate",
            format!(
                "{} keys/s is below the minimum of {}: a check of a million keys would take over a quarter of an hour; raise it, or 0 for unbounded",
                spec.sync.check_read_rate,
                crate::topology::CHECK_READ_RATE_MIN
            ),
        ));
    }
    let driver = match (spec.sync.driver, &spec.sync.manifest) {
        (SyncDriver::Builtin, _) => Some(validated::Driver::Builtin),
        (SyncDriver::Manifest, None) => {
            errs.push(FieldError::new("spec.sync.manifest", "is required when spec.sync.driver is manifest; put the platform's sync object here"));
            None
        }
        (SyncDriver::Manifest, Some(m)) => {
            for field in ["apiVersion", "kind"] {
                if m.get(field).and_then(Value::as_str).is_none() {
                    errs.push(FieldError::new(format!("spec.sync.manifest.{field}"), "is missing; the manifest must be a complete Kubernetes object"));
                }
            }
            if m.pointer("/metadata/name").and_then(Value::as_str).is_none() {
                errs.push(FieldError::new("spec.sync.manifest.metadata.name", "is missing; the manifest must be a complete Kubernetes object"));
            }
            Some(validated::Driver::Manifest(m.clone()))
        }
    };

    let mut restart_names = BTreeSet::new();
    for (i, r) in spec.restarts.iter().enumerate() {
        let p = format!("spec.restarts[{i}]");
        if !restart_names.insert(r.name.as_str()) {
            errs.push(FieldError::new(format!("{p}.name"), format!("{:?} is used by another restart; names must be unique", r.name)));
        }
        if r.label_selector.trim().is_empty() {
            errs.push(FieldError::new(
                format!("{p}.labelSelector"),
                "is empty; an empty selector would restart everything in the namespace. Write e.g. app=vmselect",
            ));
        }
        if r.when.is_empty() {
            errs.push(FieldError::new(format!("{p}.when"), "is empty; list at least one of syncEnabled, failover, demotion"));
        }
        if r.scope == RestartScope::WorkloadClusters && spec.workload_clusters.is_empty() {
            errs.push(FieldError::new(
                format!("{p}.scope"),
                "is workloadClusters but spec.workloadClusters is empty; list the workload clusters or use scope: self",
            ));
        }
    }

    let provider = check_dns(spec, &mut parsed, &mut errs);

    parsed.demotion_timeout = check_duration(&spec.failover.demotion_timeout, "spec.failover.demotionTimeout", &mut errs);
    parsed.final_sync_timeout = check_duration(&spec.failover.final_sync_timeout, "spec.failover.finalSyncTimeout", &mut errs);
    let pre_hooks = check_hooks(&spec.failover.pre_hooks, "spec.failover.preHooks", &mut errs);
    let post_hooks = check_hooks(&spec.failover.post_hooks, "spec.failover.postHooks", &mut errs);

    let mut wl_names = BTreeSet::new();
    for (i, w) in spec.workload_clusters.iter().enumerate() {
        if !wl_names.insert(w.name.as_str()) {
            errs.push(FieldError::new(format!("spec.workloadClusters[{i}].name"), format!("{:?} is listed twice; each workload cluster once", w.name)));
        }
    }
    errs.extend(crate::guards::check(spec, &parsed));
    // A value is None only where an error was pushed; the guards add the kubeconfig's.
    let clusters = spec.clusters.iter().zip(&parsed.vips).map(|(c, vip)| {
        Some(validated::Cluster {
            name: c.name.clone(),
            vip: (*vip)?,
            api_server: c.api_server.clone(),
            kubeconfig_secret_ref: c.kubeconfig_secret_ref.clone()?,
            etcd: c.etcd.clone(),
            encryption_config_path: c.encryption_config_path.clone().into(),
        })
    });
    let typed = (|| {
        let f = &spec.failover;
        Some(validated::Spec {
            primary: spec.primary.clone(),
            platform: spec.platform.clone(),
            clusters: clusters.collect::<Option<_>>()?,
            sync: validated::SyncConfig {
                exclude: spec.sync.exclude.clone(),
                check_interval: parsed.check_interval?,
                check_read_rate: Some(spec.sync.check_read_rate).filter(|r| *r > 0),
                driver: driver?,
                fence: spec.sync.fence.clone(),
                auto_repair: spec.sync.auto_repair,
                health: spec.sync.health.clone(),
            },
            restarts: spec.restarts.clone(),
            dns: validated::DnsConfig {
                provider: provider?,
                verify: validated::Verify {
                    resolvers: parsed.resolvers.iter().copied().collect::<Option<_>>()?,
                    restart_core_dns: spec.dns.verify.restart_core_dns,
                    timeout: if spec.dns.verify.timeout.is_some() { parsed.verify_timeout? } else { validated::DEFAULT_VERIFY_TIMEOUT },
                },
            },
            failover: validated::FailoverConfig {
                max_missed_keys: f.max_missed_keys,
                demotion_timeout: parsed.demotion_timeout?,
                final_sync: FinalSyncBound { timeout: parsed.final_sync_timeout?, policy: f.final_sync_policy },
                pre_hooks: pre_hooks?,
                post_hooks: post_hooks?,
                dry_run: f.dry_run,
                allow_encryption_config_mismatch: f.allow_encryption_config_mismatch,
            },
            workload_clusters: spec.workload_clusters.clone(),
            argocd_namespace: spec.argocd.namespace.clone(),
        })
    })();
    match typed {
        Some(t) if errs.is_empty() => Ok(t),
        _ => Err(errs),
    }
}

/// The provider `spec.dns` sets; its resolvers and timeout go to `parsed`.
fn check_dns(spec: &DRTopologySpec, parsed: &mut Parsed, errs: &mut Vec<FieldError>) -> Option<validated::DnsProvider> {
    let d = &spec.dns;
    let provider = validated::DnsProvider::of(d).map_err(|why| errs.push(FieldError::new("spec.dns", why))).ok();
    if let Some(r) = &d.rfc2136 {
        errs.extend(zone_error(&r.zone, &spec.platform.domain, "spec.dns.rfc2136.zone"));
        if r.server.trim().is_empty() {
            errs.push(FieldError::new("spec.dns.rfc2136.server", "is empty; give the primary name server as host or host:port"));
        }
    }
    if let Some(p) = &d.powerdns {
        check_url(&p.api_url, "spec.dns.powerdns.apiUrl", "http://pdns.example.com:8081", errs);
        errs.extend(zone_error(&p.zone, &spec.platform.domain, "spec.dns.powerdns.zone"));
    }
    if let Some(w) = &d.webhook {
        check_url(&w.url, "spec.dns.webhook.url", "https://dns-switch.example.com/hook", errs);
    }
    for (i, r) in d.verify.resolvers.iter().enumerate() {
        let a = parse_resolver(r);
        if a.is_none() {
            errs.push(FieldError::new(
                format!("spec.dns.verify.resolvers[{i}]"),
                format!("{r:?} is not a resolver address; write ip or ip:port, e.g. 10.96.0.10 or [2001:db8::53]:53"),
            ));
        }
        parsed.resolvers.push(a);
    }
    if let Some(t) = &d.verify.timeout {
        parsed.verify_timeout = check_duration(t, "spec.dns.verify.timeout", errs);
    }
    provider
}

/// A DNS provider's zone: a domain that holds the platform record (the root zone holds it
/// too, but no one delegates updates of `.` to a cluster).
fn zone_error(zone: &str, domain: &str, path: &str) -> Option<FieldError> {
    let message = if zone.trim_end_matches('.').is_empty() {
        format!("{zone:?} is the root zone; use the zone the record of {domain} lives in, e.g. {}", parent_zone(domain))
    } else if !is_domain(zone) {
        format!("{zone:?} is not a domain name; use the zone the record of {domain} lives in, e.g. {}", parent_zone(domain))
    } else if !in_zone(domain, zone) {
        format!("{zone:?} does not contain spec.platform.domain {domain:?}; use the zone the record lives in, e.g. {}", parent_zone(domain))
    } else {
        return None;
    };
    Some(FieldError::new(path, message))
}

fn parent_zone(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    match d.split_once('.') {
        Some((_, rest)) => format!("{rest}."),
        None => "example.com.".into(),
    }
}

fn check_hooks(hooks: &[Hook], path: &str, errs: &mut Vec<FieldError>) -> Option<Vec<validated::Hook>> {
    let mut names = BTreeSet::new();
    let mut typed = Vec::new();
    for (i, h) in hooks.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if !names.insert(h.name.as_str()) {
            errs.push(FieldError::new(format!("{p}.name"), format!("{:?} is used twice; hook names must be unique", h.name)));
        }
        let hook = validated::Hook::of(h);
        match &hook {
            Some(validated::Hook { kind: validated::HookKind::Webhook(w), .. }) => {
                check_url(&w.url, &format!("{p}.webhook.url"), "https://hooks.example.com/vip", errs)
            }
            Some(_) => {}
            None => errs.push(FieldError::new(p, "sets both or neither of job and webhook; set exactly one")),
        }
        typed.push(hook);
    }
    typed.into_iter().collect()
}

fn check_url(s: &str, path: &str, example: &str, errs: &mut Vec<FieldError>) {
    match reqwest::Url::parse(s) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {}
        _ => errs.push(FieldError::new(path, format!("{s:?} is not an http(s) URL; write e.g. {example}"))),
    }
}

fn check_duration(s: &str, path: &str, errs: &mut Vec<FieldError>) -> Option<Duration> {
    let message = match parse_go_duration(s) {
        Ok(d) => return Some(d),
        Err(DurationError::Malformed) => format!("{s:?} is not a duration; write e.g. 30s, 5m or 1h30m"),
        Err(DurationError::Overflow) => {
            format!("{s} is longer than the largest duration Kubernetes evaluates ({}h, about 292 years); use e.g. 5m", i64::MAX / 3_600_000_000_000)
        }
    };
    errs.push(FieldError::new(path, message));
    None
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 63 && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') && b[0] != b'-' && b[b.len() - 1] != b'-'
}

/// Same language as the CRD's `DOMAIN_PATTERN`.
fn is_domain(s: &str) -> bool {
    debug_assert!(DOMAIN_PATTERN.starts_with('^'));
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|l| is_dns_label(l)) && labels.last().is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_lowercase()))
}

fn in_zone(domain: &str, zone: &str) -> bool {
    let d = domain.trim_end_matches('.');
    let z = zone.trim_end_matches('.');
    d == z || d.ends_with(&format!(".{z}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn minimal() -> &'static str {
        include_str!("../examples/minimal.yaml")
    }

    fn errors_of(text: &str) -> Vec<String> {
        validate_text(text).expect("yaml").into_iter().flat_map(|r| r.errors).map(|e| e.to_string()).collect()
    }

    #[test]
    fn examples_are_valid() {
        assert_eq!(errors_of(minimal()), Vec::<String>::new());
        assert_eq!(errors_of(include_str!("../examples/acp-global.yaml")), Vec::<String>::new());
    }

    #[test]
    fn exclusions_that_remove_the_keyspace_or_name_no_default_are_refused() {
        let ex = |yaml: &str| errors_of(&format!("{}  sync:\n    exclude:\n{yaml}", minimal()));
        // (rule, spec.sync.exclude body, the error's start; None: accepted)
        let cases: [(&str, &str, Option<&str>); 14] = [
            ("additions are fine", "      namespaces: [team-scratch]\n", None),
            ("a wildcard resource", "      resources: [\"*\"]\n", Some("spec.sync.exclude.resources[0]: \"*\": wildcards are not supported")),
            ("a wildcard in a group", "      resources: [\"example.com/*\"]\n", Some("spec.sync.exclude.resources[0]: \"example.com/*\": wildcards")),
            ("namespaces as a resource", "      resources: [namespaces]\n", Some("spec.sync.exclude.resources[0]: excluding namespaces")),
            ("prefix /", "      keyPrefixes: [\"/\"]\n", Some("spec.sync.exclude.keyPrefixes[0]: \"/\" would exclude the whole keyspace")),
            (
                "prefix /registry/",
                "      keyPrefixes: [/registry/]\n",
                Some("spec.sync.exclude.keyPrefixes[0]: \"/registry/\" would exclude the whole keyspace"),
            ),
            (
                "prefix of a partial segment",
                "      keyPrefixes: [/registry/p]\n",
                Some("spec.sync.exclude.keyPrefixes[0]: \"/registry/p\" would exclude more than one resource"),
            ),
            ("prefix outside /registry/", "      keyPrefixes: [/other/x/]\n", Some("spec.sync.exclude.keyPrefixes[0]: \"/other/x/\" would exclude nothing")),
            ("a whole-segment prefix", "      keyPrefixes: [/registry/example.com/widgets/]\n", None),
            ("opt out of a default with a reason", "      optOut: [{namespace: cert-manager, reason: shared CA}]\n", None),
            ("opt out without a reason", "      optOut: [{resource: leases, reason: \" \"}]\n", Some("spec.sync.exclude.optOut[0].reason: is required")),
            (
                "opt out of no default",
                "      optOut: [{namespace: team-a, reason: x}]\n",
                Some("spec.sync.exclude.optOut[0].namespace: \"team-a\" is not excluded by default"),
            ),
            (
                "opt out of both kinds at once",
                "      optOut: [{namespace: kube-system, resource: leases, reason: x}]\n",
                Some("spec.sync.exclude.optOut[0]: names exactly one"),
            ),
            (
                "opt out and exclude the same",
                "      resources: [events]\n      optOut: [{resource: events, reason: x}]\n",
                Some("spec.sync.exclude.optOut[0].resource: \"events\" is also listed"),
            ),
        ];
        for (rule, yaml, want) in cases {
            let got = ex(yaml);
            match want {
                None => assert_eq!(got, Vec::<String>::new(), "{rule}"),
                Some(w) => assert!(got.len() == 1 && got[0].starts_with(w), "{rule}: {got:?}"),
            }
        }
    }

    #[test]
    fn check_read_rate_is_unbounded_or_at_least_the_minimum() {
        let rate = |r: &str| errors_of(&format!("{}  sync:\n    checkReadRate: {r}\n", minimal()));
        assert_eq!(rate("0"), Vec::<String>::new(), "0: unbounded");
        assert_eq!(rate("1000"), Vec::<String>::new(), "the minimum");
        let got = rate("999");
        assert!(got.len() == 1 && got[0].starts_with("spec.sync.checkReadRate: 999 keys/s is below the minimum of 1000"), "{got:?}");
    }

    #[test]
    fn unknown_primary_names_the_choices() {
        let t = minimal().replace("primary: global-a", "primary: global-c");
        assert_eq!(errors_of(&t), vec![r#"spec.primary: "global-c" is not one of spec.clusters[].name (global-a, global-b)"#]);
    }

    #[test]
    fn bad_vip_and_duplicate_vip() {
        let t = minimal().replace("vip: 192.0.2.20", "vip: 192.0.2.10");
        assert_eq!(errors_of(&t), vec!["spec.clusters[1].vip: 192.0.2.10 is also another cluster's VIP; each global has its own VIP"]);
        let t = minimal().replace("vip: 192.0.2.20", "vip: 192.0.2");
        let e = errors_of(&t);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("spec.clusters[1].vip: \"192.0.2\" is not an IPv4 or IPv6 address"), "{e:?}");
    }

    #[test]
    fn type_errors_carry_the_path() {
        let t = minimal().replace("ttl: 30", "ttl: soon");
        let e = errors_of(&t);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("spec.platform.ttl: is a string (\"soon\")"), "{e:?}");
    }

    #[test]
    fn every_type_error_is_reported_not_just_the_first() {
        let t = minimal().replace("ttl: 30", "ttl: soon").replace("primary: global-a", "primary: [global-a]");
        let e = errors_of(&t);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("spec.platform.ttl: is a string"), "{e:?}");
        assert!(e[1].starts_with("spec.primary: is a list"), "{e:?}");
    }

    #[test]
    fn yaml_is_read_as_kubectl_reads_it() {
        let dup = minimal().replace("primary: global-a\n", "primary: global-a\n  primary: global-b\n");
        let e = errors_of(&dup);
        assert!(e.len() == 1 && e[0].starts_with("spec.primary: line ") && e[0].contains("is also set on line"), "{e:?}");
        let trap = minimal().replace("name: global-b", "name: off");
        let e = errors_of(&trap);
        assert!(e.len() == 1 && e[0].starts_with("spec.clusters[1].name: line ") && e[0].contains("unquoted off is the boolean false"), "{e:?}");
    }

    #[test]
    fn metadata_name_is_a_dns_subdomain() {
        let cases = [("platform", true), ("dr.platform-1", true), ("Bad_Name", false), ("-x", false), (&*"a".repeat(254), false), (&*"a".repeat(253), true)];
        for (name, ok) in cases {
            assert_eq!(metadata_name_error(name).is_none(), ok, "{name}");
        }
        assert!(metadata_name_error("Bad_Name").expect("bad").message.ends_with("rename it, e.g. \"bad-name\""));
    }

    #[test]
    fn zone_problems_say_which() {
        let z = |zone: &str| zone_error(zone, "platform.example.com", "z").map(|e| e.message);
        assert_eq!(z("example.com."), None);
        assert_eq!(z("platform.example.com"), None);
        assert!(z(".").expect("root").starts_with("\".\" is the root zone"));
        assert!(z("example.org.").expect("other").contains("does not contain"));
        assert!(z("-bad-").expect("bad").contains("is not a domain name"));
    }

    #[test]
    fn unknown_fields_are_reported_not_dropped() {
        let t = minimal().replace("  dns:\n", "  dns:\n    powerDns: {}\n");
        let e = errors_of(&t);
        assert!(e.iter().any(|m| m.starts_with("spec.dns.powerDns: unknown field (the apiserver would drop it without a word); known fields here:")), "{e:?}");
    }

    #[test]
    fn secret_references_that_cannot_resolve_are_errors() {
        let t = minimal().replace("{name: pdns-api, namespace: drctl-system}", "{name: Pdns_Api, namespace: drctl system}");
        assert_eq!(
            errors_of(&t),
            vec![
                r#"spec.dns.powerdns.apiKeySecretRef.name: "Pdns_Api" is not an RFC 1123 subdomain: lower-case labels of letters, digits and '-', joined by '.'"#,
                r#"spec.dns.powerdns.apiKeySecretRef.namespace: "drctl system" is not an RFC 1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"#,
            ]
        );
    }

    #[test]
    fn a_missing_field_is_reported_at_its_own_path() {
        let t = minimal().replace("  platform:\n    domain: platform.example.com\n    ttl: 30\n", "");
        assert_eq!(errors_of(&t), vec!["spec.platform: is missing; this field is required"]);
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let err = validate_text("apiVersion: drctl.io/v1alpha1\nkind: [\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("m5"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5000000000s"), Some(Duration::from_secs(5_000_000_000)), "Go takes it: 158 years");
        assert_eq!(parse_go_duration("2562047h"), Ok(Duration::from_secs(2_562_047 * 3600)));
        assert_eq!(parse_go_duration("2562048h"), Err(DurationError::Overflow), "past int64 nanoseconds");
        assert_eq!(parse_go_duration("99999999999999999999s"), Err(DurationError::Overflow));
        assert_eq!(parse_go_duration("5x"), Err(DurationError::Malformed));
    }

    #[test]
    fn domains() {
        assert!(is_domain("platform.example.com"));
        assert!(is_domain("platform.example.com."));
        assert!(!is_domain("localhost"));
        assert!(!is_domain("Platform.Example.com"));
        assert!(!is_domain("a..b"));
        assert!(!is_domain("x.123"));
    }
}
