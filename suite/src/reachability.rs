//! Reachability tables: expected and observed are the same type; a comparison is derived from them.
//!
//! Rows are sources, columns destinations, both in model order. A cell is `None` when the pair is not
//! probed (self pairs, or pairs a pair probe does not list).

use std::fmt::{self, Write as _};

use serde::Serialize;

/// How a blocked connection failed, as far as a prober can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Nothing answered before the timeout (a silent drop).
    Timeout,
    /// The connection was actively refused (RST or ICMP unreachable).
    Refused,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// The connection succeeded (UDP: an answer came back).
    Connected,
    /// The connection did not succeed.
    Blocked(BlockKind),
    /// The probe itself could not be carried out; says nothing about policy.
    Error(String),
}

impl Outcome {
    /// The mark printed in observed tables.
    pub fn mark(&self) -> char {
        match self {
            Outcome::Connected => '.',
            Outcome::Blocked(BlockKind::Timeout) => 'X',
            Outcome::Blocked(BlockKind::Refused) => 'R',
            Outcome::Error(_) => '!',
        }
    }
}

/// What makes an observation match an expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockRule {
    /// Any failure to connect counts as blocked (upstream NetworkPolicy e2e).
    AnyFailure,
    /// Only a silent drop counts as blocked; a refusal is a failure (network-policy-api).
    TimeoutOnly,
}

/// The verdict on one cell of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Observed what was expected.
    Match,
    /// Observed the opposite (or a refusal where a drop was required).
    Mismatch,
    /// The probe failed; the pair is unjudged.
    Error,
}

/// A square table over a list of pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table<T> {
    pods: Vec<String>,
    cells: Vec<Option<T>>,
}

impl<T: Clone> Table<T> {
    /// An empty table (every cell unset) over these pods.
    pub fn new(pods: Vec<String>) -> Self {
        let n = pods.len();
        Table {
            pods,
            cells: vec![None; n * n],
        }
    }
}

impl<T> Table<T> {
    /// The pods, in order.
    pub fn pods(&self) -> &[String] {
        &self.pods
    }

    fn index(&self, pod: &str) -> Option<usize> {
        self.pods.iter().position(|p| p == pod)
    }

    /// The cell for `from → to`.
    pub fn get(&self, from: &str, to: &str) -> Option<&T> {
        let (f, t) = (self.index(from)?, self.index(to)?);
        self.cells[f * self.pods.len() + t].as_ref()
    }

    /// Sets a cell; unknown pods are ignored (the loader has checked model names).
    pub fn set(&mut self, from: &str, to: &str, value: T) {
        if let (Some(f), Some(t)) = (self.index(from), self.index(to)) {
            let n = self.pods.len();
            self.cells[f * n + t] = Some(value);
        }
    }

    /// Clears a cell.
    pub fn clear(&mut self, from: &str, to: &str) {
        if let (Some(f), Some(t)) = (self.index(from), self.index(to)) {
            let n = self.pods.len();
            self.cells[f * n + t] = None;
        }
    }

    /// Every set cell as `(from, to, value)`, row by row.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &T)> {
        let n = self.pods.len();
        self.cells.iter().enumerate().filter_map(move |(i, c)| {
            c.as_ref()
                .map(|v| (self.pods[i / n].as_str(), self.pods[i % n].as_str(), v))
        })
    }

    /// Number of set cells.
    pub fn len(&self) -> usize {
        self.cells.iter().filter(|c| c.is_some()).count()
    }

    /// Whether no cell is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renders the table like upstream's truth tables: a header of destinations, a row per source.
    pub fn render(&self, mark: impl Fn(&T) -> char) -> String {
        let width = self.pods.iter().map(String::len).max().unwrap_or(1).max(1);
        let mut out = String::new();
        let _ = write!(out, "{:width$}", "-");
        for to in &self.pods {
            let _ = write!(out, " {to:>width$}");
        }
        out.push('\n');
        for from in &self.pods {
            let _ = write!(out, "{from:width$}");
            for to in &self.pods {
                let m = self.get(from, to).map(&mark).unwrap_or('?');
                let _ = write!(out, " {m:>width$}");
            }
            out.push('\n');
        }
        out
    }
}

