//! Declared features, network-policy-api's way: which parts of the APIs a run judges.
//!
//! A trial needs a set of feature names. For network-policy-api cases they are upstream's own
//! (`ClusterNetworkPolicy`, `ClusterNetworkPolicyNamedPorts`, `AdminNetworkPolicy`, …); for every
//! case they include the protocols its probes use (`UDP`, `SCTP`) and the NetworkPolicy features
//! it declares (`NamedPort`, `CIDR`). Features are *standard* or *experimental*. A run judges
//! the standard ones plus what the user declares (`--supported-features`), or all of them
//! (`--all-features`), minus what the user exempts (`--exempt-features`) — the rule of
//! upstream's `suite.New`. A standard feature is never dropped silently: when the target
//! cannot carry it (a kernel without SCTP) the trial errors until the user exempts it.

use std::collections::BTreeSet;

use crate::case::{Feature, Source};
use crate::plan::Plan;
use crate::translate::ApiVersion;

/// Whether a feature is part of every conformant implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Judged unless exempted.
    Standard,
    /// Judged only when declared (`--supported-features`, `--all-features`).
    Experimental,
}

/// Every feature name the suite knows, with its level.
pub const KNOWN: &[(&str, Level)] = &[
    ("UDP", Level::Standard),
    ("SCTP", Level::Standard),
    ("NamedPort", Level::Standard),
    ("CIDR", Level::Standard),
    ("ClusterNetworkPolicy", Level::Standard),
    ("ClusterNetworkPolicyNamedPorts", Level::Experimental),
    ("ClusterNetworkPolicyEgressNodePeers", Level::Experimental),
    ("AdminNetworkPolicy", Level::Standard),
    ("BaselineAdminNetworkPolicy", Level::Standard),
    ("AdminNetworkPolicyNamedPorts", Level::Experimental),
    ("AdminNetworkPolicyEgressNodePeers", Level::Experimental),
    ("BaselineAdminNetworkPolicyNamedPorts", Level::Experimental),
    (
        "BaselineAdminNetworkPolicyEgressNodePeers",
        Level::Experimental,
    ),
];

/// A feature name that is not in [`KNOWN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown feature `{name}` in {flag} (known: {known})")]
pub struct UnknownFeature {
    /// The name given.
    pub name: String,
    /// The flag it came from.
    pub flag: &'static str,
    /// Every known name.
    pub known: String,
}

/// The features a run judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    enabled: BTreeSet<&'static str>,
    exempt: BTreeSet<&'static str>,
    all: bool,
}

/// Why a feature is not judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotJudged {
    /// The user exempted it.
    Exempt,
    /// Experimental and not declared.
    Undeclared,
}

impl Selection {
    /// The selection of upstream's rule: all (with `all`), else standard ∪ `supported`; then
    /// minus `exempt`. Names are checked against [`KNOWN`].
    pub fn new(supported: &[String], exempt: &[String], all: bool) -> Result<Self, UnknownFeature> {
        let lookup = |name: &str, flag: &'static str| {
            KNOWN
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name.trim()))
                .map(|(k, _)| *k)
                .ok_or_else(|| UnknownFeature {
                    name: name.trim().to_string(),
                    flag,
                    known: KNOWN.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
                })
        };
        let names = |list: &[String], flag| -> Result<BTreeSet<&'static str>, UnknownFeature> {
            list.iter()
                .flat_map(|s| s.split(','))
                .filter(|s| !s.trim().is_empty())
                .map(|s| lookup(s, flag))
                .collect()
        };
        let supported = names(supported, "--supported-features")?;
        let exempt = names(exempt, "--exempt-features")?;
        let mut enabled: BTreeSet<&'static str> = KNOWN
            .iter()
            .filter(|(_, level)| all || *level == Level::Standard)
            .map(|(k, _)| *k)
            .collect();
        enabled.extend(supported);
        enabled.retain(|k| !exempt.contains(k));
        Ok(Selection {
            enabled,
            exempt,
            all,
        })
    }

    /// Every feature (what the bundled enforcer implements).
    pub fn all() -> Self {
        Selection::new(&[], &[], true).expect("no names to check")
    }

    /// Whether the run judges `name`, or why not.
    pub fn judges(&self, name: &str) -> Result<(), NotJudged> {
        if self.enabled.contains(name) {
            Ok(())
        } else if self.exempt.contains(name) {
            Err(NotJudged::Exempt)
        } else {
            Err(NotJudged::Undeclared)
        }
    }

    /// The reason text for a feature the run does not judge.
    pub fn reason(&self, name: &str) -> Option<String> {
        match self.judges(name) {
            Ok(()) => None,
            Err(NotJudged::Exempt) => Some(format!("{name}: exempted with --exempt-features")),
            Err(NotJudged::Undeclared) => Some(format!(
                "{name}: experimental and not declared (--supported-features {name}, or --all-features)"
            )),
        }
    }

    /// One line for the start of a run.
    pub fn describe(&self) -> String {
        let exempt: Vec<&str> = self.exempt.iter().copied().collect();
        let experimental: Vec<&str> = KNOWN
            .iter()
            .filter(|(k, l)| *l == Level::Experimental && self.enabled.contains(k))
            .map(|(k, _)| *k)
            .collect();
        let judged = if self.all {
            "all, experimental ones included".to_string()
        } else if experimental.is_empty() {
            "standard".to_string()
        } else {
            format!("standard and {}", experimental.join(","))
        };
        let exempt = if exempt.is_empty() {
            String::new()
        } else {
            format!(
                "; exempt: {} (their trials and steps are reported as skipped)",
                exempt.join(",")
            )
        };
        format!("features judged: {judged}{exempt}")
    }
}

