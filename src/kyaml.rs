//! YAML read as Kubernetes reads it. kubectl and Argo CD parse manifests with a YAML 1.1
//! library that keeps the last of duplicate keys without a word and reads unquoted `on`, `no`,
//! `y` or `0755` as booleans and octal numbers; `drctl validate` reads YAML 1.2. This pass finds
//! every place where the two readings differ, or where one silently drops a line, so validate
//! refuses what kubectl would read differently instead of agreeing with the wrong reading.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{ErrorKind, Event, Marker, Parser, ScalarStyle, ScanError, StructureStyle};

use crate::fields::FieldError;

/// A document that expands past this many nodes through aliases is an alias bomb: a
/// DRTopology has a few hundred nodes, and kubectl refuses "excessive aliasing" too.
pub const ALIAS_EXPANSION_LIMIT: usize = 100_000;

/// What makes a whole text unreadable, at its real line (1-based) and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// How YAML 1.1 (kubectl) reads an unquoted scalar that YAML 1.2 (validate) reads as a string
/// or as another number, if it does (pure).
pub fn yaml11_trap(plain: &str) -> Option<String> {
    const TRUE: [&str; 8] = ["y", "Y", "yes", "Yes", "YES", "on", "On", "ON"];
    const FALSE: [&str; 8] = ["n", "N", "no", "No", "NO", "off", "Off", "OFF"];
    if TRUE.contains(&plain) {
        return Some("the boolean true".into());
    }
    if FALSE.contains(&plain) {
        return Some("the boolean false".into());
    }
    let digits = plain.strip_prefix(['-', '+']).unwrap_or(plain);
    if digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(match i64::from_str_radix(digits, 8) {
            Ok(n) => format!("the octal number {n}"),
            Err(_) => "a number without its leading zero".into(),
        });
    }
    if digits.starts_with(|c: char| c.is_ascii_digit()) && digits.contains('_') && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return Some(format!("the number {}", digits.replace('_', "")));
    }
    if let Some(bin) = digits.strip_prefix("0b").filter(|b| !b.is_empty() && b.bytes().all(|c| c == b'0' || c == b'1')) {
        return Some(i64::from_str_radix(bin, 2).map_or_else(|_| "a binary number".into(), |n| format!("the binary number {n}")));
    }
    None
}

fn trap_message(plain: &str, reading: &str, line: usize) -> String {
    let fix = if reading.starts_with("the boolean") {
        " for the string, or write true or false for a boolean"
    } else {
        " for the string, or write the number in decimal"
    };
    format!("line {line}: unquoted {plain} is {reading} to kubectl and Argo CD (YAML 1.1) but not to YAML 1.2 readers; quote it (\"{plain}\"){fix}")
}

/// How validate's serde reader reads a document: YAML 1.2, as it always has (the YAML 1.1
/// readings are the traps above), keeping what the checks here and in validate name.
pub fn serde_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        // Duplicates are named above; the value keeps the last, as kubectl does.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        // `yes`, `0755` and `1_000` are strings in YAML 1.2.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // `<<` is an ordinary (unknown) key; `~` as a key is the string "~".
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        null_as_string: true,
        // `.nan` and `.inf` read as null, as JSON has neither.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        // An application tag (`!secret x`) is an error, not silently dropped.
        reject_unsupported_tags: true,
        // The message names line and column; the caller shows the file.
        with_snippet: false,
    }
}

/// YAML as `drctl crd` writes it: block style, long lines kept whole (no folding, so the
/// CRD's descriptions and CEL rules read as written), text with newlines as `|` blocks.
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_with_options(value, serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX })
}

/// What a node event is, for the bookkeeping of its parent.
#[derive(Clone, Copy)]
enum Node<'a> {
    Scalar(&'a str),
    Alias,
    /// A mapping or sequence: as a value, its key stays current until the container ends.
    Container,
}