/// Expected outcomes: `true` = the connection must succeed.
pub type Expected = Table<bool>;
/// Observed outcomes.
pub type Observed = Table<Outcome>;

/// Marks for an expected table: `.` allowed, `X` blocked.
pub fn expected_mark(v: &bool) -> char {
    if *v { '.' } else { 'X' }
}

/// Which pairs cross nodes: `true` for a pair whose pods run on different nodes, `false` for
/// one on the same node; unset where a node is not known.
pub type CrossNode = Table<bool>;

/// Mark for a placement cell: `C` cross-node, `S` same node.
pub fn placement_mark(cross: &bool) -> char {
    if *cross { 'C' } else { 'S' }
}

/// Where a comparison's wrong pairs ran, in words (`all 12 wrong pairs are cross-node`,
/// `3 of 12 wrong pairs are cross-node`); `None` when nothing is wrong or no wrong pair's
/// placement is known.
pub fn wrong_placement(comparison: &Comparison, cross: &CrossNode) -> Option<String> {
    let wrong: Vec<Option<bool>> = comparison
        .table
        .entries()
        .filter(|(_, _, v)| **v == Verdict::Mismatch)
        .map(|(f, t, _)| cross.get(f, t).copied())
        .collect();
    let known = wrong.iter().flatten().count();
    if wrong.is_empty() || known == 0 {
        return None;
    }
    let crossing = wrong.iter().flatten().filter(|c| **c).count();
    let n = wrong.len();
    let pairs = if n == 1 { "pair is" } else { "pairs are" };
    Some(match crossing {
        _ if known < n => format!(
            "{crossing} of {n} wrong {pairs} cross-node ({} unknown)",
            n - known
        ),
        c if c == n => {
            if n == 1 {
                "the wrong pair is cross-node".into()
            } else {
                format!("all {n} wrong pairs are cross-node")
            }
        }
        0 => {
            if n == 1 {
                "the wrong pair is same-node".into()
            } else {
                format!("all {n} wrong pairs are same-node")
            }
        }
        c => format!("{c} of {n} wrong {pairs} cross-node"),
    })
}

/// The verdict on one pair: whether `observed` (`None`: not probed, an error) is what `allowed`
/// expects under `rule`.
pub fn verdict(allowed: bool, observed: Option<&Outcome>, rule: BlockRule) -> Verdict {
    match (observed, allowed, rule) {
        (Some(Outcome::Connected), true, _) => Verdict::Match,
        (Some(Outcome::Blocked(_)), false, BlockRule::AnyFailure) => Verdict::Match,
        (Some(Outcome::Blocked(BlockKind::Timeout)), false, BlockRule::TimeoutOnly) => {
            Verdict::Match
        }
        (Some(Outcome::Error(_)) | None, _, _) => Verdict::Error,
        _ => Verdict::Mismatch,
    }
}

/// The comparison of expected with observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Per-pair verdicts over the expected cells.
    pub table: Table<Verdict>,
    /// Matching pairs.
    pub correct: usize,
    /// Mismatching pairs.
    pub wrong: usize,
    /// Pairs whose probe failed.
    pub errors: usize,
}

impl Comparison {
    /// Compares every expected cell with its observation. An expected cell with no observation
    /// counts as an error ("not probed").
    pub fn new(expected: &Expected, observed: &Observed, rule: BlockRule) -> Comparison {
        let mut table = Table::new(expected.pods().to_vec());
        let (mut correct, mut wrong, mut errors) = (0, 0, 0);
        for (from, to, want) in expected.entries() {
            let verdict = verdict(*want, observed.get(from, to), rule);
            match verdict {
                Verdict::Match => correct += 1,
                Verdict::Mismatch => wrong += 1,
                Verdict::Error => errors += 1,
            }
            table.set(from, to, verdict);
        }
        Comparison {
            table,
            correct,
            wrong,
            errors,
        }
    }

    /// Whether every expected pair matched.
    pub fn passed(&self) -> bool {
        self.wrong == 0 && self.errors == 0
    }

