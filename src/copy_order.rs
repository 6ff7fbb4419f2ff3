//! The order of the initial copy: owners before dependents, so a standby whose garbage collector
//! runs never sees a dependent without its owner (and deletes it) while the copy is under way.
//!
//! The order is by key prefix (one per resource): values may be encrypted at rest, so the
//! ownerReferences inside them cannot be read. Custom-resource groups are found in the source's
//! keyspace at the copy revision, so the same revision always gives the same phases (a resumed
//! copy's phase index means the same range).

use etcd_client::{GetOptions, KvClient, SortOrder, SortTarget};

use crate::keyspace::{prefix_end, Filter, REGISTRY_PREFIX};

/// Ranks of the explicitly ordered prefixes; every other key is copied after all of them.
/// Namespaces and CRDs first (everything lives in them), then custom resources (they commonly own
/// built-in objects: ConfigMaps, Secrets, Deployments), then the built-in owner chains level by
/// level: deployments → replicasets → pods, statefulsets/daemonsets → controllerrevisions,
/// cronjobs → jobs → pods, services → endpointslices/endpoints.
const BUILT_IN_RANKS: [(&str, u8); 14] = [
    ("/registry/namespaces/", 0),
    ("/registry/apiextensions.k8s.io/customresourcedefinitions/", 0),
    ("/registry/deployments/", 2),
    ("/registry/statefulsets/", 2),
    ("/registry/daemonsets/", 2),
    ("/registry/cronjobs/", 2),
    ("/registry/services/specs/", 2),
    ("/registry/controllers/", 2),
    ("/registry/replicasets/", 3),
    ("/registry/controllerrevisions/", 3),
    ("/registry/jobs/", 3),
    ("/registry/endpointslices/", 3),
    ("/registry/services/endpoints/", 3),
    ("/registry/pods/", 4),
];
/// Built-in groups the apiserver stores under a dotted prefix, like custom resources.
const BUILT_IN_DOTTED_GROUPS: [&str; 2] = ["apiextensions.k8s.io", "apiregistration.k8s.io"];
const RANK_CUSTOM_RESOURCE: u8 = 1;
const RANK_REST: u8 = 5;

/// The prefix naming the resource of `key` (`/registry/<resource>/`, `/registry/<group>/<resource>/`
/// or `/registry/services/{specs,endpoints}/`); a key of no such shape is its own prefix.
pub fn resource_prefix(key: &[u8]) -> Vec<u8> {
    let Some(rest) = key.strip_prefix(REGISTRY_PREFIX.as_bytes()) else { return key.to_vec() };
    let segments = |n: usize| -> Option<usize> {
        // The length of the first n segments, each with its trailing '/'.
        let mut len = 0;
        for _ in 0..n {
            len += rest[len..].iter().position(|b| *b == b'/')? + 1;
        }
        Some(len)
    };
    let first = match segments(1) {
        Some(len) => &rest[..len - 1],
        None => return key.to_vec(),
    };
    let depth = if first == b"services" || first.contains(&b'.') { 2 } else { 1 };
    match segments(depth) {
        Some(len) => key[..REGISTRY_PREFIX.len() + len].to_vec(),
        None => key.to_vec(),
    }
}

/// The copy rank of a resource prefix: lower ranks are copied first.
fn rank(prefix: &[u8]) -> u8 {
    if let Some((_, r)) = BUILT_IN_RANKS.iter().find(|(p, _)| prefix == p.as_bytes()) {
        return *r;
    }
    let custom_group = prefix.strip_prefix(REGISTRY_PREFIX.as_bytes()).is_some_and(|rest| {
        let group = rest.split(|b| *b == b'/').next().unwrap_or_default();
        group.contains(&b'.') && !BUILT_IN_DOTTED_GROUPS.iter().any(|g| g.as_bytes() == group)
    });
    if custom_group && prefix.ends_with(b"/") {
        RANK_CUSTOM_RESOURCE
    } else {
        RANK_REST
    }
}

