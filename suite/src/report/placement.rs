//! Where a trial's probed pairs ran: how many crossed nodes and how many stayed on one, for the
//! JUnit testcase properties (each failing step's own wording, `all 12 wrong pairs are
//! cross-node`, is in its tables and in the trial's failure message).

use std::collections::BTreeSet;

use super::TrialReport;

/// `cross-node-pairs` and `same-node-pairs`: the distinct pairs the trial's steps probed, by
/// placement; nothing where no pair's placement is known.
pub fn case_properties(t: &TrialReport) -> Vec<(&'static str, String)> {
    let mut cross: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut same: BTreeSet<(&str, &str)> = BTreeSet::new();
    for grids in t.steps.iter().filter_map(|s| s.grids.as_ref()) {
        for (from, to, crosses) in grids.cross_node.entries() {
            if *crosses {
                cross.insert((from, to));
            } else {
                same.insert((from, to));
            }
        }
    }
    if cross.is_empty() && same.is_empty() {
        return Vec::new();
    }
    vec![
        ("cross-node-pairs", cross.len().to_string()),
        ("same-node-pairs", same.len().to_string()),
    ]
}