enum Frame {
    /// A mapping: the keys seen (with their line), the key whose value comes next.
    Map { keys: HashMap<String, usize>, key: Option<String> },
    /// Items started so far: the one being read is `items - 1`, the next `items`.
    Seq { items: usize },
}

/// Per document (empty ones dropped, as [`crate::validate::parse_documents`] does): the field
/// errors of duplicate keys and YAML 1.1 traps. Unreadable: a syntax error, an alias bomb, an
/// integer no Kubernetes field holds, each at its line.
pub fn read(text: &str) -> Result<Vec<Vec<FieldError>>, Unreadable> {
    // The same parser serde-saphyr reads the documents with, so both agree on what is YAML.
    let mut options = serde_saphyr::granit_parser::Options::default();
    options.emit_comments = false;
    let parser = Parser::new_from_str_with_options(text, options);
    let mut docs = Vec::new();
    let mut errs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // Per anchor id: how many nodes it expands to; per open container: nodes so far.
    let mut anchors: HashMap<usize, usize> = HashMap::new();
    let mut open: Vec<(usize, usize)> = Vec::new();
    // Per open container: where it starts if it is a flow one (`[`, `{`), for a syntax error in it.
    let mut flows: Vec<Option<(&str, Marker)>> = Vec::new();
    let (mut expanded, mut events, mut empty_doc) = (0usize, 0usize, false);
    for next in parser {
        let (event, span) = next.map_err(|e| unreadable(text, &e, flows.iter().rev().find_map(|f| *f)))?;
        let mark = span.start;
        events += 1;
        match event {
            Event::StreamEnd => return Ok(docs),
            Event::DocumentStart(..) => {
                (expanded, events, empty_doc) = (0, 0, false);
                anchors.clear();
            }
            Event::DocumentEnd => {
                if !empty_doc {
                    docs.push(std::mem::take(&mut errs));
                }
                errs.clear();
            }
            Event::Scalar(value, style, anchor, _) => {
                if stack.is_empty() && style == ScalarStyle::Plain && matches!(&*value, "" | "~" | "null" | "Null" | "NULL") {
                    empty_doc = true;
                }
                if style == ScalarStyle::Plain {
                    if let Some(reading) = yaml11_trap(&value) {
                        let path = if is_key(&stack) { child_path(&stack, &value) } else { path_of(&stack) };
                        errs.push(FieldError::new(path, trap_message(&value, &reading, mark.line())));
                    }
                    if !is_key(&stack) && integer_beyond_range(&value) {
                        return Err(Unreadable {
                            line: mark.line(),
                            column: mark.col() + 1,
                            message: format!(
                                "{}: the number is beyond the largest integer Kubernetes stores ({}); use a smaller number",
                                path_of(&stack),
                                i64::MAX
                            ),
                        });
                    }
                }
                node(&mut stack, &mut open, Node::Scalar(&value), mark, &mut errs);
                expanded += 1;
                if anchor > 0 {
                    anchors.insert(anchor, 1);
                }
            }
            Event::Alias(id) => {
                let size = anchors.get(&id).copied().unwrap_or(1);
                expanded = expanded.saturating_add(size);
                if let Some(top) = open.last_mut() {
                    top.1 = top.1.saturating_add(size);
                }
                if expanded > ALIAS_EXPANSION_LIMIT.max(events * 100) {
                    return Err(Unreadable {
                        line: mark.line(),
                        column: mark.col() + 1,
                        message: format!(
                            "this alias expands the document past {ALIAS_EXPANSION_LIMIT} nodes (an alias bomb; kubectl refuses it as excessive aliasing); write the values out instead of nesting aliases"
                        ),
                    });
                }
                node(&mut stack, &mut open, Node::Alias, mark, &mut errs);
            }
            Event::MappingStart(style, anchor, _) | Event::SequenceStart(style, anchor, _) => {
                let is_map = matches!(event, Event::MappingStart(..));
                flows.push((style == StructureStyle::Flow).then_some((if is_map { "mapping" } else { "sequence" }, mark)));
                node(&mut stack, &mut open, Node::Container, mark, &mut errs);
                open.push((anchor, 1));
                expanded += 1;
                stack.push(if is_map { Frame::Map { keys: HashMap::new(), key: None } } else { Frame::Seq { items: 0 } });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                flows.pop();
                if let Some((anchor, size)) = open.pop() {
                    if anchor > 0 {
                        anchors.insert(anchor, size);
                    }
                    if let Some(parent) = open.last_mut() {
                        parent.1 = parent.1.saturating_add(size);
                    }
                }
                // The container was the value of its parent's key.
                if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                    *key = None;
                }
            }
            // The stream start; anchor and comment metadata (not nodes, and not asked for).
            _ => {}
        }
    }
    Ok(docs)
}

