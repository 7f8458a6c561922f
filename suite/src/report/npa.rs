//! network-policy-api's `ConformanceReport` (`policy.networking.k8s.io/v1alpha1`), the YAML an
//! implementation submits to claim conformance, rendered from a run's network-policy-api trials.
//!
//! The shape is upstream's (`conformance/apis/v1alpha1`): `implementation` from the command line,
//! `date`, `networkPolicyV2APIVersion`, and one entry per conformance profile with a `standard`
//! and, when an experimental test counted, an `experimental` status (`result`, `summary`,
//! `statistics`, `skippedTests`, `failedTests`; experimental adds `supportedFeatures` and
//! `unsupportedFeatures`). Keys come out in the order upstream's YAML has them (alphabetical).
//!
//! Each API version the run covered gets its profiles: v1alpha1 `AdminNetworkPolicy` and
//! `BaselineAdminNetworkPolicy`, v1alpha2 `ClusterNetworkPolicy`. A test's short name is the
//! trial's upstream name for that rendering (`CNPAdminTierEgressTCP`, `AdminNetworkPolicyEgressTCP`).
//! Profiles and test levels follow upstream's rules, from the feature names the trials already
//! carry ([`crate::features::trial_features`]) and the levels of [`crate::features::KNOWN`]:
//!
//! - a test belongs to a profile when all its network-policy-api features are the profile's, so
//!   the two v1alpha1 tests that need both AdminNetworkPolicy and BaselineAdminNetworkPolicy
//!   (`…Integration`, `…PriorityField`) run but count in neither profile, as upstream's do;
//! - a test is experimental when any of its features is;
//! - `result` is `failure` with any failed test, else `partial` with any skipped one, else
//!   `success`.
//!
//! How trial outcomes count is decided in [`Counted::of`].

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;
use serde::Serialize;

use super::{RunReport, TrialOutcome, TrialReport};
use crate::features::{KNOWN, Level, Selection};
use crate::translate::ApiVersion;

/// The report's `apiVersion`.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha1";
/// The report's `kind`.
pub const KIND: &str = "ConformanceReport";

/// A conformance profile: its name, the API version its tests render for, and its features
/// (levels from [`KNOWN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// `ClusterNetworkPolicy`, `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`.
    pub name: &'static str,
    /// The API version of its tests.
    pub api_version: ApiVersion,
    /// Every feature of the profile, standard and experimental.
    pub features: &'static [&'static str],
}

/// upstream's profiles: release-0.1's two for v1alpha1, v0.2's one for v1alpha2.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "AdminNetworkPolicy",
        api_version: ApiVersion::V1alpha1,
        features: &[
            "AdminNetworkPolicy",
            "AdminNetworkPolicyNamedPorts",
            "AdminNetworkPolicyEgressNodePeers",
        ],
    },
    Profile {
        name: "BaselineAdminNetworkPolicy",
        api_version: ApiVersion::V1alpha1,
        features: &[
            "BaselineAdminNetworkPolicy",
            "BaselineAdminNetworkPolicyNamedPorts",
            "BaselineAdminNetworkPolicyEgressNodePeers",
        ],
    },
    Profile {
        name: "ClusterNetworkPolicy",
        api_version: ApiVersion::V1alpha2,
        features: &[
            "ClusterNetworkPolicy",
            "ClusterNetworkPolicyNamedPorts",
            "ClusterNetworkPolicyEgressNodePeers",
        ],
    },
];

/// The level of a feature name, from [`KNOWN`].
fn level(name: &str) -> Option<Level> {
    KNOWN.iter().find(|(k, _)| *k == name).map(|(_, l)| *l)
}

impl Profile {
    fn has(&self, feature: &str) -> bool {
        self.features.contains(&feature)
    }

    /// The profile's experimental features, in [`Profile::features`] order.
    pub fn experimental(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.features
            .iter()
            .copied()
            .filter(|f| level(f) == Some(Level::Experimental))
    }

    /// Whether a trial counts in this profile: it needs network-policy-api features, and all of
    /// them are this profile's. Other names a trial carries (`UDP`, `CIDR`) are the suite's own,
    /// not upstream's, and do not take part.
    pub fn contains(&self, trial: &TrialReport) -> bool {
        let mut npa = npa_features(trial).peekable();
        npa.peek().is_some() && npa.all(|f| self.has(f))
    }

    /// Whether a trial of this profile is at the experimental level.
    pub fn is_experimental(&self, trial: &TrialReport) -> bool {
        npa_features(trial).any(|f| level(f) == Some(Level::Experimental))
    }
}

