//! The node proxy's modules depend on each other without loops, so each connection path can be read (and
//! changed) from its entry point down. A module may use its own submodules and its ancestors' items (that is
//! nesting, not a loop); between any other two modules, `crate::` and `super::` paths must form a DAG.
//!
//! `context` is the composition root: it names the state each subsystem keeps (the tunnel pool, HTTP clients,
//! connection limits) and is handed to every connection path; it is left out of the graph so that the paths
//! can take it as a parameter. Test code is left out too: `tests.rs` files and the inline `#[cfg(test)] mod`
//! that ends a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`tcp::inbound`; the crate root is empty) -> its source text without comments.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read proxy/src") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.file_name().is_some_and(|n| n == "main.rs") {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read module");
            out.insert(parts.join("::"), strip_comments(without_tests(&text)));
        }
    }
    out
}

/// The text before an inline test module (by convention the last item of a file).
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    }
}

fn strip_comments(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default()
}

fn join(base: &str, rest: &str) -> String {
    if base.is_empty() {
        rest.to_string()
    } else {
        format!("{base}::{rest}")
    }
}

fn is_ancestor(ancestor: &str, module: &str) -> bool {
    ancestor.is_empty() || module.starts_with(&format!("{ancestor}::"))
}

/// `pub use child::{A, B}` in a module: item name -> the child module that defines it.
fn re_exports(module: &str, text: &str, known: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in text.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else { continue };
        let rest = rest.trim_start_matches("self::");
        let Some((child, items)) = rest.split_once("::") else { continue };
        let child_module = join(module, child);
        if !known.contains_key(&child_module) {
            continue;
        }
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.trim().rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                out.insert(name.to_string(), child_module.clone());
            }
        }
    }
    out
}

/// The module a path like `tcp::inbound::serve_stream` or `tunnel::PoolKey` lives in.
fn resolve(
    path: &[&str],
    known: &BTreeMap<String, String>,
    exports: &BTreeMap<String, BTreeMap<String, String>>,
) -> String {
    let mut module = String::new();
    for segment in path {
        let next = join(&module, segment);
        if known.contains_key(&next) {
            module = next;
            continue;
        }
        if let Some(child) = exports.get(&module).and_then(|e| e.get(*segment)) {
            return child.clone();
        }
        break;
    }
    module
}

/// Every `crate::a::b` and `super::a::b` path in `text`, as segments from the crate root, including the items of
/// a braced group (`crate::x::{a, b::c}`).
fn paths(module: &str, text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent(module))] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let boundary_ok = at == 0 || !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
            rest = &rest[at + prefix.len()..];
            if !boundary_ok {
                continue;
            }
            let mut base = base.clone();
            let mut tail = rest;
            // `super::super::` climbs further.
            while let Some(t) = tail.strip_prefix("super::") {
                base = parent(&base);
                tail = t;
            }
            let end = tail.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
            let head = &tail[..end];
            let mut segments: Vec<String> =
                if base.is_empty() { Vec::new() } else { base.split("::").map(String::from).collect() };
            segments.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
            if tail[end..].starts_with('{') && head.ends_with("::") {
                let group_end = tail[end..].find('}').map(|i| end + i).unwrap_or(tail.len());
                for item in tail[end + 1..group_end].split(',') {
                    let mut full = segments.clone();
                    full.extend(item.trim().split("::").filter(|s| !s.is_empty() && *s != "self").map(String::from));
                    out.push(full);
                }
            } else {
                out.push(segments);
            }
        }
    }
    out
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let exports: BTreeMap<String, BTreeMap<String, String>> =
        known.iter().map(|(m, text)| (m.clone(), re_exports(m, text, &known))).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &known {
        let targets = edges.entry(module.clone()).or_default();
        for path in paths(module, text) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let target = resolve(&path, &known, &exports);
            if target == *module || is_ancestor(&target, module) || is_ancestor(module, &target) {
                continue;
            }
            if target == "context" || module == "context" {
                continue;
            }
            targets.insert(target);
        }
    }
    edges
}

/// A cycle, if any, as the modules along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, edges, &mut marks, &mut stack) {
            return Some(cycle);
        }
    }
    None
}

fn proxy_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_proxy_modules_form_no_cycle() {
    let edges = graph(&proxy_src());
    assert!(edges.contains_key("tcp::outbound") && edges.contains_key("tunnel::server"), "modules were found");
    // `tcp::connect` opens an outbound connection's upstream where `plan` says.
    assert!(edges["tcp::connect"].contains("plan"), "dependencies were found: {:?}", edges["tcp::connect"]);
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle between proxy modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let src = dir.path();
    std::fs::create_dir(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "mod inner;\npub use inner::Thing;\n").expect("write");
    std::fs::write(src.join("a/inner.rs"), "use crate::b::other;\npub struct Thing;\n").expect("write");
    std::fs::write(src.join("b.rs"), "use crate::a::Thing; // crate::c::nothing\npub fn other() {}\n").expect("write");
    let edges = graph(src);
    assert_eq!(edges["b"], BTreeSet::from(["a::inner".to_string()]), "re-exports resolve; comments are ignored");
    let cycle = find_cycle(&edges).expect("a -> b -> a is a cycle");
    assert!(cycle.contains(&"b".to_string()) && cycle.contains(&"a::inner".to_string()), "{cycle:?}");
    std::fs::write(src.join("b.rs"), "pub fn other() {}\n#[cfg(test)]\nmod tests {\n    use crate::a::Thing;\n}\n")
        .expect("write");
    assert_eq!(find_cycle(&graph(src)), None, "a test module is not a dependency");
}