/// A YAML 1.2 integer (decimal, `0o` octal, `0x` hex) outside i64 and u64 (pure): no
/// Kubernetes integer holds it, and a serde reader would turn it into a float or fail on it.
/// Spellings with a leading zero or an underscore are strings to YAML 1.2 (and traps, above).
pub fn integer_beyond_range(plain: &str) -> bool {
    let (radix, digits) = if let Some(hex) = plain.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = plain.strip_prefix("0o") {
        (8, oct)
    } else {
        let unsigned = plain.strip_prefix(['-', '+']).unwrap_or(plain);
        if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) || (unsigned.len() > 1 && unsigned.starts_with('0')) {
            return false;
        }
        return plain.parse::<i64>().is_err() && plain.parse::<u64>().is_err();
    };
    !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)) && u64::from_str_radix(digits, radix).is_err()
}

/// A syntax error at its line, with the flow collection it is in (an unclosed `[` is the usual
/// cause), a tab in the indentation named as such: the parser points at the start of the plain
/// scalar a tab-indented line would continue, the user wants the tab.
fn unreadable(text: &str, e: &ScanError, flow: Option<(&str, Marker)>) -> Unreadable {
    let (line, column) = (e.marker().line(), e.marker().col() + 1);
    let tab = matches!(
        e.kind(),
        ErrorKind::TabNotAllowed
            | ErrorKind::TabInBlockIndentation
            | ErrorKind::TabAtBlockScalarStart
            | ErrorKind::TabInIndentation
            | ErrorKind::TabInPlainScalar
    );
    let tab_at = text.lines().enumerate().skip(line.saturating_sub(1)).find_map(|(i, l)| {
        let spaces = l.len() - l.trim_start_matches(' ').len();
        l[spaces..].starts_with('\t').then_some((i + 1, spaces + 1))
    });
    match tab_at.filter(|_| tab) {
        Some((l, c)) => Unreadable { line: l, column: c, message: name_the_tab(text, l, &format!("{} at line {line}, column {column}", e.info())) },
        None => {
            let within = flow.map_or(String::new(), |(kind, m)| format!(", in the flow {kind} opened at line {}, column {}", m.line(), m.col() + 1));
            Unreadable { line, column, message: format!("{}{within}", e.info()) }
        }
    }
}

fn is_key(stack: &[Frame]) -> bool {
    matches!(stack.last(), Some(Frame::Map { key: None, .. }))
}

/// Records one node at the current position: a key of a mapping (checked for duplicates), the
/// value of a key, or an item of a sequence.
fn node(stack: &mut [Frame], open: &mut [(usize, usize)], n: Node<'_>, mark: Marker, errs: &mut Vec<FieldError>) {
    let path = path_of(stack);
    match stack.last_mut() {
        Some(Frame::Map { keys, key }) => match key.take() {
            None => {
                let k = match n {
                    Node::Scalar(s) => s.to_string(),
                    Node::Alias | Node::Container => "?".to_string(),
                };
                if let Some(first) = keys.get(&k) {
                    let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    errs.push(FieldError::new(
                        at,
                        format!(
                            "line {}: this key is also set on line {first}; kubectl keeps only the last one without a word. Delete one of the two",
                            mark.line()
                        ),
                    ));
                } else {
                    keys.insert(k.clone(), mark.line());
                }
                *key = Some(k);
            }
            // A scalar value ends the pair; a container value ends it at its end event.
            Some(k) => {
                if matches!(n, Node::Container) {
                    *key = Some(k);
                }
            }
        },
        Some(Frame::Seq { items }) => *items += 1,
        None => {}
    }
    if matches!(n, Node::Scalar(_)) {
        if let Some(top) = open.last_mut() {
            top.1 += 1;
        }
    }
}

