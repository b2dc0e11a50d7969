//! Layers that point one way: the file-level module dependency graph of
//! `src/` has no cycles, and a top-level module imports only from its own
//! layer or lower ones ([`LAYERS`]).
//!
//! The graph is built from the source text, without the compiler: every
//! `crate::...`, `super::...`, `self::...` (and `$crate::...`) path in
//! non-test code, in `use` items (grouped forms included) and anywhere else
//! (types, calls, macro invocations in function bodies), is resolved to the
//! deepest module it names, following `use` and `pub use` bindings of the
//! modules it passes through (so `crate::Result` names `src/error.rs`, not
//! `src/lib.rs`, which re-exports it). In `src/main.rs`, `mlc::...` paths
//! name the library. Bare paths (`conv::prepack` after `mod conv;`, or a
//! name a `use` brought in) add no edge of their own: the `use` that brought
//! the name in already did. Items under `#[cfg(test)]` (test modules, test
//! helpers, test-only files such as `src/transform/testing.rs`) are
//! ignored: test code may use anything.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// The layers of the top-level modules, lowest first. A module may import
/// only from modules of its own layer or a lower one. `lib` is
/// `src/lib.rs` (it may re-export anything) and `main` is `src/main.rs`.
/// A top-level module missing here fails the test: place new modules.
const LAYERS: &[(u32, &[&str])] = &[
    (0, &["error", "limits", "fsutil", "rng"]),
    (1, &["ir"]),
    (2, &["kernels"]),
    (3, &["interp", "runtime", "inputs"]),
    (4, &["transform", "quant"]),
    (5, &["formats"]),
    (
        6,
        &[
            "compress",
            "distill",
            "inspect",
            "probe",
            "provenance",
            "report",
            "measure",
            "target",
            "tune",
        ],
    ),
    (7, &["api"]),
    (8, &["main", "lib"]),
];

/// The library's crate name, as `src/main.rs` spells paths into it.
const LIB_CRATE: &str = "mlc";

// ---------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// A string, character or number literal, or a lifetime.
    Lit,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Splits Rust source into tokens; comments (doc comments included) and the
/// contents of literals are dropped.
fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let n = c.len();
    let at = |k: usize| -> char { c.get(k).copied().unwrap_or('\0') };
    while i < n {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_start(&c, i) {
            // r"..", r#".."#, br"..", cr#".."#: no escapes inside.
            let hashes = len - 2 - usize::from(c[i] != 'r');
            let start_line = line;
            i += len;
            loop {
                if i >= n {
                    break;
                }
                if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                if c[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            out.push(Token {
                tok: Tok::Lit,
                line: start_line,
            });
        } else if ch == '"' || ((ch == 'b' || ch == 'c') && at(i + 1) == '"') {
            let start_line = line;
            i += if ch == '"' { 1 } else { 2 };
            while i < n && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < n && c[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Token {
                tok: Tok::Lit,
                line: start_line,
            });
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            // A character literal, or a lifetime / label.
            let q = if ch == 'b' { i + 1 } else { i };
            if at(q + 1) == '\\' {
                // Past the backslash and the escaped character.
                i = q + 3;
                while i < n && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(q + 2) == '\'' {
                i = q + 3;
            } else {
                i = q + 1;
                while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
            out.push(Token {
                tok: Tok::Lit,
                line,
            });
        } else if ch.is_ascii_digit() {
            while i < n
                && (c[i].is_alphanumeric()
                    || c[i] == '_'
                    || (c[i] == '.' && at(i + 1).is_ascii_digit()))
            {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Lit,
                line,
            });
        } else if ch.is_alphabetic() || ch == '_' {
            if ch == 'r' && at(i + 1) == '#' && (at(i + 2).is_alphabetic() || at(i + 2) == '_') {
                i += 2;
            }
            let start = i;
            while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(c[start..i].iter().collect()),
                line,
            });
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

/// Length of the opening of a raw string literal at `i` (`r"`, `r#"`,
/// `br##"`, ...), if one starts there.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let mut k = i;
    if matches!(c.get(k), Some('b') | Some('c')) {
        k += 1;
    }
    if c.get(k) != Some(&'r') {
        return None;
    }
    // Not the tail of an identifier such as `for` or `br` in `abr"`.
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    k += 1;
    while c.get(k) == Some(&'#') {
        k += 1;
    }
    (c.get(k) == Some(&'"')).then_some(k + 1 - i)
}

// ---------------------------------------------------------------------------
// Modules, bindings and paths

/// Which crate a module belongs to: the library (`src/lib.rs`) or the
/// binary (`src/main.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrateKind {
    Lib,
    Bin,
}

#[derive(Debug)]
struct Module {
    krate: CrateKind,
    /// Names from the crate root (`["kernels", "cpu", "conv"]`).
    path: Vec<String>,
    /// Index into `Crate::files`.
    file: usize,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// Names of items defined here (functions, types, constants, macros).
    items: BTreeSet<String>,
    /// Names brought in by `use` (any visibility), with the path they name.
    bindings: BTreeMap<String, UsePath>,
    /// Glob imports (`use a::b::*`).
    globs: Vec<UsePath>,
}

/// A path as written (segments include `crate`, `super`, `self`, `$crate`),
/// with the module it is written in.
#[derive(Clone, Debug)]
struct UsePath {
    module: usize,
    segs: Vec<String>,
}

/// A counted path occurrence in non-test code.
#[derive(Clone, Debug)]
struct Occurrence {
    path: UsePath,
    line: usize,
}

#[derive(Debug)]
struct File {
    /// Relative to the crate directory (`src/kernels/cpu/conv.rs`).
    rel: String,
    lines: Vec<String>,
    /// The module the file defines (set once it is declared).
    module: Option<usize>,
    occurrences: Vec<Occurrence>,
}

struct Crate {
    files: Vec<File>,
    /// `(module, name)` lookups under way, so that cyclic globs end.
    resolving: RefCell<HashSet<(usize, String)>>,
    modules: Vec<Module>,
    lib_root: Option<usize>,
    bin_root: Option<usize>,
    /// Files declared only by `#[cfg(test)] mod x;`.
    test_only: BTreeSet<String>,
    /// Problems found while reading (undeclared files, missing modules).
    problems: Vec<String>,
}

/// One file-level dependency: `from` uses `to` at `line` through `path`.
#[derive(Clone, Debug)]
struct Edge {
    from: usize,
    to: usize,
    line: usize,
    path: String,
}

fn is_ident(t: Option<&Token>, s: &str) -> bool {
    matches!(t, Some(Token { tok: Tok::Ident(x), .. }) if x == s)
}

fn is_punct(t: Option<&Token>, p: char) -> bool {
    matches!(t, Some(Token { tok: Tok::Punct(x), .. }) if *x == p)
}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token {
            tok: Tok::Ident(x), ..
        }) => Some(x),
        _ => None,
    }
}

