//! Property tests: the keyspace parser and filter, topology validation and duration parsing on
//! arbitrary input never panic, and keep their invariants.

use std::time::Duration;

use drctl::keyspace::{self, Filter};
use drctl::topology::ExcludeSpec;
use drctl::validate::{parse_duration, validate_text};
use proptest::prelude::*;

const MINIMAL: &str = include_str!("../examples/minimal.yaml");

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?"
}

/// Built-in resource names whose keys are not special-cased by the parser.
fn plain_resource() -> impl Strategy<Value = String> {
    label().prop_filter("special prefixes and namespaces", |r| !matches!(r.as_str(), "services" | "minions" | "controllers" | "ingress" | "namespaces"))
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_and_names_the_key(key in proptest::collection::vec(any::<u8>(), 0..120)) {
        if let Some(obj) = keyspace::parse(&key) {
            let text = std::str::from_utf8(&key).expect("parse accepted non-UTF-8");
            prop_assert!(text.starts_with(keyspace::REGISTRY_PREFIX));
            prop_assert!(!obj.name.is_empty() && !obj.resource.is_empty());
            prop_assert!(text.ends_with(&format!("/{}", obj.name)), "{text} does not end with its name {}", obj.name);
        }
    }

    #[test]
    fn parse_never_panics_on_registry_like_keys(rest in "[a-z./-]{0,60}") {
        let key = format!("/registry/{rest}");
        let _ = keyspace::parse(key.as_bytes());
    }

    #[test]
    fn parse_recovers_namespaced_builtin_keys(r in plain_resource(), ns in label(), name in label()) {
        let key = format!("/registry/{r}/{ns}/{name}");
        let obj = keyspace::parse(key.as_bytes()).expect("a namespaced key parses");
        prop_assert_eq!((obj.group, obj.resource, obj.namespace, obj.name), (None, r.as_str(), Some(ns.as_str()), name.as_str()));
    }

    #[test]
    fn parse_recovers_group_keys(group in "[a-z]{1,10}\\.[a-z]{2,6}", r in label(), ns in label(), name in label()) {
        let key = format!("/registry/{group}/{r}/{ns}/{name}");
        let obj = keyspace::parse(key.as_bytes()).expect("a group key parses");
        prop_assert_eq!((obj.group, obj.resource, obj.namespace, obj.name), (Some(group.as_str()), r.as_str(), Some(ns.as_str()), name.as_str()));
    }

    #[test]
    fn filter_never_copies_outside_registry_or_excluded_namespaces(
        key in proptest::collection::vec(any::<u8>(), 0..120),
        r in plain_resource(),
        name in label(),
        excluded in proptest::sample::select(keyspace::default_namespaces().collect::<Vec<_>>()),
    ) {
        let f = Filter::with_default_namespaces(&ExcludeSpec::default());
        if !key.starts_with(b"/registry/") {
            prop_assert!(!f.copies(&key));
        }
        let in_excluded = format!("/registry/{r}/{excluded}/{name}");
        prop_assert!(!f.copies(in_excluded.as_bytes()), "{in_excluded} copied");
        let never = format!("/registry/compact_rev_key{name}");
        prop_assert!(!f.copies(never.as_bytes()));
    }

    #[test]
    fn filter_from_arbitrary_exclusions_never_panics(
        namespaces in proptest::collection::vec(".{0,12}", 0..4),
        resources in proptest::collection::vec("[a-z./]{0,16}", 0..4),
        prefixes in proptest::collection::vec(".{0,16}", 0..4),
        key in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let spec = ExcludeSpec { namespaces, resources, key_prefixes: prefixes.clone(), ..Default::default() };
        let f = Filter::with_default_namespaces(&spec);
        let copied = f.copies(&key);
        // An excluded prefix always wins.
        if prefixes.iter().any(|p| key.starts_with(p.as_bytes())) {
            prop_assert!(!copied);
        }
        // User lists add to the defaults: no list un-excludes them.
        prop_assert!(!f.copies(b"/registry/secrets/kube-system/token"));
        prop_assert!(!f.copies(b"/registry/events/team-a/e"));
    }

    #[test]
    fn parse_duration_never_panics(s in ".{0,24}") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn parse_duration_sums_its_parts(parts in proptest::collection::vec((0u64..100_000, 0usize..4), 1..5)) {
        let units = [("ms", Duration::from_millis(1)), ("s", Duration::from_secs(1)), ("m", Duration::from_secs(60)), ("h", Duration::from_secs(3600))];
        let text: String = parts.iter().map(|(n, u)| format!("{n}{}", units[*u].0)).collect();
        let want: Duration = parts.iter().map(|(n, u)| units[*u].1 * u32::try_from(*n).expect("small")).sum();
        prop_assert_eq!(parse_duration(&text), Some(want), "{}", text);
    }

    #[test]
    fn parse_duration_rejects_what_the_crd_pattern_rejects(s in "[0-9a-z ]{0,10}") {
        // The CRD's DURATION_PATTERN, spelled out: one or more <digits><unit>.
        let re_ok = {
            let mut rest = s.as_str();
            let mut ok = !rest.is_empty();
            while ok && !rest.is_empty() {
                let d = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                let after = &rest[d..];
                let unit = ["ms", "s", "m", "h"].into_iter().find(|u| after.starts_with(u));
                match (d, unit) {
                    (1.., Some(u)) => rest = &after[u.len()..],
                    _ => ok = false,
                }
            }
            ok
        };
        if !re_ok {
            prop_assert_eq!(parse_duration(&s), None, "{}", s);
        }
    }

    #[test]
    fn validate_text_never_panics(text in ".{0,400}") {
        let _ = validate_text(&text);
    }

    /// Mutations of a valid topology: replace one scalar with an arbitrary one. Validation must
    /// not panic, and whatever it accepts must survive a round trip through the typed object.
    #[test]
    fn validate_mutated_topology(line in 0usize..40, value in prop_oneof![
        ".{0,30}".boxed(),
        "[0-9]{1,25}".boxed(),
        Just("[]".to_string()).boxed(),
        Just("{}".to_string()).boxed(),
        Just("~".to_string()).boxed(),
        Just("-1".to_string()).boxed(),
        Just("\"\"".to_string()).boxed(),
    ]) {
        let lines: Vec<&str> = MINIMAL.lines().collect();
        let i = line % lines.len();
        let mutated: String = lines.iter().enumerate().map(|(j, l)| {
            if j == i {
                match l.split_once(": ") {
                    Some((k, _)) => format!("{k}: {value}\n"),
                    None => format!("{l}\n"),
                }
            } else {
                format!("{l}\n")
            }
        }).collect();
        if let Ok(reports) = validate_text(&mutated) {
            for r in reports {
                if let (true, Some(t)) = (r.errors.is_empty(), r.topology) {
                    let again = drctl::kyaml::to_string(&t).expect("serialize");
                    let back = validate_text(&again).expect("re-parse");
                    prop_assert!(back.iter().all(|r| r.errors.is_empty()), "accepted {mutated} but not its round trip: {again}");
                }
            }
        }
    }
}

/// Arbitrary JSON trees in the shape of a document: validation walks them without panicking.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "primary",
                    "clusters",
                    "dns",
                    "name",
                    "vip",
                    "etcd",
                    "endpoints",
                    "platform",
                    "domain",
                    "ttl",
                    "sync",
                    "restarts",
                    "failover",
                    "x"
                ])
                .prop_map(String::from),
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn validate_value_never_panics_on_arbitrary_specs(spec in json_value()) {
        let doc = serde_json::json!({"apiVersion": "drctl.io/v1alpha1", "kind": "DRTopology", "metadata": {"name": "p"}, "spec": spec});
        let report = drctl::validate::validate_value(1, &doc);
        // Nothing arbitrary is a valid topology without naming two clusters and a provider.
        prop_assert!(!report.errors.is_empty());
    }
}