/// The trial's features that belong to some profile.
fn npa_features(trial: &TrialReport) -> impl Iterator<Item = &str> {
    trial
        .features
        .iter()
        .map(String::as_str)
        .filter(|f| PROFILES.iter().any(|p| p.has(f)))
}

/// How a trial outcome counts in a profile's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `Passed`.
    Passed,
    /// `Failed`, and listed in `failedTests`.
    Failed,
    /// `Skipped`, and listed in `skippedTests`.
    Skipped,
}

impl Counted {
    /// The count an outcome adds to, or `None` for upstream's NOT_SUPPORTED, which no statistic
    /// counts.
    ///
    /// - passed → Passed; failed → Failed; an error → Failed too: upstream has no error result,
    ///   and a Go test whose cluster broke under it fails;
    /// - skipped (the run was interrupted, no target) → Skipped, as upstream's explicitly
    ///   skipped tests;
    /// - not supported (a feature not declared or exempted, an API the cluster does not serve)
    ///   → not counted, as upstream's NOT_SUPPORTED;
    /// - **partial** (the steps that ran passed, others were skipped because the run exempts
    ///   their protocol) → Skipped. The report speaks for a test as a whole, and a test whose
    ///   steps were not all judged has not passed; nor did it fail. Counting it skipped makes
    ///   the level `partial` — upstream's word for "no failures, but not everything ran" — and
    ///   names the test in `skippedTests`, so the claim cannot read as a full pass. Not counting
    ///   it (as not supported) would hide that its standard-level steps ran and passed only in
    ///   part.
    pub fn of(outcome: &TrialOutcome) -> Option<Counted> {
        match outcome {
            TrialOutcome::Passed => Some(Counted::Passed),
            TrialOutcome::Failed { .. } | TrialOutcome::Error { .. } => Some(Counted::Failed),
            TrialOutcome::Skipped { .. } | TrialOutcome::Partial { .. } => Some(Counted::Skipped),
            TrialOutcome::NotSupported { .. } => None,
        }
    }
}

/// The command-line flags of the report (upstream's profile-mode flags), each with a `NETPOL_*`
/// environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ReportArgs {
    /// Write network-policy-api's ConformanceReport YAML here; needs --organization, --project,
    /// --url, --version, --contact and --additional-info.
    #[arg(long, env = "NETPOL_REPORT_OUTPUT")]
    pub report_output: Option<PathBuf>,
    /// ConformanceReport: the organization that maintains the implementation.
    #[arg(long, env = "NETPOL_ORGANIZATION")]
    pub organization: Option<String>,
    /// ConformanceReport: the implementation's project name.
    #[arg(long, env = "NETPOL_PROJECT")]
    pub project: Option<String>,
    /// ConformanceReport: where to read about the implementation (its repository).
    #[arg(long, env = "NETPOL_URL")]
    pub url: Option<String>,
    /// ConformanceReport: the implementation's version under test (a release, tag or commit).
    #[arg(long = "version", env = "NETPOL_VERSION")]
    pub implementation_version: Option<String>,
    /// ConformanceReport: maintainers' contacts, comma-separated (`@user`, an issues URL).
    #[arg(long, env = "NETPOL_CONTACT", value_delimiter = ',')]
    pub contact: Vec<String>,
    /// ConformanceReport: a link to the CI job or run that produced the report.
    #[arg(long, env = "NETPOL_ADDITIONAL_INFO")]
    pub additional_info: Option<String>,
}

impl ReportArgs {
    /// The implementation the report names, `None` without `--report-output`. Every field is
    /// required (upstream refuses empty ones too); the error lists each missing flag.
    pub fn implementation(&self) -> Result<Option<Implementation>, String> {
        if self.report_output.is_none() {
            return Ok(None);
        }
        let contact: Vec<String> = self
            .contact
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        let mut missing = Vec::new();
        for (flag, env, value) in [
            (
                "--organization",
                "NETPOL_ORGANIZATION",
                given(&self.organization),
            ),
            ("--project", "NETPOL_PROJECT", given(&self.project)),
            ("--url", "NETPOL_URL", given(&self.url)),
            (
                "--version",
                "NETPOL_VERSION",
                given(&self.implementation_version),
            ),
            (
                "--contact",
                "NETPOL_CONTACT",
                contact.first().map(String::as_str),
            ),
            (
                "--additional-info",
                "NETPOL_ADDITIONAL_INFO",
                given(&self.additional_info),
            ),
        ] {
            if value.is_none() {
                missing.push(format!("{flag} ({env})"));
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "--report-output needs the implementation's details; missing: {}",
                missing.join(", ")
            ));
        }
        let text = |v: &Option<String>| given(v).unwrap_or_default().to_string();
        Ok(Some(Implementation {
            additional_information: text(&self.additional_info),
            contact,
            organization: text(&self.organization),
            project: text(&self.project),
            url: text(&self.url),
            version: text(&self.implementation_version),
        }))
    }
}

