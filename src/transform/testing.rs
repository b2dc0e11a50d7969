//! Golden-test helper for passes: a graph before and the expected graph
//! after, both in the IR text form ([`crate::ir::text`]).

use std::collections::BTreeMap;

use super::{lookup, PassCx};
use crate::ir::{infer, text, verify};

/// Parses `before`, runs the registered pass `name` with its default
/// parameters, re-infers and verifies the graph, and checks that its
/// canonical text equals `after` (each line trimmed, blank lines ignored).
/// Panics with both texts on a mismatch, so the actual text can be pasted.
pub fn check_pass(name: &str, before: &str, after: &str) {
    let mut g = text::parse(before).unwrap_or_else(|e| panic!("BEFORE does not parse: {e}"));
    let info = lookup(name).unwrap_or_else(|e| panic!("{e}"));
    let params = info
        .params(&BTreeMap::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut pass = (info.make)(&params);
    let mut cx = PassCx::default();
    pass.run(&mut g, &mut cx)
        .unwrap_or_else(|e| panic!("pass '{name}' failed: {e}"));
    infer::infer_graph(&mut g).unwrap_or_else(|e| panic!("after '{name}': {e}"));
    verify::verify(&g).unwrap_or_else(|e| panic!("after '{name}': {e}"));
    let got = text::print(&g);
    assert_eq!(
        normalize(&got),
        normalize(after),
        "pass '{name}' (rewrites {:?}) produced:\n{got}",
        cx.rewrites
    );
}

fn normalize(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}