/// Index just past the bracket group opening at `i` (`(`, `[` or `{`).
fn skip_group(toks: &[Token], i: usize) -> usize {
    let mut depth = 0i32;
    let mut k = i;
    while k < toks.len() {
        match toks[k].tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
        k += 1;
    }
    toks.len()
}

/// Whether a `cfg` predicate (the tokens inside `cfg(...)`) holds only in
/// test builds: `test`, or `all(..)` with such a predicate.
fn cfg_implies_test(toks: &[Token]) -> bool {
    match toks {
        [Token {
            tok: Tok::Ident(t), ..
        }] => t == "test",
        [Token {
            tok: Tok::Ident(all),
            ..
        }, rest @ ..]
            if all == "all" =>
        {
            // Split the arguments of all(..) at top-level commas.
            let inner = &rest[1..rest.len().saturating_sub(1)];
            let mut depth = 0;
            let mut start = 0;
            for (k, t) in inner.iter().enumerate() {
                match t.tok {
                    Tok::Punct('(' | '[') => depth += 1,
                    Tok::Punct(')' | ']') => depth -= 1,
                    Tok::Punct(',') if depth == 0 => {
                        if cfg_implies_test(&inner[start..k]) {
                            return true;
                        }
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            cfg_implies_test(&inner[start..])
        }
        _ => false,
    }
}

/// Index just past the item (or statement, field, match arm) starting at
/// `i`, which follows a `#[cfg(test)]`.
fn skip_item(toks: &[Token], mut i: usize) -> usize {
    // Further attributes.
    while is_punct(toks.get(i), '#') && is_punct(toks.get(i + 1), '[') {
        i = skip_group(toks, i + 1);
    }
    // The keyword that says how the item ends.
    let mut k = i;
    loop {
        match ident(toks.get(k)) {
            Some("pub") => {
                k += 1;
                if is_punct(toks.get(k), '(') {
                    k = skip_group(toks, k);
                }
            }
            Some("unsafe" | "async" | "extern" | "default") => k += 1,
            Some("const") if ident(toks.get(k + 1)).is_some_and(|s| s == "fn" || s == "unsafe") => {
                k += 1
            }
            _ => break,
        }
        if matches!(toks.get(k).map(|t| &t.tok), Some(Tok::Lit)) {
            k += 1; // extern "C"
        }
    }
    let braced = match toks.get(k).map(|t| &t.tok) {
        Some(Tok::Ident(kw)) => matches!(
            kw.as_str(),
            "fn" | "mod"
                | "impl"
                | "trait"
                | "struct"
                | "enum"
                | "union"
                | "macro_rules"
                | "if"
                | "match"
                | "for"
                | "while"
                | "loop"
        ),
        Some(Tok::Punct('{')) => true,
        _ => false,
    };
    let mut k = i;
    while k < toks.len() {
        match toks[k].tok {
            Tok::Punct('{') if braced => return skip_group(toks, k),
            Tok::Punct('(' | '[' | '{') => k = skip_group(toks, k),
            Tok::Punct(';' | ',') => return k + 1,
            Tok::Punct(')' | ']' | '}') => return k,
            _ => k += 1,
        }
    }
    k
}

/// Parses a `use` tree starting at `i` (just after `use`); appends each
/// leaf as `(segments, bound name or None for a glob)`. Returns the index
/// after the tree.
fn parse_use_tree(
    toks: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, usize)>,
) -> usize {
    let mut segs = prefix.to_vec();
    if matches!(toks.get(i).map(|t| &t.tok), Some(Tok::PathSep)) {
        i += 1; // a leading `::` (an external crate)
        segs.push("::".to_string());
    }
    loop {
        let line = toks.get(i).map_or(0, |t| t.line);
        if is_punct(toks.get(i), '$') && is_ident(toks.get(i + 1), "crate") {
            segs.push("$crate".to_string());
            i += 2;
        } else if is_punct(toks.get(i), '*') {
            out.push((segs, None, line));
            return i + 1;
        } else if is_punct(toks.get(i), '{') {
            i += 1;
            while i < toks.len() && !is_punct(toks.get(i), '}') {
                i = parse_use_tree(toks, i, &segs, out);
                if is_punct(toks.get(i), ',') {
                    i += 1;
                }
            }
            return i + 1;
        } else if let Some(name) = ident(toks.get(i)) {
            segs.push(name.to_string());
            i += 1;
        } else {
            return i;
        }
        if matches!(toks.get(i).map(|t| &t.tok), Some(Tok::PathSep)) {
            i += 1;
            continue;
        }
        // A leaf: `name`, `name as alias`, or `self` in a group.
        let mut bound = segs.last().cloned().unwrap_or_default();
        if bound == "self" {
            segs.pop();
            bound = segs.last().cloned().unwrap_or_default();
        }
        if is_ident(toks.get(i), "as") {
            bound = ident(toks.get(i + 1)).unwrap_or("_").to_string();
            i += 2;
        }
        out.push((segs, Some(bound), line));
        return i;
    }
}

impl Crate {
    fn new() -> Crate {
        Crate {
            files: Vec::new(),
            resolving: RefCell::new(HashSet::new()),
            modules: Vec::new(),
            lib_root: None,
            bin_root: None,
            test_only: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    fn add_module(
        &mut self,
        krate: CrateKind,
        path: Vec<String>,
        file: usize,
        parent: Option<usize>,
    ) -> usize {
        let id = self.modules.len();
        if let Some(p) = parent {
            self.modules[p]
                .children
                .insert(path.last().cloned().unwrap_or_default(), id);
        }
        self.modules.push(Module {
            krate,
            path,
            file,
            parent,
            children: BTreeMap::new(),
            items: BTreeSet::new(),
            bindings: BTreeMap::new(),
            globs: Vec::new(),
        });
        id
    }

    /// Reads the crate from `(relative path, source)` pairs: the module
    /// tree from `src/lib.rs` and `src/main.rs` through `mod` declarations,
    /// then every file's bindings and paths.
    fn build(sources: &[(String, String)]) -> Crate {
        let mut c = Crate::new();
        let mut index = HashMap::new();
        for (rel, src) in sources {
            index.insert(rel.clone(), c.files.len());
            c.files.push(File {
                rel: rel.clone(),
                lines: src.lines().map(str::to_string).collect(),
                module: None,
                occurrences: Vec::new(),
            });
        }
        let mut queue = Vec::new();
        for (root, krate) in [
            ("src/lib.rs", CrateKind::Lib),
            ("src/main.rs", CrateKind::Bin),
        ] {
            if let Some(&f) = index.get(root) {
                let m = c.add_module(krate, Vec::new(), f, None);
                c.files[f].module = Some(m);
                match krate {
                    CrateKind::Lib => c.lib_root = Some(m),
                    CrateKind::Bin => c.bin_root = Some(m),
                }
                queue.push(f);
            }
        }
        while let Some(f) = queue.pop() {
            let toks = lex(&sources[f].1);
            let declared = c.parse_file(f, &toks);
            for (m, name, line) in declared {
                let dir = module_dir(
                    &c.files[f].rel,
                    &c.modules[m],
                    &c.modules[c.files[f].module.unwrap()],
                );
                let candidates = [format!("{dir}/{name}.rs"), format!("{dir}/{name}/mod.rs")];
                match candidates.iter().find_map(|p| index.get(p)) {
                    Some(&child) if c.files[child].module.is_none() => {
                        let mut path = c.modules[m].path.clone();
                        path.push(name);
                        let krate = c.modules[m].krate;
                        let id = c.add_module(krate, path, child, Some(m));
                        c.files[child].module = Some(id);
                        queue.push(child);
                    }
                    Some(_) => {}
                    None => c.problems.push(format!(
                        "{}:{line}: `mod {name};` has no file ({} or {})",
                        c.files[f].rel, candidates[0], candidates[1]
                    )),
                }
            }
        }
        for f in &c.files {
            if f.module.is_none() && !c.test_only.contains(&f.rel) {
                c.problems.push(format!(
                    "{} is not declared by any `mod` (not compiled, or declared in a way this check does not follow)",
                    f.rel
                ));
            }
        }
        c
    }

    /// Records the items, bindings, inline modules and counted paths of
    /// file `f`; returns its `mod name;` declarations (module, name, line).
    fn parse_file(&mut self, f: usize, toks: &[Token]) -> Vec<(usize, String, usize)> {
        let file_module = self.files[f].module.expect("parsed files have a module");
        let krate = self.modules[file_module].krate;
        let mut declared = Vec::new();
        // One entry per open `{`: the inline module it opens, if any.
        let mut scopes: Vec<Option<usize>> = Vec::new();
        let current = |scopes: &[Option<usize>]| {
            scopes
                .iter()
                .rev()
                .flatten()
                .next()
                .copied()
                .unwrap_or(file_module)
        };
        let at_module_level = |scopes: &[Option<usize>]| scopes.last().is_none_or(|s| s.is_some());
        let mut i = 0;
        while i < toks.len() {
            let t = &toks[i];
            match &t.tok {
                Tok::Punct('#') => {
                    let inner = is_punct(toks.get(i + 1), '!');
                    let open = if inner { i + 2 } else { i + 1 };
                    if !is_punct(toks.get(open), '[') {
                        i += 1;
                        continue;
                    }
                    let end = skip_group(toks, open);
                    let attr = &toks[open + 1..end - 1];
                    let test_only = is_ident(attr.first(), "cfg")
                        && is_punct(attr.get(1), '(')
                        && cfg_implies_test(&attr[2..attr.len() - 1]);
                    if test_only && inner {
                        // #![cfg(test)]: the whole file, or the inline module
                        // it opens, is test code.
                        if scopes.is_empty() {
                            return declared;
                        }
                        let mut depth = 0usize;
                        i = end;
                        while i < toks.len() {
                            match toks[i].tok {
                                Tok::Punct('{') => depth += 1,
                                Tok::Punct('}') if depth == 0 => break,
                                Tok::Punct('}') => depth -= 1,
                                _ => {}
                            }
                            i += 1;
                        }
                        continue; // at the module's `}`
                    }
                    if test_only {
                        let stop = skip_item(toks, end);
                        // Note test-only file modules, so they are not orphans.
                        let mut k = end;
                        while k < stop {
                            if is_ident(toks.get(k), "mod") {
                                if let (Some(name), true) =
                                    (ident(toks.get(k + 1)), is_punct(toks.get(k + 2), ';'))
                                {
                                    let m = current(&scopes);
                                    let dir = module_dir(
                                        &self.files[f].rel,
                                        &self.modules[m],
                                        &self.modules[file_module],
                                    );
                                    self.test_only.insert(format!("{dir}/{name}.rs"));
                                    self.test_only.insert(format!("{dir}/{name}/mod.rs"));
                                }
                                break;
                            }
                            k += 1;
                        }
                        i = stop;
                    } else {
                        // Paths in attributes count too: `#[error("{}",
                        // crate::limits::over_budget(..))]` calls it.
                        i = open + 1;
                    }
                }
                Tok::Punct('{') => {
                    scopes.push(None);
                    i += 1;
                }
                Tok::Punct('}') => {
                    scopes.pop();
                    i += 1;
                }
                Tok::Ident(kw) if kw == "mod" => {
                    let Some(name) = ident(toks.get(i + 1)).map(str::to_string) else {
                        i += 1;
                        continue;
                    };
                    let m = current(&scopes);
                    if is_punct(toks.get(i + 2), ';') {
                        declared.push((m, name, t.line));
                        i += 3;
                    } else if is_punct(toks.get(i + 2), '{') {
                        let mut path = self.modules[m].path.clone();
                        path.push(name);
                        let id = self.add_module(krate, path, f, Some(m));
                        scopes.push(Some(id));
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                Tok::Ident(kw) if kw == "use" => {
                    let m = current(&scopes);
                    let mut leaves = Vec::new();
                    i = parse_use_tree(toks, i + 1, &[], &mut leaves);
                    for (segs, bound, line) in leaves {
                        let path = UsePath { module: m, segs };
                        if counted(&path.segs, krate) {
                            self.files[f].occurrences.push(Occurrence {
                                path: path.clone(),
                                line,
                            });
                        }
                        match bound {
                            Some(name) if name != "_" => {
                                self.modules[m].bindings.insert(name, path);
                            }
                            Some(_) => {}
                            None => self.modules[m].globs.push(path),
                        }
                    }
                }
                Tok::Ident(kw)
                    if at_module_level(&scopes)
                        && matches!(
                            kw.as_str(),
                            "fn" | "struct"
                                | "enum"
                                | "union"
                                | "trait"
                                | "type"
                                | "const"
                                | "static"
                        ) =>
                {
                    let mut k = i + 1;
                    if is_ident(toks.get(k), "mut") {
                        k += 1;
                    }
                    if let Some(name) = ident(toks.get(k)) {
                        if !matches!(name, "fn" | "unsafe" | "extern" | "_") {
                            let m = current(&scopes);
                            self.modules[m].items.insert(name.to_string());
                        }
                    }
                    i += 1;
                }
                Tok::Ident(kw) if kw == "macro_rules" && is_punct(toks.get(i + 1), '!') => {
                    if let Some(name) = ident(toks.get(i + 2)) {
                        let m = current(&scopes);
                        self.modules[m].items.insert(name.to_string());
                    }
                    // The body's paths (`$crate::...`) are counted like any other.
                    i += 3;
                }
                _ => {
                    // The start of a path: not after `::`, and not the
                    // `in crate::a` of a `pub(in crate::a)` visibility.
                    let after_sep = i > 0 && toks[i - 1].tok == Tok::PathSep;
                    let visibility =
                        i > 1 && is_ident(toks.get(i - 1), "in") && is_punct(toks.get(i - 2), '(');
                    let (first, mut k) =
                        if is_punct(Some(t), '$') && is_ident(toks.get(i + 1), "crate") {
                            ("$crate".to_string(), i + 2)
                        } else if let Tok::Ident(s) = &t.tok {
                            (s.clone(), i + 1)
                        } else {
                            i += 1;
                            continue;
                        };
                    let mut segs = vec![first];
                    if after_sep
                        || visibility
                        || !counted(&segs, krate)
                        || toks.get(k).map(|t| &t.tok) != Some(&Tok::PathSep)
                    {
                        i += 1;
                        continue;
                    }
                    while toks.get(k).map(|t| &t.tok) == Some(&Tok::PathSep) {
                        match ident(toks.get(k + 1)) {
                            Some(s) => {
                                segs.push(s.to_string());
                                k += 2;
                            }
                            None => break, // `::<` or `::{`
                        }
                    }
                    let m = current(&scopes);
                    self.files[f].occurrences.push(Occurrence {
                        path: UsePath { module: m, segs },
                        line: t.line,
                    });
                    i = k;
                }
            }
        }
        declared
    }

    /// The module `path` names most deeply, and whether the whole path
    /// names that module (so later segments may descend from it). `None`
    /// when the path leaves the crate.
    fn resolve(&self, path: &UsePath, depth: usize) -> Option<(usize, bool)> {
        if depth > 32 {
            return None;
        }
        let m = path.module;
        let krate = self.modules[m].krate;
        let mut segs = path.segs.iter().map(String::as_str).peekable();
        let mut cur = match *segs.peek()? {
            "crate" | "$crate" => {
                segs.next();
                self.root(krate)?
            }
            s if s == LIB_CRATE && krate == CrateKind::Bin => {
                segs.next();
                self.lib_root?
            }
            "self" => {
                segs.next();
                m
            }
            "super" => m,
            "::" => return None,
            first => {
                // A bare path: a name in scope of `m`.
                segs.next();
                match self.step(m, first, depth)? {
                    (next, true) => next,
                    (next, false) => return Some((next, false)),
                }
            }
        };
        while segs.peek() == Some(&"super") {
            segs.next();
            cur = self.modules[cur].parent?;
        }
        for s in segs {
            match self.step(cur, s, depth) {
                Some((next, true)) => cur = next,
                Some((next, false)) => return Some((next, false)),
                None => return Some((cur, false)),
            }
        }
        Some((cur, true))
    }

    /// What `name` in module `m` is: a child module (descend), an item or
    /// an unknown name (stop at `m`), or a `use` binding (where it leads).
    fn step(&self, m: usize, name: &str, depth: usize) -> Option<(usize, bool)> {
        let key = (m, name.to_string());
        if !self.resolving.borrow_mut().insert(key.clone()) {
            return None;
        }
        let found = self.step_in(m, name, depth);
        self.resolving.borrow_mut().remove(&key);
        found
    }

    fn step_in(&self, m: usize, name: &str, depth: usize) -> Option<(usize, bool)> {
        let module = &self.modules[m];
        if let Some(&child) = module.children.get(name) {
            return Some((child, true));
        }
        if module.items.contains(name) {
            return Some((m, false));
        }
        if let Some(b) = module.bindings.get(name) {
            return self.resolve(b, depth + 1);
        }
        for g in &module.globs {
            if let Some((src, true)) = self.resolve(g, depth + 1) {
                let s = &self.modules[src];
                if s.children.contains_key(name)
                    || s.items.contains(name)
                    || s.bindings.contains_key(name)
                {
                    return self.step(src, name, depth + 1);
                }
            }
        }
        None
    }

    fn root(&self, krate: CrateKind) -> Option<usize> {
        match krate {
            CrateKind::Lib => self.lib_root,
            CrateKind::Bin => self.bin_root,
        }
    }

    /// Every file-level edge made by a counted path, in file and line
    /// order (paths that stay in their file are left out).
    fn edges(&self) -> Vec<Edge> {
        let mut edges = Vec::new();
        for (f, file) in self.files.iter().enumerate() {
            for o in &file.occurrences {
                let Some((target, _)) = self.resolve(&o.path, 0) else {
                    continue;
                };
                let to = self.modules[target].file;
                if to != f {
                    edges.push(Edge {
                        from: f,
                        to,
                        line: o.line,
                        path: o.path.segs.join("::"),
                    });
                }
            }
        }
        edges
    }

    /// The top-level module a file belongs to (`lib`, `main`, or the first
    /// name of its module path in the library).
    fn top(&self, f: usize) -> String {
        let m = &self.modules[self.files[f].module.expect("declared file")];
        match m.krate {
            CrateKind::Bin => "main".to_string(),
            CrateKind::Lib => m.path.first().cloned().unwrap_or_else(|| "lib".to_string()),
        }
    }

    fn source_line(&self, f: usize, line: usize) -> &str {
        self.files[f]
            .lines
            .get(line.wrapping_sub(1))
            .map_or("", |l| l.trim())
    }

    /// `file:line: `path`, `path`  (source line)` for edges from one line.
    fn site(&self, from: usize, line: usize, paths: &[&str]) -> String {
        format!(
            "{}:{line}: {}  ({})",
            self.files[from].rel,
            paths
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", "),
            self.source_line(from, line)
        )
    }
}

/// Whether a path starting with `segs[0]` adds an edge.
fn counted(segs: &[String], krate: CrateKind) -> bool {
    match segs.first().map(String::as_str) {
        Some("crate" | "super" | "self" | "$crate") => true,
        Some(s) => s == LIB_CRATE && krate == CrateKind::Bin,
        None => false,
    }
}

/// The directory holding the files of module `m`'s child modules, where
/// `m` is declared in file `rel` whose own module is `file_module`.
fn module_dir(rel: &str, m: &Module, file_module: &Module) -> String {
    let path = Path::new(rel);
    let dir = path
        .parent()
        .map_or(String::new(), |d| d.to_string_lossy().into_owned());
    let stem = path
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    let mut base = if matches!(stem.as_str(), "lib" | "main" | "mod") {
        dir
    } else {
        format!("{dir}/{stem}")
    };
    // `mod outer { mod inner; }` looks in outer/.
    for name in &m.path[file_module.path.len().min(m.path.len())..] {
        base = format!("{base}/{name}");
    }
    base
}

// ---------------------------------------------------------------------------
// The checks

/// What the check found.
struct Report {
    files: usize,
    edges: usize,
    /// One entry per strongly connected component of more than one file.
    cycles: Vec<String>,
    /// One entry per upward import (file:line).
    upward: Vec<String>,
    /// Top-level modules missing from the layer table, and reading problems.
    problems: Vec<String>,
}

impl Report {
    fn ok(&self) -> bool {
        self.cycles.is_empty() && self.upward.is_empty() && self.problems.is_empty()
    }

    fn render(&self) -> String {
        let mut s = String::new();
        for p in &self.problems {
            let _ = writeln!(s, "{p}");
        }
        for c in &self.cycles {
            let _ = writeln!(s, "{c}");
        }
        if !self.upward.is_empty() {
            let _ = writeln!(s, "{} upward import(s):", self.upward.len());
            for u in &self.upward {
                let _ = writeln!(s, "  {u}");
            }
        }
        s
    }
}

fn layer_of(table: &[(u32, &[&str])], module: &str) -> Option<u32> {
    table
        .iter()
        .find(|(_, names)| names.contains(&module))
        .map(|(l, _)| *l)
}

fn check(sources: &[(String, String)], table: &[(u32, &[&str])]) -> Report {
    let c = Crate::build(sources);
    let edges = c.edges();
    let files: Vec<usize> = (0..c.files.len())
        .filter(|&f| c.files[f].module.is_some())
        .collect();

    // Distinct file pairs, each with the lines that make it and the paths
    // on each line.
    let mut pairs: BTreeMap<(usize, usize), BTreeMap<usize, Vec<&str>>> = BTreeMap::new();
    for e in &edges {
        let paths = pairs
            .entry((e.from, e.to))
            .or_default()
            .entry(e.line)
            .or_default();
        if !paths.contains(&e.path.as_str()) {
            paths.push(&e.path);
        }
    }

    let mut problems = c.problems.clone();
    let mut unknown = BTreeMap::new();
    for &f in &files {
        let top = c.top(f);
        if layer_of(table, &top).is_none() {
            unknown.entry(top).or_insert_with(|| c.files[f].rel.clone());
        }
    }
    for (top, rel) in unknown {
        problems.push(format!(
            "top-level module `{top}` ({rel}) has no layer: add it to LAYERS in tests/layers.rs"
        ));
    }

    // One entry per line and imported file, in file and line order.
    let mut upward_sites: BTreeMap<(usize, usize, usize), Vec<&str>> = BTreeMap::new();
    for e in &edges {
        let (from, to) = (c.top(e.from), c.top(e.to));
        if let (Some(lf), Some(lt)) = (layer_of(table, &from), layer_of(table, &to)) {
            if lf < lt {
                let paths = upward_sites.entry((e.from, e.line, e.to)).or_default();
                if !paths.contains(&e.path.as_str()) {
                    paths.push(&e.path);
                }
            }
        }
    }
    let mut upward = Vec::new();
    for ((from, line, to), paths) in upward_sites {
        let (tf, tt) = (c.top(from), c.top(to));
        let (lf, lt) = (
            layer_of(table, &tf).unwrap_or(0),
            layer_of(table, &tt).unwrap_or(0),
        );
        upward.push(format!(
            "{}:{line}: {tf} (layer {lf}) imports {tt} (layer {lt}), {}, through {}\n      {}",
            c.files[from].rel,
            c.files[to].rel,
            paths
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", "),
            c.source_line(from, line)
        ));
    }

    let mut cycles = Vec::new();
    for scc in strongly_connected(c.files.len(), pairs.keys().copied()) {
        if scc.len() < 2 {
            continue;
        }
        let members: BTreeSet<usize> = scc.iter().copied().collect();
        let mut s = format!(
            "cycle among {} files: {}\n",
            scc.len(),
            members
                .iter()
                .map(|&f| c.files[f].rel.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for ((from, to), lines) in &pairs {
            if members.contains(from) && members.contains(to) {
                let _ = writeln!(s, "  {} -> {}", c.files[*from].rel, c.files[*to].rel);
                for (line, paths) in lines {
                    let _ = writeln!(s, "      {}", c.site(*from, *line, paths));
                }
            }
        }
        cycles.push(s);
    }

    Report {
        files: files.len(),
        edges: pairs.len(),
        cycles,
        upward,
        problems,
    }
}

/// Tarjan's strongly connected components (iterative), each sorted.
fn strongly_connected(n: usize, edges: impl Iterator<Item = (usize, usize)>) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    for (a, b) in edges {
        adj[a].push(b);
    }
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut k)) = work.last_mut() {
            if *k < adj[v].len() {
                let w = adj[v][*k];
                *k += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                work.pop();
                if let Some(&(u, _)) = work.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    comp.sort_unstable();
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, as `(path relative to root, source)`.
fn read_sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_sources(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let src = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            let rel = p
                .strip_prefix(root)
                .expect("under the crate")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, src));
        }
    }
}

/// The report on this crate's `src/`.
fn report_on_src() -> Report {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    read_sources(root, &root.join("src"), &mut sources);
    check(&sources, LAYERS)
}

#[test]
fn no_cycles_between_files() {
    let report = report_on_src();
    assert!(
        report.cycles.is_empty() && report.problems.is_empty(),
        "\n{}",
        report.render()
    );
}

#[test]
fn layers_point_one_way() {
    let report = report_on_src();
    assert!(report.ok(), "\n{}", report.render());
    println!(
        "layers: {} files, {} edges, no cycles, no upward imports",
        report.files, report.edges
    );
}

/// The command line calls only the library API (and names `mlc::Error`):
/// every path out of the binary's files goes through `mlc::api` (what it
/// re-exports may live anywhere) or is the crate's error type.
#[test]
fn the_cli_calls_only_the_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    read_sources(root, &root.join("src"), &mut sources);
    let c = Crate::build(&sources);
    let mut outside = Vec::new();
    for e in c.edges() {
        let (from, to) = (c.top(e.from), c.top(e.to));
        let through_api = e.path.starts_with("mlc::api") || e.path == "mlc::Error";
        if from == "main" && to != "main" && !through_api {
            outside.push(format!(
                "{}:{}: {} ({to})",
                c.files[e.from].rel, e.line, e.path
            ));
        }
    }
    assert!(
        outside.is_empty(),
        "the CLI reaches past the API:\n{}",
        outside.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Self-tests of the reader and the resolver, on small made-up crates.

fn crate_of(files: &[(&str, &str)]) -> Crate {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    Crate::build(&sources)
}

/// The edges as `from -> to @line` with paths relative to `src/`.
fn edge_list(c: &Crate) -> Vec<String> {
    let short = |f: usize| c.files[f].rel.trim_start_matches("src/").to_string();
    c.edges()
        .iter()
        .map(|e| format!("{} -> {} @{}", short(e.from), short(e.to), e.line))
        .collect()
}

#[test]
fn resolver_follows_groups_super_self_and_bodies() {
    let c = crate_of(&[
        (
            "src/lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub use a::Thing;\npub use c::Result;\n",
        ),
        (
            "src/a/mod.rs",
            "pub mod x;\npub mod y;\npub struct Thing;\n",
        ),
        (
            "src/a/x.rs",
            // 1: a group with a nested group, self, super::super and a glob.
            "use super::{y::{self, Y}, super::b::{deep::{D as Dee}, *}};\n\
             // crate::c::not_in_a_comment\n\
             use self::inner::Helper;\n\
             mod inner {\n\
                 pub struct Helper;\n\
                 use super::super::Thing;\n\
             }\n\
             pub fn f() -> crate::Result<()> {\n\
                 let _s = \"crate::c::not_in_a_string\";\n\
                 let _t: crate::Thing = crate::Thing;\n\
                 crate::c::make();\n\
                 Ok(())\n\
             }\n\
             pub(in crate::a) fn g() {}\n\
             #[cfg(test)]\n\
             mod tests {\n\
                 use crate::c::*;\n\
                 fn t() { crate::b::deep::D; }\n\
             }\n\
             #[cfg(all(test, feature = \"x\"))]\n\
             use crate::c::make;\n\
             mod inline_tests {\n\
                 #![cfg(test)]\n\
                 use crate::c::make;\n\
             }\n\
             pub fn h() { crate::c::make() }\n\
             #[error(\"{}\", crate::c::make())]\n\
             pub struct E;\n",
        ),
        ("src/a/y.rs", "pub struct Y;\n"),
        ("src/b/mod.rs", "pub mod deep;\n"),
        ("src/b/deep.rs", "pub struct D;\n"),
        (
            "src/c.rs",
            "pub type Result<T> = std::result::Result<T, ()>;\npub fn make() {}\n",
        ),
    ]);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(
        edge_list(&c),
        [
            // `super::{y::{self, Y}, ...}`: the module y, then its item Y.
            "a/x.rs -> a/y.rs @1",
            "a/x.rs -> a/y.rs @1",
            // `super::super::b::deep::D as Dee`, and the glob `super::super::b::*`.
            "a/x.rs -> b/deep.rs @1",
            "a/x.rs -> b/mod.rs @1",
            // `self::inner::Helper` stays in the file; `super::super::Thing`
            // inside `mod inner` names a/mod.rs (inner's grandparent).
            "a/x.rs -> a/mod.rs @6",
            // `crate::Result` through lib.rs's `pub use c::Result`.
            "a/x.rs -> c.rs @8",
            // `crate::Thing` twice, through `pub use a::Thing`.
            "a/x.rs -> a/mod.rs @10",
            "a/x.rs -> a/mod.rs @10",
            // A path in a function body.
            "a/x.rs -> c.rs @11",
            // After a module that is test code inside (`#![cfg(test)]`).
            "a/x.rs -> c.rs @26",
            // A path in an attribute (thiserror's message arguments).
            "a/x.rs -> c.rs @27",
        ]
    );
}

#[test]
fn test_only_files_cycles_and_upward_imports_are_reported() {
    let sources: Vec<(String, String)> = [
        (
            "src/lib.rs",
            "pub mod low;\npub mod high;\n#[cfg(test)]\nmod testing;\n",
        ),
        ("src/low/mod.rs", "mod p;\nmod q;\npub fn base() {}\n"),
        // p and q import each other; p also reaches up to `high`.
        (
            "src/low/p.rs",
            "use super::q::Q;\npub struct P;\npub fn f() { crate::high::h(); }\n",
        ),
        ("src/low/q.rs", "pub struct Q(pub super::p::P);\n"),
        (
            "src/high.rs",
            "use crate::low::base;\npub fn h() { base() }\n",
        ),
        // Test-only: may import anything, and is not an orphan.
        ("src/testing.rs", "use crate::high::h;\n"),
        ("src/orphan.rs", "use crate::high::h;\n"),
    ]
    .iter()
    .map(|(p, s)| (p.to_string(), s.to_string()))
    .collect();
    let table: &[(u32, &[&str])] = &[(0, &["low"]), (1, &["high"]), (2, &["lib"])];
    let r = check(&sources, table);
    assert_eq!(r.files, 5, "{}", r.render());
    assert_eq!(r.cycles.len(), 1, "{}", r.render());
    assert!(
        r.cycles[0].contains("src/low/p.rs -> src/low/q.rs"),
        "{}",
        r.cycles[0]
    );
    assert!(
        r.cycles[0].contains("src/low/q.rs:1: `super::p::P`"),
        "{}",
        r.cycles[0]
    );
    assert_eq!(r.upward.len(), 1, "{}", r.render());
    assert!(
        r.upward[0].starts_with("src/low/p.rs:3: low (layer 0) imports high (layer 1), src/high.rs, through `crate::high::h`"),
        "{}",
        r.upward[0]
    );
    assert_eq!(r.problems.len(), 1, "{}", r.render());
    assert!(
        r.problems[0].starts_with("src/orphan.rs is not declared"),
        "{:?}",
        r.problems
    );

    // A top-level module without a layer is named.
    let r = check(&sources, &[(0, &["low"]), (2, &["lib"])]);
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with("top-level module `high` (src/high.rs) has no layer")),
        "{:?}",
        r.problems
    );
}

#[test]
fn lexer_skips_literals_lifetimes_and_nested_comments() {
    let toks = lex("/* a /* crate::x */ b */ r#\"crate::y\"# 'a' '\\'' b'x' fn f<'a>(x: &'a u8) -> crate::z {}");
    let idents: Vec<&str> = toks.iter().filter_map(|t| ident(Some(t))).collect();
    assert_eq!(idents, ["fn", "f", "x", "u8", "crate", "z"]);
}
