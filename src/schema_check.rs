//! The CRD's own openAPI schema, applied client-side: what the apiserver's structural validation
//! refuses (types, required fields, maxItems/minItems, maxLength/minLength, pattern, enum,
//! minimum/maximum, int64 range), read from the schema `drctl crd` generates, so `validate` and
//! admission cannot drift apart. Unlike the apiserver it also reports unknown fields, which the
//! apiserver would prune without a word. Every problem is reported, not just the first.

use serde_json::Value;

use crate::fields::FieldError;
use crate::topology::{NAME_PATTERN, SUBDOMAIN_PATTERN};

/// What a pattern of the CRD means, in words a user can act on.
fn pattern_words(p: &str) -> String {
    match p {
        NAME_PATTERN => "an RFC 1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit".into(),
        SUBDOMAIN_PATTERN => "an RFC 1123 subdomain: lower-case labels of letters, digits and '-', joined by '.'".into(),
        "^/" => "an absolute path, starting with /".into(),
        "^https?://" => "an http(s) URL, e.g. https://hooks.example.com/vip".into(),
        other => format!("text matching the regular expression {other}"),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::Array(_) | Value::Object(_) => json_type(v).to_string(),
        other => format!("{} ({other})", json_type(other)),
    }
}

/// Whether `v` has the schema's `type`; an integer beyond int64 is not one to Kubernetes.
fn has_type(v: &Value, ty: &str) -> bool {
    match ty {
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

fn type_fix(ty: &str, v: &Value) -> String {
    match (ty, v) {
        ("integer", Value::Number(n)) if n.is_u64() => {
            format!("is {n}, beyond the largest integer Kubernetes stores ({}); use a smaller number", i64::MAX)
        }
        ("integer", Value::Number(n)) => format!("is {n}; this field takes a whole number"),
        ("string", Value::Bool(_) | Value::Number(_)) => format!("is {}; this field takes a string: quote the value", shown(v)),
        ("boolean", _) => format!("is {}; write true or false", shown(v)),
        ("array", _) => format!("is {}; this field takes a list, e.g. [a, b]", shown(v)),
        ("object", _) => format!("is {}; this field takes an object of fields", shown(v)),
        (ty, _) => format!(
            "is {}; this field takes {}",
            shown(v),
            match ty {
                "integer" => "an integer",
                "number" => "a number",
                _ => "a string",
            }
        ),
    }
}

/// Every schema violation in `value`, at JSON paths in `validate`'s spelling.
pub fn check(value: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let at = |p: &str| if p.is_empty() { ".".to_string() } else { p.to_string() };
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        if !has_type(value, ty) {
            errs.push(FieldError::new(at(path), type_fix(ty, value)));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed.iter().map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string)).collect();
            errs.push(FieldError::new(at(path), format!("is {value}; use one of {}", list.join(", "))));
        }
    }
    let limit = |key: &str| schema.get(key).and_then(Value::as_f64);
    match value {
        Value::String(s) => {
            let n = s.chars().count();
            if let Some(max) = limit("maxLength").filter(|m| n as f64 > *m) {
                errs.push(FieldError::new(at(path), format!("is {n} characters long; the limit is {max}: shorten it")));
            }
            if let Some(min) = limit("minLength").filter(|m| (n as f64) < *m) {
                let what = if n == 0 { "is empty".to_string() } else { format!("is {n} characters long") };
                errs.push(FieldError::new(at(path), format!("{what}; the minimum is {min} character(s): fill it in")));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if regex::Regex::new(p).is_ok_and(|re| !re.is_match(s)) {
                    errs.push(FieldError::new(at(path), format!("{s:?} is not {}", pattern_words(p))));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(max) = limit("maximum").filter(|m| x > *m) {
                errs.push(FieldError::new(at(path), format!("is {n}, above the maximum of {max}: use at most {max}")));
            }
            if let Some(min) = limit("minimum").filter(|m| x < *m) {
                errs.push(FieldError::new(at(path), format!("is {n}, below the minimum of {min}: use at least {min}")));
            }
        }
        Value::Array(items) => {
            let n = items.len();
            if let Some(max) = limit("maxItems").filter(|m| n as f64 > *m) {
                errs.push(FieldError::new(at(path), format!("lists {n} items; the limit is {max}: remove {}", n - max as usize)));
            }
            if let Some(min) = limit("minItems").filter(|m| (n as f64) < *m) {
                errs.push(FieldError::new(at(path), format!("lists {n} item(s); the minimum is {min}: add {}", min as usize - n)));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(v, item_schema, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(req) {
                    errs.push(FieldError::new(child(path, req), "is missing; this field is required"));
                }
            }
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (k, v) in map {
                let p = child(path, k);
                match props.and_then(|ps| ps.get(k)) {
                    Some(s) => check(v, s, &p, errs),
                    None if preserve => {}
                    // Checked by `validate` itself (apiVersion, kind, metadata).
                    None if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => {
                        let known: Vec<&str> = props.map(|ps| ps.keys().map(String::as_str).collect()).unwrap_or_default();
                        errs.push(FieldError::new(
                            p,
                            format!("unknown field (the apiserver would drop it without a word); known fields here: {}", known.join(", ")),
                        ));
                    }
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(value: Value, schema: Value) -> Vec<String> {
        let mut errs = Vec::new();
        check(&value, &schema, "spec", &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_violation_is_reported_with_its_limit() {
        let schema = json!({"type": "object", "required": ["d"], "properties": {
            "a": {"type": "string", "maxLength": 3},
            "b": {"type": "array", "maxItems": 1, "items": {"type": "integer", "minimum": 0.0}},
            "c": {"type": "string", "pattern": NAME_PATTERN},
            "d": {"type": "string"},
            "e": {"type": "string", "enum": ["x", "y"]},
        }});
        assert_eq!(
            errors(json!({"a": "abcd", "b": [-1, true], "c": "A_b", "e": "z", "f": 1}), schema),
            vec![
                "spec.d: is missing; this field is required",
                "spec.a: is 4 characters long; the limit is 3: shorten it",
                "spec.b: lists 2 items; the limit is 1: remove 1",
                "spec.b[0]: is -1, below the minimum of 0: use at least 0",
                "spec.b[1]: is a boolean (true); this field takes an integer",
                "spec.c: \"A_b\" is not an RFC 1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit",
                "spec.e: is \"z\"; use one of x, y",
                "spec.f: unknown field (the apiserver would drop it without a word); known fields here: a, b, c, d, e",
            ]
        );
    }

    #[test]
    fn an_integer_beyond_int64_is_not_an_integer_to_kubernetes() {
        let got = errors(json!(9_223_372_036_854_775_808u64), json!({"type": "integer"}));
        assert_eq!(got, vec!["spec: is 9223372036854775808, beyond the largest integer Kubernetes stores (9223372036854775807); use a smaller number"]);
        assert_eq!(errors(json!(i64::MAX), json!({"type": "integer"})), Vec::<String>::new());
    }

    #[test]
    fn a_boolean_for_a_string_says_quote_it() {
        assert_eq!(errors(json!(true), json!({"type": "string"})), vec!["spec: is a boolean (true); this field takes a string: quote the value"]);
    }
}