/// A flag's value, trimmed, when it is not empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `implementation`: who made what was tested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Implementation {
    /// A link to the CI job that produced the report.
    pub additional_information: String,
    /// Maintainers' contacts.
    pub contact: Vec<String>,
    /// The maintaining organization.
    pub organization: String,
    /// The project.
    pub project: String,
    /// Where to read about it.
    pub url: String,
    /// The version tested.
    pub version: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConformanceReport {
    /// [`API_VERSION`].
    pub api_version: String,
    /// When the report was made: the end of the run, RFC 3339, UTC.
    pub date: String,
    /// What was tested.
    pub implementation: Implementation,
    /// [`KIND`].
    pub kind: String,
    /// The network-policy-api release the tests follow: that of the newest API version in the
    /// report (the v1alpha1 profiles follow v0.1.7, ClusterNetworkPolicy v0.2.0; each profile's
    /// `summary` names its own).
    #[serde(rename = "networkPolicyV2APIVersion")]
    pub network_policy_v2_api_version: String,
    /// One per profile that has tests in the run.
    pub profiles: Vec<ProfileReport>,
}

/// One profile's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileReport {
    /// Present when an experimental test of the profile counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental: Option<ExperimentalStatus>,
    /// The profile's name.
    pub name: String,
    /// The standard level.
    pub standard: Status,
}

/// The results at one level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Failed tests' short names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_tests: Vec<String>,
    /// `success`, `partial` or `failure`.
    pub result: Outcome,
    /// Skipped tests' short names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_tests: Vec<String>,
    /// The counts.
    pub statistics: Statistics,
    /// One line for people.
    pub summary: String,
}

/// The experimental level: a status and the experimental features declared or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentalStatus {
    /// The results.
    #[serde(flatten)]
    pub status: Status,
    /// The profile's experimental features the run judged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_features: Vec<String>,
    /// The profile's experimental features it did not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_features: Vec<String>,
}

/// `statistics`, capitalised as upstream's untagged Go struct marshals it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Statistics {
    /// Tests that failed.
    #[serde(rename = "Failed")]
    pub failed: u32,
    /// Tests that passed.
    #[serde(rename = "Passed")]
    pub passed: u32,
    /// Tests that were skipped.
    #[serde(rename = "Skipped")]
    pub skipped: u32,
}

/// A level's `result`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every counted test passed.
    #[default]
    Success,
    /// None failed, some were skipped.
    Partial,
    /// Some failed.
    Failure,
}

impl Status {
    fn add(&mut self, counted: Counted, short_name: &str) {
        match counted {
            Counted::Passed => self.statistics.passed += 1,
            Counted::Failed => {
                self.statistics.failed += 1;
                self.failed_tests.push(short_name.to_string());
            }
            Counted::Skipped => {
                self.statistics.skipped += 1;
                self.skipped_tests.push(short_name.to_string());
            }
        }
    }

    fn conclude(&mut self, summary: String) {
        self.result = if self.statistics.failed > 0 {
            Outcome::Failure
        } else if self.statistics.skipped > 0 {
            Outcome::Partial
        } else {
            Outcome::Success
        };
        self.failed_tests.sort();
        self.skipped_tests.sort();
        self.summary = summary;
    }
}

/// The network-policy-api release an API version's tests follow.
fn release(api: ApiVersion) -> &'static str {
    match api {
        ApiVersion::V1alpha1 => netpol_api::V1ALPHA1_BUNDLE_VERSION,
        ApiVersion::V1alpha2 => netpol_api::V1ALPHA2_BUNDLE_VERSION,
    }
}

