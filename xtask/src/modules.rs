//! Import cycles between the files of a crate: which file names which other file's
//! module (`use crate::a::b`, `crate::a::b::item`, `super::item`), outside comments and
//! test modules, and the groups of files that reach each other through such names (the
//! strongly connected components of that graph). A group of two is a module and the
//! file it leans on; a longer one is a knot that no one file can be read without.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the crate could not be read.
#[derive(Debug, Error)]
pub enum ModulesError {
    #[error("reading {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{0} has neither lib.rs nor main.rs")]
    NoRoot(PathBuf),
}

/// A crate's files by module path (`""` is the crate root; `postgres::replication`)
/// and the modules each one names.
#[derive(Debug, Default)]
pub struct Graph {
    /// Module path → the file it lives in (relative to the source directory).
    pub files: BTreeMap<String, PathBuf>,
    /// Module path → the modules it names.
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

/// The module path of `file` (relative to `src`): `lib.rs` is the root, `a/mod.rs` is
/// `a`, `a/b.rs` is `a::b`.
fn module_of(file: &Path) -> String {
    let mut parts: Vec<String> = file
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        match last.as_str() {
            "lib.rs" | "main.rs" | "mod.rs" => {}
            name => parts.push(name.trim_end_matches(".rs").to_string()),
        }
    }
    parts.join("::")
}

/// The code of a file without comments and without its test module (what follows
/// `#[cfg(test)]`).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths named after `crate::` (or `super::`, resolved against `module`),
/// `use` groups `{a, b::c}` expanded one level, each as a list of segments.
fn paths_named(code: &str, module: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent_of(module))] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let segs = segments(item.trim());
                    if !segs.is_empty() {
                        found.push([base.clone(), segs].concat());
                    }
                }
            } else {
                let segs = segments(rest);
                found.push([base.clone(), segs].concat());
            }
        }
    }
    found
}

/// The `a::b::c` at the start of `s`, stopping at anything but identifiers and `::`
/// (a `{` group after it is left to the caller's next round).
fn segments(s: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let n = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if n == 0 {
            break;
        }
        segs.push(rest[..n].to_string());
        rest = &rest[n..];
        match rest.strip_prefix("::") {
            Some(r) if r.starts_with(is_ident) => rest = r,
            _ => break,
        }
    }
    segs
}

/// The module `super` means in `module` (for `a/mod.rs`, module `a`, the root).
fn parent_of(module: &str) -> Vec<String> {
    let mut parts: Vec<String> = module
        .split("::")
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    parts.pop();
    parts
}

/// Reads every `.rs` file under `src` and the modules each one names (the longest
/// prefix of a named path that is a file of the crate).
pub fn read_crate(src: &Path) -> Result<Graph, ModulesError> {
    if !src.join("lib.rs").exists() && !src.join("main.rs").exists() {
        return Err(ModulesError::NoRoot(src.to_path_buf()));
    }
    let mut graph = Graph::default();
    let mut texts = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ModulesError::Read {
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(src).unwrap_or(&path).to_path_buf();
                // The binary's entry point is a crate of its own; the library is the
                // crate root.
                if rel == Path::new("main.rs") && src.join("lib.rs").exists() {
                    continue;
                }
                let text = std::fs::read_to_string(&path).map_err(|source| ModulesError::Read {
                    path: path.clone(),
                    source,
                })?;
                let module = module_of(&rel);
                graph.files.insert(module.clone(), rel);
                texts.push((module, text));
            }
        }
    }
    for (module, text) in texts {
        let mut named = BTreeSet::new();
        for path in paths_named(&code_of(&text), &module) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| graph.files.contains_key(m));
            if let Some(t) = target.filter(|t| *t != module && !t.is_empty()) {
                named.insert(t);
            }
        }
        graph.edges.insert(module, named);
    }
    Ok(graph)
}

impl Graph {
    /// The groups of modules that reach each other (more than one module each), the
    /// largest first.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        // Tarjan's algorithm, iterative over the small graphs of one crate.
        struct State<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            on_stack: BTreeSet<&'a str>,
            stack: Vec<&'a str>,
            next: usize,
            groups: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a str) {
            s.index.insert(v, s.next);
            s.low.insert(v, s.next);
            s.next += 1;
            s.stack.push(v);
            s.on_stack.insert(v);
            let graph = s.graph;
            for w in graph.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
            if s.low[v] == s.index[v] {
                let mut group = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    s.groups.push(group);
                }
            }
        }
        let mut s = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            on_stack: BTreeSet::new(),
            stack: Vec::new(),
            next: 0,
            groups: Vec::new(),
        };
        for v in self.files.keys() {
            if !s.index.contains_key(v.as_str()) {
                visit(&mut s, v);
            }
        }
        s.groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
        s.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let p = dir.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn names_in_code_count_and_comments_and_tests_do_not() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n",
        );
        write(dir.path(), "a.rs", "use crate::b::Thing;\n");
        write(
            dir.path(),
            "b.rs",
            "use crate::{c, d::Other};\n/// see [`crate::a`]\n",
        );
        write(
            dir.path(),
            "c.rs",
            "fn f() { crate::a::g(); }\n#[cfg(test)]\nmod t { use crate::d; }\n",
        );
        write(
            dir.path(),
            "d/mod.rs",
            "pub mod e;\nuse super::c; // crate::a\n",
        );
        write(dir.path(), "d/e.rs", "use super::Other;\n");
        let g = read_crate(dir.path()).unwrap();
        assert_eq!(
            g.edges["b"].iter().collect::<Vec<_>>(),
            ["c", "d"],
            "a use group, and a doc comment that does not count"
        );
        assert_eq!(g.edges["d"].iter().collect::<Vec<_>>(), ["c"]);
        assert_eq!(g.edges["d::e"].iter().collect::<Vec<_>>(), ["d"]);
        assert_eq!(
            g.cycles(),
            [vec!["a".to_string(), "b".into(), "c".into(), "d".into()]]
        );
    }
}
