//! YAML read as Kubernetes reads it. kubectl and Argo CD parse manifests with a YAML 1.1
//! library that keeps the last of duplicate keys without a word and reads unquoted `on`, `no`,
//! `y` or `0755` as booleans and octal numbers; `drctl validate` reads YAML 1.2. This pass finds
//! every place where the two readings differ, or where one silently drops a line, so validate
//! refuses what kubectl would read differently instead of agreeing with the wrong reading.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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
/// errors of duplicate keys and YAML 1.1 traps. A text the parser refuses is left to the caller's
/// parser, except an alias bomb, reported here with the alias's line.
pub fn read(text: &str) -> Result<Vec<Vec<FieldError>>, Unreadable> {
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let mut errs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // Per anchor id: how many nodes it expands to; per open container: nodes so far.
    let mut anchors: HashMap<usize, usize> = HashMap::new();
    let mut open: Vec<(usize, usize)> = Vec::new();
    let (mut expanded, mut events, mut empty_doc) = (0usize, 0usize, false);
    loop {
        let Ok((event, mark)) = parser.next_token() else { return Ok(docs) };
        events += 1;
        match event {
            Event::StreamEnd => return Ok(docs),
            Event::DocumentStart => {
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
                if stack.is_empty() && style == TScalarStyle::Plain && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    empty_doc = true;
                }
                if style == TScalarStyle::Plain {
                    if let Some(reading) = yaml11_trap(&value) {
                        let path = if is_key(&stack) { child_path(&stack, &value) } else { path_of(&stack) };
                        errs.push(FieldError::new(path, trap_message(&value, &reading, mark.line())));
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
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                let is_map = matches!(event, Event::MappingStart(..));
                node(&mut stack, &mut open, Node::Container, mark, &mut errs);
                open.push((anchor, 1));
                expanded += 1;
                stack.push(if is_map { Frame::Map { keys: HashMap::new(), key: None } } else { Frame::Seq { items: 0 } });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
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
            Event::StreamStart | Event::Nothing => {}
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
pub fn name_the_tab(text: &str, line: usize, message: &str) -> String {
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
    fn a_tab_is_named() {
        let text = "a:\n\tb: 1\n";
        assert!(name_the_tab(text, 2, "found a tab").starts_with("line 2 indents with a tab character"));
        assert_eq!(name_the_tab(text, 1, "other"), "other");
    }
}