/// The report of a run: `judged` is the run's feature selection (what becomes
/// `supportedFeatures`), `implementation` comes from [`ReportArgs::implementation`].
pub fn conformance_report(
    run: &RunReport,
    judged: &Selection,
    implementation: &Implementation,
) -> ConformanceReport {
    let mut profiles = Vec::new();
    let mut newest: Option<ApiVersion> = None;
    for profile in PROFILES {
        let trials: Vec<&TrialReport> = run.trials.iter().filter(|t| profile.contains(t)).collect();
        if trials.is_empty() {
            continue;
        }
        newest = newest.max(Some(profile.api_version));
        let mut standard = Status::default();
        let mut experimental: Option<Status> = None;
        let mut not_supported = (Vec::new(), Vec::new());
        for t in &trials {
            let is_experimental = profile.is_experimental(t);
            match Counted::of(&t.outcome) {
                Some(counted) if is_experimental => experimental
                    .get_or_insert_with(Status::default)
                    .add(counted, &t.name),
                Some(counted) => standard.add(counted, &t.name),
                None if is_experimental => not_supported.1.push(t.name.as_str()),
                None => not_supported.0.push(t.name.as_str()),
            }
        }
        let summary = |not_supported: &mut Vec<&str>| {
            not_supported.sort();
            let mut line = format!(
                "{} as in network-policy-api {}, judged by netpol-conformance {}",
                profile.api_version.as_str(),
                release(profile.api_version),
                run.suite_version
            );
            if !not_supported.is_empty() {
                line.push_str(&format!(
                    "; not supported, so not counted: {}",
                    not_supported.join(", ")
                ));
            }
            line
        };
        standard.conclude(summary(&mut not_supported.0));
        let experimental = experimental.map(|mut status| {
            status.conclude(summary(&mut not_supported.1));
            let (supported, unsupported): (Vec<&str>, Vec<&str>) = profile
                .experimental()
                .partition(|f| judged.judges(f).is_ok());
            ExperimentalStatus {
                status,
                supported_features: supported.into_iter().map(String::from).collect(),
                unsupported_features: unsupported.into_iter().map(String::from).collect(),
            }
        });
        profiles.push(ProfileReport {
            experimental,
            name: profile.name.to_string(),
            standard,
        });
    }
    let ended = run.started + run.duration;
    ConformanceReport {
        api_version: API_VERSION.to_string(),
        date: rfc3339(ended),
        implementation: implementation.clone(),
        kind: KIND.to_string(),
        network_policy_v2_api_version: release(newest.unwrap_or(ApiVersion::V1alpha2)).to_string(),
        profiles,
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The report as YAML.
pub fn render(report: &ConformanceReport) -> String {
    serde_saphyr::to_string(report)
        .unwrap_or_else(|e| format!("# rendering the ConformanceReport failed: {e}\n"))
}

/// Writes the report's YAML (creating its directory).
pub fn write(report: &ConformanceReport, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_feature_is_a_known_feature_and_each_profile_has_one_standard() {
        for p in PROFILES {
            for f in p.features {
                assert!(level(f).is_some(), "{} names unknown feature {f}", p.name);
            }
            let standard: Vec<&str> = p
                .features
                .iter()
                .copied()
                .filter(|f| level(f) == Some(Level::Standard))
                .collect();
            assert_eq!(standard, [p.name], "{}", p.name);
            assert_eq!(p.experimental().count(), 2, "{}", p.name);
        }
    }

    #[test]
    fn outcomes_count_as_upstream_results() {
        let msg = || "m".to_string();
        assert_eq!(Counted::of(&TrialOutcome::Passed), Some(Counted::Passed));
        assert_eq!(
            Counted::of(&TrialOutcome::Error { message: msg() }),
            Some(Counted::Failed)
        );
        assert_eq!(
            Counted::of(&TrialOutcome::Partial { skipped: vec![] }),
            Some(Counted::Skipped)
        );
        assert_eq!(
            Counted::of(&TrialOutcome::NotSupported { reason: msg() }),
            None
        );
    }

    #[test]
    fn missing_implementation_details_are_named_with_their_variables() {
        let args = ReportArgs {
            report_output: Some("r.yaml".into()),
            organization: Some("acme".into()),
            url: Some("  ".into()),
            contact: vec![" ".into()],
            ..Default::default()
        };
        let e = args.implementation().unwrap_err();
        assert_eq!(
            e,
            "--report-output needs the implementation's details; missing: --project \
             (NETPOL_PROJECT), --url (NETPOL_URL), --version (NETPOL_VERSION), --contact \
             (NETPOL_CONTACT), --additional-info (NETPOL_ADDITIONAL_INFO)"
        );
        assert_eq!(ReportArgs::default().implementation(), Ok(None));
    }
}