/// The name of a case feature in this plan's vocabulary: network-policy-api cases use upstream's
/// per-API names for their experimental features.
fn feature_name(plan: &Plan, feature: Feature) -> Option<String> {
    let prefix = npa_prefixes(plan);
    match feature {
        Feature::Udp => Some("UDP".into()),
        Feature::Sctp => Some("SCTP".into()),
        Feature::Cidr => Some("CIDR".into()),
        Feature::NamedPort if prefix.is_empty() => Some("NamedPort".into()),
        Feature::NamedPort => Some(format!("{}NamedPorts", prefix[0])),
        Feature::EgressNodePeers if prefix.is_empty() => None,
        Feature::EgressNodePeers => Some(format!("{}EgressNodePeers", prefix[0])),
        // A property of the target, not of the implementation: gated by capabilities.
        Feature::ExternalHost => None,
    }
}

/// The API feature names of a network-policy-api case (empty for other sources), the one whose
/// experimental features it uses first.
fn npa_prefixes(plan: &Plan) -> Vec<&'static str> {
    if plan.case.source != Source::Npa {
        return Vec::new();
    }
    match plan.api_version {
        Some(ApiVersion::V1alpha1) => {
            let kinds = plan.kinds();
            let mut out = Vec::new();
            // Baseline-tier cases name their experimental features after the BANP.
            let baseline_first = plan.case.area.contains("baseline");
            if baseline_first && kinds.contains("BaselineAdminNetworkPolicy") {
                out.push("BaselineAdminNetworkPolicy");
            }
            if kinds.contains("AdminNetworkPolicy") {
                out.push("AdminNetworkPolicy");
            }
            if !baseline_first && kinds.contains("BaselineAdminNetworkPolicy") {
                out.push("BaselineAdminNetworkPolicy");
            }
            out
        }
        _ => vec!["ClusterNetworkPolicy"],
    }
}

/// The feature names a whole trial needs: its API features and the features its case declares.
/// Protocols used only in some steps are gated per step ([`step_feature`]).
pub fn trial_features(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = npa_prefixes(plan).iter().map(|p| p.to_string()).collect();
    out.extend(
        plan.case
            .features
            .iter()
            .filter_map(|f| feature_name(plan, *f)),
    );
    for f in plan.features() {
        if !matches!(f, Feature::Udp | Feature::Sctp)
            && let Some(name) = feature_name(plan, f)
            && !out.contains(&name)
        {
            out.push(name);
        }
    }
    out
}

