//! The capability matrix of `docs/backends.md`, rendered from the backends'
//! declarations and the case list — what decides run or skip — so the docs
//! cannot drift from the suite; and from the same declarations, nextest's
//! `default-filter` in `.config/nextest.toml`, which leaves out the cases a
//! backend lacks, so that nextest reports them as skipped.
// Its test needs every backend compiled in (the full build).
#![cfg_attr(not(feature = "vault"), allow(dead_code))]

use super::{Backend, CASES, Cap};

const DOC: &str = "docs/backends.md";
const BEGIN: &str = "<!-- capability-matrix:begin (generated from tests/it/conformance: UPDATE_DOCS=1 rewrites it) -->\n";
const END: &str = "<!-- capability-matrix:end -->";

/// Numbered reasons for the gaps, in order of first use.
#[derive(Default)]
struct Notes(Vec<&'static str>);

impl Notes {
    fn number(&mut self, why: &'static str) -> usize {
        if let Some(i) = self.0.iter().position(|w| *w == why) {
            return i + 1;
        }
        self.0.push(why);
        self.0.len()
    }
}

fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

fn header(first: &[&str], backends: &[&Backend]) -> String {
    let cells: Vec<String> = first
        .iter()
        .copied()
        .chain(backends.iter().map(|b| b.name))
        .map(String::from)
        .collect();
    row(&cells) + &row(&vec!["---".to_owned(); cells.len()])
}

/// What a case needs, as the case table says it: `Ed25519: sign a
/// message, verify; …`.
fn needs_text(needs: &[Cap]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut key = None;
    for cap in needs {
        match (cap, parts.last_mut()) {
            (Cap::Can(k, op), Some(last)) if key == Some(*k) => {
                *last += &format!(", {}", op.title());
            }
            _ => {
                parts.push(cap.to_string());
                key = match cap {
                    Cap::Can(k, _) => Some(*k),
                    _ => None,
                };
            }
        }
    }
    parts.join("; ")
}

/// The generated block: capabilities × backends (with how many cases
/// exercise each), cases × backends (runs, or skipped and why), and the
/// reasons of the gaps.
fn render(backends: &[&Backend]) -> String {
    let mut notes = Notes::default();
    let mut out = String::from("### Capabilities\n\n");
    out += &header(&["key type", "operation", "cases"], backends);
    for cap in Cap::all() {
        let (key, op) = cap.cells();
        let cases = CASES.iter().filter(|(_, n)| n.contains(&cap)).count();
        let mut cells = vec![key.to_owned(), op.to_owned(), cases.to_string()];
        for b in backends {
            cells.push(match b.lacks(cap) {
                None => "✓".into(),
                Some(why) => format!("no [{}]", notes.number(why)),
            });
        }
        out += &row(&cells);
    }
    out += "\n### Cases\n\n";
    out += &header(&["case", "needs"], backends);
    let mut ran = vec![0; backends.len()];
    for (case, needs) in CASES {
        let mut cells = vec![format!("`{case}`"), needs_text(needs)];
        for (i, b) in backends.iter().enumerate() {
            cells.push(match needs.iter().find_map(|c| b.lacks(*c)) {
                None => {
                    ran[i] += 1;
                    "runs".into()
                }
                Some(why) => format!("skipped [{}]", notes.number(why)),
            });
        }
        out += &row(&cells);
    }
    let mut total = vec![format!("{} cases", CASES.len()), String::new()];
    total.extend(ran.iter().map(|n| format!("{n} run")));
    out += &row(&total);
    out += "\n";
    for (i, why) in notes.0.iter().enumerate() {
        out += &format!("[{}] {why}\n", i + 1);
    }
    out += "\nWhat each column runs against:\n\n";
    for b in backends {
        out += &format!("- `{}`: {}\n", b.name, b.server);
    }
    out
}

/// Every need of a case is a row of the matrix, and every row is needed by
/// some case (else the matrix would promise something untested).
fn check_coverage() {
    for (case, needs) in CASES {
        for cap in *needs {
            assert!(
                matches!(cap, Cap::Key(_)) || Cap::all().any(|c| c == *cap),
                "case `{case}` needs {cap:?}, which is no row of the matrix"
            );
        }
    }
    for cap in Cap::all() {
        assert!(
            CASES.iter().any(|(_, n)| n.contains(&cap)),
            "no case exercises {cap:?}: the matrix would promise something untested"
        );
    }
}

/// Compares the generated blocks of `docs/backends.md` (the matrix) and
/// `.config/nextest.toml` (the cases left out) with a fresh rendering:
/// fails on drift, or rewrites them with `UPDATE_DOCS` set.
pub fn check_docs(backends: &[&Backend]) {
    check_coverage();
    check_block(DOC, BEGIN, END, &render(backends));
    check_block(
        NEXTEST,
        NEXTEST_BEGIN,
        NEXTEST_END,
        &render_filter(backends),
    );
}

const NEXTEST: &str = ".config/nextest.toml";
const NEXTEST_BEGIN: &str =
    "# conformance-gaps:begin (generated from tests/it/conformance: UPDATE_DOCS=1 rewrites it)\n";
const NEXTEST_END: &str = "# conformance-gaps:end";

/// nextest's `default-filter`: every test but the cases a backend lacks a
/// capability for (the reasons are in `docs/backends.md`).
fn render_filter(backends: &[&Backend]) -> String {
    let mut gaps = Vec::new();
    for b in backends {
        for (case, needs) in CASES {
            if needs.iter().any(|c| b.lacks(*c).is_some()) {
                gaps.push(format!("test(=conformance::{}::{case})", b.name));
            }
        }
    }
    format!(
        "# The conformance cases a backend declares it cannot run (why: the\n\
         # capability matrix in docs/backends.md): nextest lists them as skipped.\n\
         default-filter = \"\"\"\nnot (\n    {}\n)\n\"\"\"\n",
        gaps.join("\n  | ")
    )
}

/// The block of the file at `name` between `begin` and `end` is `fresh`:
/// else a panic naming the first difference, or with `UPDATE_DOCS` set the
/// block rewritten.
fn check_block(name: &str, begin: &str, end: &str, fresh: &str) {
    let path = format!("{}/{name}", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (before, rest) = doc
        .split_once(begin)
        .unwrap_or_else(|| panic!("{name} has no line {begin:?}"));
    let (current, after) = rest
        .split_once(end)
        .unwrap_or_else(|| panic!("{name} has no line {end:?}"));
    if current == fresh {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{before}{begin}{fresh}{end}{after}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("rewrote the generated block of {name}");
        return;
    }
    let drift = current
        .lines()
        .zip(fresh.lines())
        .find(|(a, b)| a != b)
        .map_or("A line was added or removed.".to_owned(), |(a, b)| {
            format!("First difference:\n  {name}:  {a}\n  generated: {b}")
        });
    panic!(
        "{name}'s generated block is out of date with the suite's declarations \
         (tests/it/conformance); rewrite it with \
         `UPDATE_DOCS=1 cargo nextest run -E 'test(the_capability_matrix_in_docs_is_current)'`.\n{drift}"
    );
}