    /// Mark for a comparison cell: `.` match, `X` mismatch, `!` error.
    pub fn mark(v: &Verdict) -> char {
        match v {
            Verdict::Match => '.',
            Verdict::Mismatch => 'X',
            Verdict::Error => '!',
        }
    }
}

/// Renders the three tables with a summary line, as upstream prints them on failure.
pub struct TruthTables<'a> {
    /// Expected.
    pub expected: &'a Expected,
    /// Observed.
    pub observed: &'a Observed,
    /// Comparison.
    pub comparison: &'a Comparison,
    /// Color the marks (for terminals).
    pub color: bool,
}

impl fmt::Display for TruthTables<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.comparison;
        writeln!(
            f,
            "reachability: correct:{}, incorrect:{}, errors:{}, result={}",
            c.correct,
            c.wrong,
            c.errors,
            c.passed()
        )?;
        let paint = |s: String| if self.color { colorize(&s) } else { s };
        writeln!(
            f,
            "expected:\n{}",
            paint(self.expected.render(expected_mark))
        )?;
        writeln!(
            f,
            "observed:\n{}",
            paint(self.observed.render(Outcome::mark))
        )?;
        write!(
            f,
            "comparison:\n{}",
            paint(c.table.render(Comparison::mark))
        )
    }
}

/// Colors `X` red, `!` and `R` yellow and `.` green, leaving everything else alone.
fn colorize(table: &str) -> String {
    let mut out = String::with_capacity(table.len() * 2);
    for line in table.lines() {
        let mut words = line.split(' ').peekable();
        // The first word is the row label; keep it plain.
        if let Some(first) = words.next() {
            out.push_str(first);
        }
        for w in words {
            out.push(' ');
            match w.trim() {
                "X" => out.push_str(&w.replace('X', "\x1b[31mX\x1b[0m")),
                "!" => out.push_str(&w.replace('!', "\x1b[33m!\x1b[0m")),
                "R" => out.push_str(&w.replace('R', "\x1b[33mR\x1b[0m")),
                "." => out.push_str(&w.replace('.', "\x1b[32m.\x1b[0m")),
                _ => out.push_str(w),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<String> {
        ["x/a", "x/b", "y/a"].map(String::from).to_vec()
    }

    #[test]
    fn comparison_counts_and_marks() {
        let mut expected = Expected::new(pods());
        expected.set("x/a", "x/b", true);
        expected.set("x/b", "x/a", false);
        expected.set("y/a", "x/a", false);
        expected.set("x/a", "y/a", true);
        let mut observed = Observed::new(pods());
        observed.set("x/a", "x/b", Outcome::Connected);
        observed.set("x/b", "x/a", Outcome::Connected);
        observed.set("y/a", "x/a", Outcome::Blocked(BlockKind::Refused));
        observed.set("x/a", "y/a", Outcome::Error("exec failed".into()));
        let any = Comparison::new(&expected, &observed, BlockRule::AnyFailure);
        assert_eq!((any.correct, any.wrong, any.errors), (2, 1, 1));
        assert!(!any.passed());
        let strict = Comparison::new(&expected, &observed, BlockRule::TimeoutOnly);
        assert_eq!((strict.correct, strict.wrong, strict.errors), (1, 2, 1));
        assert_eq!(strict.table.get("y/a", "x/a"), Some(&Verdict::Mismatch));
    }

    #[test]
    fn renders_like_upstream() {
        let mut expected = Expected::new(pods());
        expected.set("x/a", "x/b", false);
        expected.set("x/b", "x/a", true);
        let text = expected.render(expected_mark);
        assert_eq!(
            text,
            "-   x/a x/b y/a\nx/a   ?   X   ?\nx/b   .   ?   ?\ny/a   ?   ?   ?\n"
        );
    }

    #[test]
    fn colour_leaves_labels_alone() {
        let colored = colorize("x/a   X   .\n");
        assert!(colored.starts_with("x/a "));
        assert!(colored.contains("\x1b[31mX\x1b[0m"));
        assert!(colored.contains("\x1b[32m.\x1b[0m"));
    }
}