/// The feature a probe step's protocol needs, if any.
pub fn step_feature(protocol: crate::world::Protocol) -> Option<(&'static str, Feature)> {
    match protocol {
        crate::world::Protocol::Udp => Some(("UDP", Feature::Udp)),
        crate::world::Protocol::Sctp => Some(("SCTP", Feature::Sctp)),
        crate::world::Protocol::Tcp => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_rule_standard_plus_declared_minus_exempt() {
        let s = Selection::new(&[], &[], false).unwrap();
        assert_eq!(s.judges("SCTP"), Ok(()));
        assert_eq!(s.judges("ClusterNetworkPolicy"), Ok(()));
        assert_eq!(
            s.judges("ClusterNetworkPolicyNamedPorts"),
            Err(NotJudged::Undeclared)
        );
        let s = Selection::new(
            &["clusternetworkpolicynamedports".into()],
            &["SCTP,UDP".into()],
            false,
        )
        .unwrap();
        assert_eq!(s.judges("ClusterNetworkPolicyNamedPorts"), Ok(()));
        assert_eq!(s.judges("SCTP"), Err(NotJudged::Exempt));
        assert_eq!(s.judges("UDP"), Err(NotJudged::Exempt));
        assert_eq!(
            s.describe(),
            "features judged: standard and ClusterNetworkPolicyNamedPorts; exempt: SCTP,UDP \
             (their trials and steps are reported as skipped)"
        );
        let all =
            Selection::new(&[], &["ClusterNetworkPolicyEgressNodePeers".into()], true).unwrap();
        assert_eq!(all.judges("AdminNetworkPolicyNamedPorts"), Ok(()));
        assert_eq!(
            all.judges("ClusterNetworkPolicyEgressNodePeers"),
            Err(NotJudged::Exempt)
        );
    }

    fn plan(trial: &str) -> Plan {
        crate::plan::plan_all(&crate::case::load_embedded().unwrap())
            .unwrap()
            .into_iter()
            .find(|p| p.trial == trial)
            .unwrap_or_else(|| panic!("no trial {trial}"))
    }

    #[test]
    fn npa_trials_need_upstream_feature_names_per_api_version() {
        assert_eq!(
            trial_features(&plan("npa::admin-tier::admin-egress-named-port::v1alpha2")),
            ["ClusterNetworkPolicy", "ClusterNetworkPolicyNamedPorts"]
        );
        assert_eq!(
            trial_features(&plan("npa::admin-tier::admin-egress-named-port::v1alpha1")),
            ["AdminNetworkPolicy", "AdminNetworkPolicyNamedPorts"]
        );
        assert_eq!(
            trial_features(&plan(
                "npa::baseline-tier::baseline-egress-node-peers::v1alpha1"
            )),
            [
                "BaselineAdminNetworkPolicy",
                "BaselineAdminNetworkPolicyEgressNodePeers"
            ]
        );
        assert_eq!(
            trial_features(&plan("upstream::ingress::default-deny-ingress")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_exempted_experimental_feature_makes_its_trials_not_supported_with_the_reason() {
        use crate::backend::Cluster;
        use crate::harness::{Gate, gate};
        let caps = crate::backend::fake::FakeCluster::new(Box::new(|_, _| {
            crate::reachability::Outcome::Connected
        }))
        .capabilities();
        let named = plan("npa::admin-tier::admin-egress-named-port::v1alpha2");
        let exempt = Selection::new(&[], &["ClusterNetworkPolicyNamedPorts".into()], true).unwrap();
        assert_eq!(
            gate(&named, &caps, &exempt),
            Gate::NotSupported(
                "ClusterNetworkPolicyNamedPorts: exempted with --exempt-features".into()
            )
        );
        // Standard features only (a real cluster's default): experimental ones need declaring.
        let standard = Selection::new(&[], &[], false).unwrap();
        let Gate::NotSupported(reason) = gate(&named, &caps, &standard) else {
            panic!()
        };
        assert!(reason.contains("experimental and not declared"), "{reason}");
        assert_eq!(
            gate(
                &plan("npa::admin-tier::admin-egress-tcp::v1alpha2"),
                &caps,
                &standard
            ),
            Gate::Run
        );
        // A case-level SCTP trial on a target without SCTP: an error until exempted.
        let mut no_sctp = caps.clone();
        no_sctp
            .missing
            .insert(Feature::Sctp, "SCTP is not supported by this kernel".into());
        let sctp = plan("npa::admin-tier::admin-egress-sctp::v1alpha2");
        assert!(matches!(gate(&sctp, &no_sctp, &standard), Gate::Error(_)));
        let exempt_sctp = Selection::new(&[], &["SCTP".into()], false).unwrap();
        assert!(matches!(
            gate(&sctp, &no_sctp, &exempt_sctp),
            Gate::NotSupported(_)
        ));
    }

    #[test]
    fn unknown_names_are_errors_that_list_the_known_ones() {
        let e = Selection::new(&[], &["SCTPP".into()], false).unwrap_err();
        assert_eq!(e.flag, "--exempt-features");
        assert!(e.to_string().contains("unknown feature `SCTPP`"), "{e}");
        assert!(
            e.to_string().contains("ClusterNetworkPolicyNamedPorts"),
            "{e}"
        );
    }
}
