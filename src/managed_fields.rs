//! Who last wrote a stored object: the newest entry of its `metadata.managedFields`, read straight
//! from the etcd value, so a check can say which of the standby's own writers changed a key. Custom
//! resources are stored as JSON; built-in types in Kubernetes' protobuf envelope (`k8s\0`, then a
//! `runtime.Unknown` whose `raw` is the object, `metadata` its field 1). A value encrypted at rest
//! (`k8s:enc:`) or malformed says nothing: None, never an error.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The writer an object's newest managedFields entry names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Writer {
    /// The field manager (a client's user agent up to its first `/`, or `--field-manager`).
    pub manager: String,
    /// `Update` or `Apply`.
    pub operation: String,
    /// `status`, `binding`, ... when written through a subresource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// When, RFC 3339; absent when the entry has no time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.manager, self.operation)?;
        if !self.subresource.is_empty() {
            write!(f, " {}", self.subresource)?;
        }
        if let Some(t) = &self.time {
            write!(f, " at {t}")?;
        }
        write!(f, ")")
    }
}

/// One managedFields entry and its time in seconds (None sorts oldest).
struct Entry {
    writer: Writer,
    seconds: Option<i64>,
}

/// The newest entry: latest time; among equal times the later in the list (the apiserver appends).
fn newest(entries: Vec<Entry>) -> Option<Writer> {
    entries.into_iter().max_by_key(|e| e.seconds).map(|e| e.writer)
}

const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// The last writer of the object stored as `value`, when its encoding says.
pub fn last_writer(value: &[u8]) -> Option<Writer> {
    if let Some(envelope) = value.strip_prefix(PROTOBUF_MAGIC) {
        newest(from_protobuf(envelope)?)
    } else if value.first() == Some(&b'{') {
        newest(from_json(value)?)
    } else {
        None
    }
}

#[derive(Deserialize)]
struct JsonObject {
    #[serde(default)]
    metadata: JsonMeta,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonMeta {
    #[serde(default)]
    managed_fields: Vec<JsonEntry>,
}

#[derive(Deserialize)]
struct JsonEntry {
    #[serde(default)]
    manager: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    subresource: String,
    time: Option<String>,
}

fn from_json(value: &[u8]) -> Option<Vec<Entry>> {
    let obj: JsonObject = serde_json::from_slice(value).ok()?;
    Some(
        obj.metadata
            .managed_fields
            .into_iter()
            .map(|e| {
                let seconds = e.time.as_deref().and_then(|t| t.parse::<Timestamp>().ok()).map(|t| t.as_second());
                Entry { writer: Writer { manager: e.manager, operation: e.operation, subresource: e.subresource, time: e.time }, seconds }
            })
            .collect(),
    )
}

/// Protobuf field numbers (k8s.io/apimachinery generated.proto).
const UNKNOWN_RAW: u32 = 2;
const OBJECT_METADATA: u32 = 1;
const META_MANAGED_FIELDS: u32 = 17;
const ENTRY_MANAGER: u32 = 1;
const ENTRY_OPERATION: u32 = 2;
const ENTRY_TIME: u32 = 4;
const ENTRY_SUBRESOURCE: u32 = 8;
const TIME_SECONDS: u32 = 1;

fn from_protobuf(envelope: &[u8]) -> Option<Vec<Entry>> {
    let raw = bytes_field(envelope, UNKNOWN_RAW)?;
    let meta = bytes_field(raw, OBJECT_METADATA)?;
    let mut entries = Vec::new();
    for (n, v) in fields(meta)? {
        let (META_MANAGED_FIELDS, Field::Bytes(entry)) = (n, v) else { continue };
        let (mut writer, mut seconds) = (Writer { manager: String::new(), operation: String::new(), subresource: String::new(), time: None }, None);
        for (n, v) in fields(entry)? {
            match (n, v) {
                (ENTRY_MANAGER, Field::Bytes(b)) => writer.manager = String::from_utf8_lossy(b).into_owned(),
                (ENTRY_OPERATION, Field::Bytes(b)) => writer.operation = String::from_utf8_lossy(b).into_owned(),
                (ENTRY_SUBRESOURCE, Field::Bytes(b)) => writer.subresource = String::from_utf8_lossy(b).into_owned(),
                (ENTRY_TIME, Field::Bytes(b)) => {
                    seconds = fields(b)?.into_iter().find_map(|f| match f {
                        (TIME_SECONDS, Field::Varint(s)) => Some(s as i64),
                        _ => None,
                    });
                    writer.time = seconds.and_then(|s| Timestamp::from_second(s).ok()).map(|t| t.to_string());
                }
                _ => {}
            }
        }
        entries.push(Entry { writer, seconds });
    }
    Some(entries)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// fixed32 / fixed64: nothing read here uses them.
    Fixed,
}

/// The first length-delimited field `number` of a message.
fn bytes_field(msg: &[u8], number: u32) -> Option<&[u8]> {
    fields(msg)?.into_iter().find_map(|(n, f)| match f {
        Field::Bytes(b) if n == number => Some(b),
        _ => None,
    })
}

/// A protobuf message's fields in order; None when it is not well-formed.
fn fields(mut msg: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    let mut out = Vec::new();
    while !msg.is_empty() {
        let tag = varint(&mut msg)?;
        let number = u32::try_from(tag >> 3).ok()?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(&mut msg)?),
            1 => take(&mut msg, 8).map(|_| Field::Fixed)?,
            2 => {
                let len = usize::try_from(varint(&mut msg)?).ok()?;
                Field::Bytes(take(&mut msg, len)?)
            }
            5 => take(&mut msg, 4).map(|_| Field::Fixed)?,
            // Groups (3, 4) are not used by Kubernetes' types.
            _ => return None,
        };
        out.push((number, field));
    }
    Some(out)
}