/// The copy's phases, each a half-open key range `[start, end)`: the ranked prefixes among the
/// built-in owners and `found` (the source's resource prefixes), by rank then key; then every
/// key range left over, in key order. Together they cover `/registry/` exactly once.
pub fn copy_phases(found: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut ranked: Vec<(u8, Vec<u8>)> =
        BUILT_IN_RANKS.iter().map(|(p, _)| p.as_bytes().to_vec()).chain(found.iter().cloned()).map(|p| (rank(&p), p)).filter(|(r, _)| *r < RANK_REST).collect();
    ranked.sort();
    ranked.dedup();
    let mut phases: Vec<(Vec<u8>, Vec<u8>)> = ranked.iter().map(|(_, p)| (p.clone(), prefix_end(p))).collect();
    // The rest: the gaps between the ranked ranges (which never nest: each is one resource).
    let mut holes: Vec<&Vec<u8>> = ranked.iter().map(|(_, p)| p).collect();
    holes.sort();
    let mut start = REGISTRY_PREFIX.as_bytes().to_vec();
    for hole in holes {
        if start < *hole {
            phases.push((start, hole.clone()));
        }
        start = prefix_end(hole);
    }
    phases.push((start, prefix_end(REGISTRY_PREFIX.as_bytes())));
    phases
}

/// The resource prefixes under `/registry/` at `revision`: one request per resource (each jumps
/// past the prefix it found), not a scan of every key.
pub async fn discover(kv: &mut KvClient, revision: i64) -> Result<Vec<Vec<u8>>, etcd_client::Error> {
    let end = prefix_end(REGISTRY_PREFIX.as_bytes());
    let mut from = REGISTRY_PREFIX.as_bytes().to_vec();
    let mut found = Vec::new();
    loop {
        let opts =
            GetOptions::new().with_range(end.clone()).with_keys_only().with_limit(1).with_sort(SortTarget::Key, SortOrder::Ascend).with_revision(revision);
        let resp = kv.get(from.clone(), Some(opts)).await?;
        let Some(first) = resp.kvs().first() else { return Ok(found) };
        let prefix = resource_prefix(first.key());
        from = if prefix == first.key() { crate::etcd::key_after(&prefix) } else { prefix_end(&prefix) };
        found.push(prefix);
    }
}

/// One range read of a copy or a check: `[start, end)`, with values unless the filter excludes
/// the resource it holds (then keys only: a key the filter copies after all gets its values read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub keys_only: bool,
}

