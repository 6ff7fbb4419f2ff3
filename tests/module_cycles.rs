//! No two files of a crate's `src/` (the product's, and each of `crates/*`) import each other, directly or through others: every `crate::`,
//! `super::` and `self::` path outside comments and `#[cfg(test)] mod tests` is resolved to
//! the file of the longest module it names, and the strongly connected components of that
//! graph must be single files. Pure Rust, no tool: `cargo test --test module_cycles`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; `src/lib.rs` → `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The file's code without comments and without its unit-test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod tests")) {
            break;
        }
        let t = t.split("//").next().unwrap_or_default();
        out.push_str(t);
        out.push('\n');
    }
    out
}

/// Every path starting at `crate::`, `super::` or `self::`, with `{a, b::c}` groups expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        if boundary && (rest.starts_with("crate::") || rest.starts_with("super::") || rest.starts_with("self::")) {
            let (tree, end) = parse_tree(&bytes, i);
            found.extend(tree);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

/// Parses `seg::seg::{tree, tree}` from `i`; returns the expanded paths and where it ended.
fn parse_tree(b: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
            i += 1;
        }
        if i > start {
            prefix.push(b[start..i].iter().collect::<String>());
        }
        if i + 1 < b.len() && b[i] == ':' && b[i + 1] == ':' {
            i += 2;
            while i < b.len() && b[i].is_whitespace() {
                i += 1;
            }
            if i < b.len() && b[i] == '{' {
                i += 1;
                let mut all = Vec::new();
                loop {
                    while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == '}' {
                        return (all, i + 1);
                    }
                    let (subs, end) = parse_tree(b, i);
                    for s in subs {
                        let mut p = prefix.clone();
                        p.extend(s.into_iter().filter(|seg| seg != "self"));
                        all.push(p);
                    }
                    // Skip an `as name` or anything else up to the next item.
                    i = end;
                    while i < b.len() && b[i] != ',' && b[i] != '}' {
                        i += 1;
                    }
                }
            }
            continue;
        }
        return (vec![prefix], i);
    }
}

/// The file a path lands in: its longest prefix that is a module of the crate.
fn resolve(path: &[String], here: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<PathBuf> {
    let mut abs: Vec<String> = Vec::new();
    let mut segs = path.iter().peekable();
    match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segs.next();
        }
        Some("self") | Some("super") => {
            // From the file's own module (`a/mod.rs` and `a.rs` are both `a`): `super` is its parent.
            abs = here.to_vec();
            while let Some(s) = segs.peek() {
                match s.as_str() {
                    "self" => {}
                    "super" => {
                        abs.pop();
                    }
                    _ => break,
                }
                segs.next();
            }
        }
        _ => return None,
    }
    abs.extend(segs.cloned());
    (0..=abs.len()).rev().find_map(|n| modules.get(&abs[..n]).cloned())
}

/// Tarjan's strongly connected components.
fn components(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'g> {
        g: &'g BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'g PathBuf, usize>,
        low: BTreeMap<&'g PathBuf, usize>,
        stack: Vec<&'g PathBuf>,
        on: BTreeSet<&'g PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g PathBuf) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("low");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("low");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.push(w.clone());
                if w == v {
                    break;
                }
            }
            t.out.push(c);
        }
    }
    let mut t = T { g: graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The cycles among the modules of one crate's `src/`, each as "a, b: a -> b; b -> a".
fn cycles_in(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files.iter().filter(|f| !f.ends_with("main.rs")).map(|f| (module_of(src, f), f.clone())).collect();
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in &files {
        let here = module_of(src, f);
        let text = std::fs::read_to_string(f).expect("read");
        let edges = graph.entry(f.clone()).or_default();
        for p in paths(&code(&text)) {
            if let Some(to) = resolve(&p, &here, &modules) {
                if &to != f {
                    edges.insert(to);
                }
            }
        }
    }
    let name = |p: &PathBuf| module_of(src, p).join("::");
    let mut cycles = Vec::new();
    for c in components(&graph).into_iter().filter(|c| c.len() > 1) {
        let mut names: Vec<String> = c.iter().map(name).collect();
        names.sort();
        let ties: Vec<String> = c.iter().flat_map(|a| graph[a].iter().filter(|b| c.contains(b)).map(move |b| format!("{} -> {}", name(a), name(b)))).collect();
        cycles.push(format!("{}: {}", names.join(", "), ties.join("; ")));
    }
    cycles
}

#[test]
fn src_modules_import_each_other_in_one_direction_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The product crate and every crate of the workspace (crates/*/src).
    let mut srcs = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates")).expect("read crates/").flatten() {
        if entry.path().join("src").is_dir() {
            srcs.push(entry.path().join("src"));
        }
    }
    assert!(srcs.len() >= 3, "the product, the test bed and the lab: {srcs:?}");
    let mut cycles = Vec::new();
    for src in &srcs {
        cycles.extend(cycles_in(src).into_iter().map(|c| format!("{}: {c}", src.display())));
    }
    assert!(cycles.is_empty(), "modules that import each other (make one side take what it needs from a third module):\n{}", cycles.join("\n"));
}

#[test]
fn paths_resolve_to_the_longest_module_they_name() {
    let m = |s: &str| s.split("::").filter(|x| !x.is_empty()).map(str::to_string).collect::<Vec<_>>();
    let modules: BTreeMap<Vec<String>, PathBuf> =
        [("", "lib.rs"), ("controller", "controller/mod.rs"), ("controller::peer", "controller/peer.rs"), ("decide::plan", "decide/plan.rs")]
            .into_iter()
            .map(|(k, v)| (m(k), PathBuf::from(v)))
            .collect();
    let to = |code: &str, here: &str| -> BTreeSet<String> {
        paths(code).iter().filter_map(|p| resolve(p, &m(here), &modules)).map(|p| p.display().to_string()).collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        to("use crate::controller::{peer::{self, read}, sync};", "failover::runbook"),
        set(&["controller/peer.rs", "controller/mod.rs"]),
        "sync is no file: an item of mod.rs"
    );
    assert_eq!(
        to("use crate::controller::peer::{self, read};", "failover::runbook"),
        set(&["controller/peer.rs"]),
        "a group of one module's items lands there only"
    );
    assert_eq!(
        to(&code("let x = super::plan::plan(&o); // crate::controller::x"), "decide::transition"),
        set(&["decide/plan.rs"]),
        "super of a file is its parent; comments are not code"
    );
}