/// The JSON path of the position the next node takes, in `validate`'s spelling.
fn path_of(stack: &[Frame]) -> String {
    let mut p = String::new();
    for (depth, f) in stack.iter().enumerate() {
        match f {
            Frame::Map { key: Some(k), .. } => {
                if !p.is_empty() {
                    p.push('.');
                }
                p.push_str(k);
            }
            Frame::Map { key: None, .. } => {}
            Frame::Seq { items } => {
                let inside = depth + 1 < stack.len();
                p.push_str(&format!("[{}]", if inside { items.saturating_sub(1) } else { *items }));
            }
        }
    }
    p
}

fn child_path(stack: &[Frame], key: &str) -> String {
    let p = path_of(stack);
    if p.is_empty() {
        key.to_string()
    } else {
        format!("{p}.{key}")
    }
}

/// A syntax error's message, told plainly when the line it points at indents with a tab.
fn name_the_tab(text: &str, line: usize, message: &str) -> String {
    let indented_by_tab = |l: usize| text.lines().nth(l.wrapping_sub(1)).is_some_and(|s| s.trim_start_matches(' ').starts_with('\t'));
    match Some(line).filter(|&l| indented_by_tab(l)) {
        Some(l) => format!("line {l} indents with a tab character; YAML indents with spaces only: replace the tab with spaces ({message})"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<String> {
        read(text).expect("readable").into_iter().flatten().map(|e| e.to_string()).collect()
    }

    #[test]
    fn yaml11_traps_are_named_with_what_kubectl_reads() {
        let cases = [
            ("on", Some("the boolean true")),
            ("Off", Some("the boolean false")),
            ("y", Some("the boolean true")),
            ("NO", Some("the boolean false")),
            ("0755", Some("the octal number 493")),
            ("089", Some("a number without its leading zero")),
            ("1_000", Some("the number 1000")),
            ("0b101", Some("the binary number 5")),
            ("0", None),
            ("30", None),
            ("true", None),
            ("global-a", None),
            ("onward", None),
        ];
        for (plain, want) in cases {
            assert_eq!(yaml11_trap(plain).as_deref(), want, "{plain}");
        }
    }

    #[test]
    fn a_duplicate_key_names_both_lines_and_its_path() {
        let text = "spec:\n  primary: a\n  clusters:\n    - name: x\n      vip: 1\n      vip: 2\n  primary: b\n";
        assert_eq!(
            found(text),
            vec![
                "spec.clusters[0].vip: line 6: this key is also set on line 5; kubectl keeps only the last one without a word. Delete one of the two",
                "spec.primary: line 7: this key is also set on line 2; kubectl keeps only the last one without a word. Delete one of the two",
            ]
        );
    }

    #[test]
    fn only_unquoted_scalars_are_traps_and_keys_count_too() {
        let text = "a: \"on\"\nb: 'no'\nc: [x, off]\non: 1\n";
        let got = found(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("c[1]: line 3: unquoted off is the boolean false"), "{got:?}");
        assert!(got[1].starts_with("on: line 4: unquoted on is the boolean true"), "{got:?}");
    }

    #[test]
    fn documents_align_with_the_parsed_ones() {
        assert_eq!(read("---\n---\na: on\n---\nb: 1\n").expect("readable").len(), 2);
    }

    #[test]
    fn an_alias_bomb_is_refused_at_its_line() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, c) in ('b'..='i').enumerate() {
            let prev = char::from(b'a' + u8::try_from(i).expect("small"));
            text.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{prev}"); 10].join(", ")));
        }
        let err = read(&text).expect_err("a bomb");
        assert!((5..=9).contains(&err.line), "{err:?}");
        assert!(err.message.contains("alias bomb"), "{err:?}");
        // A few aliases are fine.
        assert!(read("a: &a {x: 1}\nb: *a\nc: *a\n").is_ok());
    }

    #[test]
    fn integers_no_kubernetes_field_holds_are_beyond_range() {
        let cases = [
            ("9223372036854775807", false),
            ("9223372036854775808", false), // a u64: JSON holds it, validate names the limit
            ("18446744073709551615", false),
            ("18446744073709551616", true),
            ("-9223372036854775808", false),
            ("-9223372036854775809", true),
            ("+99999999999999999999", true),
            ("340282366920938463463374607431768211456", true),
            ("0xFFFFFFFFFFFFFFFF", false),
            ("0x1FFFFFFFFFFFFFFFF", true),
            ("0o7777777777777777777777777", true),
            ("000099999999999999999999", false), // a string in YAML 1.2
            ("99_999_999_999_999_999_999", false),
            ("1e30", false),
            ("0x", false),
            ("-", false),
        ];
        for (plain, want) in cases {
            assert_eq!(integer_beyond_range(plain), want, "{plain}");
        }
        let err = read("spec:\n  failover:\n    maxMissedKeys: 99999999999999999999\n").expect_err("beyond range");
        assert_eq!((err.line, err.column), (3, 20));
        assert!(err.message.starts_with("spec.failover.maxMissedKeys: the number is beyond the largest integer Kubernetes stores"), "{err:?}");
    }

    #[test]
    fn the_serde_reader_reads_yaml_1_2_and_keeps_what_the_checks_name() {
        use serde_json::json;
        let cases = [
            ("a: yes", json!({"a": "yes"})),
            ("a: on", json!({"a": "on"})),
            ("a: 0755", json!({"a": "0755"})),
            ("a: 1_000", json!({"a": "1_000"})),
            ("a: 0x1F", json!({"a": 31})),
            ("a: 9223372036854775808", json!({"a": 9_223_372_036_854_775_808_u64})),
            ("a: .nan", json!({"a": null})),
            ("a: 1\na: 2", json!({"a": 2})),
            ("b: &b {x: 1}\nc:\n  <<: *b", json!({"b": {"x": 1}, "c": {"<<": {"x": 1}}})),
            ("~: d", json!({"~": "d"})),
        ];
        for (text, want) in cases {
            let got: Vec<serde_json::Value> = serde_saphyr::from_multiple_with_options(text, serde_options()).expect(text);
            assert_eq!(got, vec![want], "{text}");
        }
        assert!(serde_saphyr::from_multiple_with_options::<serde_json::Value>("a: !secret x", serde_options()).is_err());
    }

    #[test]
    fn a_syntax_error_names_its_place_and_the_flow_collection_it_is_in() {
        let err = read("spec:\n  primary: [global-a\n  platform: {domain: x}\n").expect_err("unclosed [");
        assert_eq!((err.line, err.column), (3, 11), "{err:?}");
        assert!(err.message.ends_with(", in the flow sequence opened at line 2, column 12"), "{err:?}");
    }

    #[test]
    fn a_tab_continuing_a_plain_scalar_is_named_at_its_line() {
        let err = read("spec:\n  platform:\n    domain: x.example.com\n\tttl: 30\n").expect_err("a tab");
        assert_eq!((err.line, err.column), (4, 1), "{err:?}");
        assert!(err.message.starts_with("line 4 indents with a tab character"), "{err:?}");
    }

    #[test]
    fn a_tab_is_named() {
        let text = "a:\n\tb: 1\n";
        assert!(name_the_tab(text, 2, "found a tab").starts_with("line 2 indents with a tab character"));
        assert_eq!(name_the_tab(text, 1, "other"), "other");
    }
}