/// `[start, end)` split at the resource prefixes `found` (sorted, as [`discover`] returns them):
/// one range per resource and one per gap between them, covering `[start, end)` exactly, in key
/// order. Each read stays within its resource: etcd 3.4 walks its index from a page's start to
/// the range's end on every page, so one range over a million keys costs a million steps a page.
pub fn read_ranges(start: &[u8], end: &[u8], found: &[Vec<u8>], filter: &Filter) -> Vec<ReadRange> {
    let mut out = Vec::new();
    let mut at = start.to_vec();
    for p in found {
        // A bare key (no resource shape) is its own prefix: only itself.
        let p_end = if p.ends_with(b"/") { prefix_end(p) } else { crate::etcd::key_after(p) };
        let (lo, hi) = (p.as_slice().max(at.as_slice()).to_vec(), p_end.as_slice().min(end).to_vec());
        if lo >= hi {
            continue;
        }
        if at < lo {
            out.push(ReadRange { start: at, end: lo.clone(), keys_only: false });
        }
        out.push(ReadRange { start: lo, end: hi.clone(), keys_only: filter.excludes_resource(p) });
        at = hi;
    }
    if at.as_slice() < end {
        out.push(ReadRange { start: at, end: end.to_vec(), keys_only: false });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::ExcludeSpec;

    #[test]
    fn read_ranges_cover_the_range_once_per_resource_and_skip_values_of_excluded_ones() {
        let found: Vec<Vec<u8>> =
            ["/registry/compact_rev_key", "/registry/configmaps/", "/registry/events/", "/registry/pods/"].iter().map(|p| p.as_bytes().to_vec()).collect();
        let filter = Filter::with_default_namespaces(&ExcludeSpec::default());
        let show = |rs: Vec<ReadRange>| -> Vec<(String, String, bool)> {
            rs.into_iter()
                .map(|r| (String::from_utf8_lossy(&r.start).replace('\0', "^0"), String::from_utf8_lossy(&r.end).replace('\0', "^0"), r.keys_only))
                .collect()
        };
        let want = |rs: &[(&str, &str, bool)]| -> Vec<(String, String, bool)> { rs.iter().map(|(a, b, k)| (a.to_string(), b.to_string(), *k)).collect() };
        assert_eq!(
            show(read_ranges(b"/registry/", b"/registry0", &found, &filter)),
            want(&[
                ("/registry/", "/registry/compact_rev_key", false),
                ("/registry/compact_rev_key", "/registry/compact_rev_key^0", false),
                ("/registry/compact_rev_key^0", "/registry/configmaps/", false),
                ("/registry/configmaps/", "/registry/configmaps0", false),
                ("/registry/configmaps0", "/registry/events/", false),
                ("/registry/events/", "/registry/events0", true),
                ("/registry/events0", "/registry/pods/", false),
                ("/registry/pods/", "/registry/pods0", true),
                ("/registry/pods0", "/registry0", false),
            ])
        );
        // A resumed phase: from a key inside a resource, up to the phase's end.
        assert_eq!(
            show(read_ranges(b"/registry/configmaps/team-a/x", b"/registry/pods/", &found, &filter)),
            want(&[
                ("/registry/configmaps/team-a/x", "/registry/configmaps0", false),
                ("/registry/configmaps0", "/registry/events/", false),
                ("/registry/events/", "/registry/events0", true),
                ("/registry/events0", "/registry/pods/", false),
            ])
        );
        assert_eq!(show(read_ranges(b"/registry/a", b"/registry/b", &[], &filter)), want(&[("/registry/a", "/registry/b", false)]));
    }

    #[test]
    fn only_a_wholly_excluded_resource_is_read_without_values() {
        let filter = Filter::with_default_namespaces(&ExcludeSpec { resources: vec!["example.com/widgets".into()], ..ExcludeSpec::default() });
        for (prefix, keys_only) in [
            ("/registry/pods/", true),
            ("/registry/events/", true),
            ("/registry/services/endpoints/", true),
            ("/registry/example.com/widgets/", true),
            ("/registry/services/specs/", false),
            ("/registry/configmaps/", false),
            ("/registry/example.com/gadgets/", false),
            ("/registry/compact_rev_key", false),
        ] {
            assert_eq!(filter.excludes_resource(prefix.as_bytes()), keys_only, "{prefix}");
        }
    }

    #[test]
    fn resource_prefix_names_the_resource_of_each_key_shape() {
        let cases = [
            ("/registry/configmaps/team-a/cm", "/registry/configmaps/"),
            ("/registry/namespaces/team-a", "/registry/namespaces/"),
            ("/registry/services/specs/team-a/api", "/registry/services/specs/"),
            ("/registry/services/endpoints/team-a/api", "/registry/services/endpoints/"),
            ("/registry/example.com/widgets/team-a/w1", "/registry/example.com/widgets/"),
            ("/registry/apiextensions.k8s.io/customresourcedefinitions/w.example.com", "/registry/apiextensions.k8s.io/customresourcedefinitions/"),
            ("/registry/compact_rev_key", "/registry/compact_rev_key"),
            ("/registry/example.com", "/registry/example.com"),
            ("/elsewhere/x", "/elsewhere/x"),
        ];
        for (key, want) in cases {
            assert_eq!(String::from_utf8(resource_prefix(key.as_bytes())).expect("utf8"), want, "{key}");
        }
    }

    /// Where a key lands: the index of the one phase containing it (panics unless exactly one).
    fn phase_of(phases: &[(Vec<u8>, Vec<u8>)], key: &str) -> usize {
        let hits: Vec<usize> =
            phases.iter().enumerate().filter(|(_, (s, e))| key.as_bytes() >= s.as_slice() && key.as_bytes() < e.as_slice()).map(|(i, _)| i).collect();
        assert_eq!(hits.len(), 1, "{key} is in phases {hits:?}");
        hits[0]
    }

    #[test]
    fn owners_are_copied_before_their_dependents() {
        let found: Vec<Vec<u8>> = ["/registry/example.com/widgets/", "/registry/configmaps/", "/registry/zeta.io/things/", "/registry/compact_rev_key"]
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let phases = copy_phases(&found);
        let at = |k: &str| phase_of(&phases, k);
        // (owner, dependent)
        let chains = [
            ("/registry/namespaces/team-a", "/registry/example.com/widgets/team-a/w1"),
            ("/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com", "/registry/example.com/widgets/team-a/w1"),
            ("/registry/example.com/widgets/team-a/w1", "/registry/configmaps/team-a/w1-0"),
            ("/registry/zeta.io/things/team-a/t", "/registry/configmaps/team-a/t-0"),
            ("/registry/example.com/widgets/team-a/w1", "/registry/deployments/team-a/w1"),
            ("/registry/deployments/team-a/web", "/registry/replicasets/team-a/web-5d8"),
            ("/registry/replicasets/team-a/web-5d8", "/registry/pods/team-a/web-5d8-x"),
            ("/registry/statefulsets/team-a/db", "/registry/controllerrevisions/team-a/db-7f"),
            ("/registry/statefulsets/team-a/db", "/registry/pods/team-a/db-0"),
            ("/registry/cronjobs/team-a/nightly", "/registry/jobs/team-a/nightly-29"),
            ("/registry/jobs/team-a/nightly-29", "/registry/pods/team-a/nightly-29-x"),
            ("/registry/services/specs/team-a/api", "/registry/endpointslices/team-a/api-x"),
            ("/registry/services/specs/team-a/api", "/registry/services/endpoints/team-a/api"),
            ("/registry/pods/team-a/web-5d8-x", "/registry/persistentvolumeclaims/team-a/eph"),
        ];
        for (owner, dependent) in chains {
            assert!(at(owner) < at(dependent), "{owner} (phase {}) must come before {dependent} (phase {})", at(owner), at(dependent));
        }
    }

    #[test]
    fn phases_cover_the_registry_exactly_once() {
        let found: Vec<Vec<u8>> = ["/registry/example.com/widgets/", "/registry/a.b/c/"].iter().map(|p| p.as_bytes().to_vec()).collect();
        let phases = copy_phases(&found);
        for key in [
            "/registry/",
            "/registry/namespaces/a",
            "/registry/namespacesx",
            "/registry/pods/a/b",
            "/registry/podsecuritypolicy/p",
            "/registry/replicasets/a/b",
            "/registry/zzz",
            "/registry/\u{7f}",
            "/registry/services/specs/a/b",
            "/registry/services/x",
            "/registry/apiextensions.k8s.io/customresourcedefinitions/w.x",
            "/registry/apiextensions.k8s.io/other",
            "/registry/apiregistration.k8s.io/apiservices/v1.apps",
            "/registry/example.com/widgets/a/b",
            "/registry/example.com/gadgets/a/b",
            "/registry/a.b/c/d",
            "/registry/compact_rev_key",
        ] {
            phase_of(&phases, key);
        }
        let outside = |k: &[u8]| phases.iter().all(|(s, e)| k < s.as_slice() || k >= e.as_slice());
        assert!(outside(b"/registrz") && outside(b"/registry") && outside(b"drctl/mirror/checkpoint"));
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(copy_phases(&found), phases, "the same prefixes give the same phases (a resumed copy relies on it)");
    }

    #[test]
    fn built_in_dotted_groups_are_not_custom_resources() {
        assert_eq!(rank(b"/registry/apiregistration.k8s.io/apiservices/"), RANK_REST);
        assert_eq!(rank(b"/registry/apiextensions.k8s.io/customresourcedefinitions/"), 0);
        assert_eq!(rank(b"/registry/snapshot.storage.k8s.io/volumesnapshots/"), RANK_CUSTOM_RESOURCE);
        assert_eq!(rank(b"/registry/example.com"), RANK_REST, "a bare key is not a resource");
        assert_eq!(rank(b"/registry/configmaps/"), RANK_REST);
    }
}
