//! Label selectors in kubectl syntax, parsed as the apiserver parses `?labelSelector=`, so a
//! typo in `spec.restarts[].labelSelector` is found by `drctl validate`, not by the Restart step
//! after DNS has already moved.

/// Why a selector does not parse; `at` is the 0-based character offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {at}: {what}")]
pub struct SelectorError {
    pub at: usize,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Comma,
    Open,
    Close,
    Op(&'static str),
}

fn tokens(s: &str) -> Result<Vec<(usize, Token)>, SelectorError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let (tok, len) = match c {
            ' ' | '\t' => {
                i += 1;
                continue;
            }
            ',' => (Token::Comma, 1),
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            _ if two == "==" => (Token::Op("=="), 2),
            _ if two == "!=" => (Token::Op("!="), 2),
            '=' => (Token::Op("="), 1),
            '!' => (Token::Op("!"), 1),
            '>' => (Token::Op(">"), 1),
            '<' => (Token::Op("<"), 1),
            _ => {
                let end = (i..chars.len()).find(|&j| " \t,()=!<>".contains(chars[j])).unwrap_or(chars.len());
                (Token::Word(chars[i..end].iter().collect()), end - i)
            }
        };
        out.push((i, tok));
        i += len;
    }
    Ok(out)
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_key(at: usize, key: &str) -> Result<(), SelectorError> {
    let bad = |what: String| Err(SelectorError { at, what });
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                    && b[0] != b'-'
                    && b[b.len() - 1] != b'-'
            });
        if !ok {
            return bad(format!("label key prefix {p:?} is not a DNS subdomain (e.g. example.com)"));
        }
    }
    if !is_name(name) {
        return bad(format!("label key {key:?} is not valid: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"));
    }
    Ok(())
}

fn check_value(at: usize, v: &str) -> Result<(), SelectorError> {
    if v.is_empty() || is_name(v) {
        Ok(())
    } else {
        Err(SelectorError { at, what: format!("label value {v:?} is not valid: at most 63 letters, digits, '-', '_' or '.'") })
    }
}

/// Parses a selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k>1`, `k<1`, `k in (a,b)`,
/// `k notin (a,b)`, joined by commas. Returns the number of requirements.
pub fn parse(s: &str) -> Result<usize, SelectorError> {
    let toks = tokens(s)?;
    let end = s.chars().count();
    let mut it = toks.into_iter().peekable();
    let mut n = 0;
    let expect_word = |t: Option<(usize, Token)>, what: &str| match t {
        Some((at, Token::Word(w))) => Ok((at, w)),
        Some((at, other)) => Err(SelectorError { at, what: format!("expected {what}, found {other:?}") }),
        None => Err(SelectorError { at: end, what: format!("expected {what}, found the end") }),
    };
    loop {
        let negated = matches!(it.peek(), Some((_, Token::Op("!"))));
        if negated {
            it.next();
        }
        let (at, key) = expect_word(it.next(), "a label key")?;
        check_key(at, &key)?;
        n += 1;
        match it.next() {
            None => return Ok(n),
            Some((_, Token::Comma)) => continue,
            Some((at, _)) if negated => return Err(SelectorError { at, what: "`!key` takes no operator or value".into() }),
            Some((_, Token::Op(op @ ("=" | "==" | "!=" | ">" | "<")))) => {
                let (at, v) = match it.peek() {
                    Some((_, Token::Word(_))) => expect_word(it.next(), "a value")?,
                    // `k=` (an empty value) is allowed for equality, as by the apiserver.
                    _ if matches!(op, "=" | "==" | "!=") => (at, String::new()),
                    _ => expect_word(it.next(), "an integer")?,
                };
                if matches!(op, ">" | "<") && v.parse::<i64>().is_err() {
                    return Err(SelectorError { at, what: format!("{op} needs an integer, not {v:?}") });
                }
                check_value(at, &v)?;
            }
            Some((at, Token::Word(w))) if w == "in" || w == "notin" => {
                match it.next() {
                    Some((_, Token::Open)) => {}
                    _ => return Err(SelectorError { at, what: format!("`{w}` needs a parenthesised list, e.g. {key} {w} (a,b)") }),
                }
                loop {
                    match it.next() {
                        Some((at, Token::Word(v))) => {
                            check_value(at, &v)?;
                            match it.next() {
                                Some((_, Token::Comma)) => continue,
                                Some((_, Token::Close)) => break,
                                Some((at, t)) => return Err(SelectorError { at, what: format!("expected ',' or ')', found {t:?}") }),
                                None => return Err(SelectorError { at: end, what: "the list is not closed with ')'".into() }),
                            }
                        }
                        Some((_, Token::Close)) => break,
                        Some((at, t)) => return Err(SelectorError { at, what: format!("expected a value, found {t:?}") }),
                        None => return Err(SelectorError { at: end, what: "the list is not closed with ')'".into() }),
                    }
                }
            }
            Some((at, t)) => return Err(SelectorError { at, what: format!("expected an operator (=, ==, !=, in, notin) or ',', found {t:?}") }),
        }
        match it.next() {
            None => return Ok(n),
            Some((_, Token::Comma)) => {}
            Some((at, t)) => return Err(SelectorError { at, what: format!("expected ',' between requirements, found {t:?}") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_apiserver_accepts_parses() {
        for (s, n) in [
            ("app=vmselect", 1),
            ("app==vmselect", 1),
            ("app!=x", 1),
            ("service_name in (vmselect,vminsert)", 1),
            ("service_name in (vmselect, vminsert), tier notin (db)", 2),
            ("app.kubernetes.io/name=web,!canary", 2),
            ("app", 1),
            ("app=", 1),
            ("replicas>1", 1),
        ] {
            assert_eq!(parse(s), Ok(n), "{s}");
        }
    }

    #[test]
    fn syntax_errors_are_found_with_their_position() {
        for (s, at) in [
            ("app in vmselect", 4),
            ("app in (vmselect", 16),
            ("app=vm select", 7),
            ("app=(x)", 4),
            ("=x", 0),
            ("app=x,", 6),
            ("Bad_Prefix.io/app=x", 0),
            ("app=-x", 4),
            ("!app=x", 4),
            ("replicas>many", 9),
        ] {
            let e = parse(s).expect_err(s);
            assert_eq!(e.at, at, "{s}: {e}");
        }
    }
}