fn take<'a>(msg: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if msg.len() < n {
        return None;
    }
    let (head, rest) = msg.split_at(n);
    *msg = rest;
    Some(head)
}

fn varint(msg: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = msg.split_first()?;
        *msg = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf message from (field, bytes) pairs, all length-delimited.
    fn msg(parts: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, b) in parts {
            put_varint(&mut out, u64::from(n << 3 | 2));
            put_varint(&mut out, b.len() as u64);
            out.extend_from_slice(b);
        }
        out
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn entry(manager: &str, subresource: &str, seconds: u64) -> Vec<u8> {
        let mut time = Vec::new();
        put_varint(&mut time, u64::from(TIME_SECONDS << 3));
        put_varint(&mut time, seconds);
        msg(&[(1, manager.into()), (2, b"Update".to_vec()), (3, b"v1".to_vec()), (4, time), (8, subresource.into())])
    }

    /// A stored built-in object: magic, runtime.Unknown{typeMeta, raw: {metadata: {name, managedFields...}, spec}}.
    fn stored(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut meta = vec![(1, b"web-1".to_vec()), (3, b"team-a".to_vec())];
        meta.extend(entries.iter().map(|e| (META_MANAGED_FIELDS, e.clone())));
        let object = msg(&[(OBJECT_METADATA, msg(&meta)), (2, b"spec bytes".to_vec())]);
        let unknown = msg(&[(1, msg(&[(1, b"v1".to_vec()), (2, b"Pod".to_vec())])), (UNKNOWN_RAW, object)]);
        [PROTOBUF_MAGIC, &unknown].concat()
    }

    #[test]
    fn the_newest_managed_fields_entry_is_the_last_writer() {
        let v = stored(&[entry("kube-controller-manager", "", 1_700_000_000), entry("kube-scheduler", "binding", 1_700_000_100)]);
        let w = last_writer(&v).expect("writer");
        assert_eq!((w.manager.as_str(), w.operation.as_str(), w.subresource.as_str()), ("kube-scheduler", "Update", "binding"));
        assert_eq!(w.time.as_deref(), Some("2023-11-14T22:15:00Z"));
        assert_eq!(w.to_string(), "kube-scheduler (Update binding at 2023-11-14T22:15:00Z)");
        // Order in the list does not matter, the time does; equal times: the later entry.
        let v = stored(&[entry("kube-scheduler", "binding", 1_700_000_100), entry("kube-controller-manager", "status", 1_700_000_000)]);
        assert_eq!(last_writer(&v).expect("writer").manager, "kube-scheduler");
        let v = stored(&[entry("a", "", 5), entry("b", "", 5)]);
        assert_eq!(last_writer(&v).expect("writer").manager, "b");
    }

    #[test]
    fn json_objects_name_their_writer_too() {
        let v = br#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w","managedFields":[
            {"manager":"kubectl-client-side-apply","operation":"Update","time":"2026-01-01T00:00:00Z"},
            {"manager":"widget-controller","operation":"Update","subresource":"status","time":"2026-01-01T00:05:00Z"}]}}"#;
        let w = last_writer(v).expect("writer");
        assert_eq!((w.manager.as_str(), w.subresource.as_str()), ("widget-controller", "status"));
    }

    #[test]
    fn values_that_do_not_say_give_no_writer() {
        assert_eq!(last_writer(b"k8s:enc:aescbc:v1:key1:\x01\x02"), None, "encrypted at rest");
        assert_eq!(last_writer(b"plain bytes"), None);
        assert_eq!(last_writer(br#"{"metadata":{}}"#), None, "no managedFields");
        assert_eq!(last_writer(b"{not json"), None);
        let mut truncated = stored(&[entry("kube-scheduler", "binding", 1)]);
        truncated.truncate(truncated.len() - 3);
        assert_eq!(last_writer(&truncated), None, "a length past the end");
        assert_eq!(last_writer(&[PROTOBUF_MAGIC, &[0xff; 12][..]].concat()), None, "a varint past 64 bits");
    }
}
