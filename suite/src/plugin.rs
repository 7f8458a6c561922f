//! The Sonobuoy plugin definition as shipped (`plugin/netpol-conformance.yaml`, embedded), and
//! `netpol-conformance sonobuoy-plugin`, which prints it with another image or service account
//! the way `sonobuoy gen plugin` prints a generated one.
//!
//! As shipped, the plugin pod runs as Sonobuoy's own service account, so `sonobuoy run --plugin
//! plugin/netpol-conformance.yaml` works on a cluster where nothing was applied beforehand. The
//! least-privilege identity of `plugin/rbac.yaml` is the option: apply it, then run the
//! definition printed with `--service-account netpol-conformance`.

/// `plugin/netpol-conformance.yaml`, byte for byte.
pub const DEFINITION: &str = include_str!("../../plugin/netpol-conformance.yaml");

/// The service account the shipped definition names: the one `sonobuoy run` creates in its
/// namespace for its plugins.
pub const SONOBUOY_SERVICE_ACCOUNT: &str = "sonobuoy-serviceaccount";

/// The account `plugin/rbac.yaml` creates, with only what the suite needs.
pub const LEAST_PRIVILEGE_SERVICE_ACCOUNT: &str = "netpol-conformance";

/// What to change in the shipped definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The suite image the plugin's container runs.
    pub image: Option<String>,
    /// The service account of Sonobuoy's namespace the plugin pod runs as.
    pub service_account: Option<String>,
}

/// Why an override cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// `--image` is not an image reference.
    #[error("--image `{0}` is not an image reference (no spaces, no `#`)")]
    Image(String),
    /// `--service-account` is not a DNS subdomain.
    #[error(
        "--service-account `{0}` is not a valid service account name \
         (lower-case letters, digits, `-` and `.`, at most 253 characters)"
    )]
    ServiceAccount(String),
    /// The embedded definition does not have exactly one line to replace (a packaging bug).
    #[error("the embedded plugin definition has {hits} `{key}` lines, expected one")]
    Definition {
        /// The key looked for.
        key: String,
        /// How many lines start with it.
        hits: usize,
    },
}

/// The shipped definition with `overrides` applied; comments and layout stay as they are.
pub fn render(overrides: &Overrides) -> Result<String, PluginError> {
    let mut out = DEFINITION.to_string();
    if let Some(image) = &overrides.image {
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c == '#') {
            return Err(PluginError::Image(image.clone()));
        }
        out = replace_value(&out, "  image: ", image)?;
    }
    if let Some(account) = &overrides.service_account {
        if !is_dns_subdomain(account) {
            return Err(PluginError::ServiceAccount(account.clone()));
        }
        out = replace_value(&out, "  serviceAccountName: ", account)?;
    }
    Ok(out)
}

/// Replaces the value of the one line that starts with `prefix` (a key at a fixed indent).
fn replace_value(text: &str, prefix: &str, value: &str) -> Result<String, PluginError> {
    let hits = text.lines().filter(|l| l.starts_with(prefix)).count();
    if hits != 1 {
        return Err(PluginError::Definition {
            key: prefix.trim().to_string(),
            hits,
        });
    }
    Ok(text
        .split_inclusive('\n')
        .map(|line| {
            if line.starts_with(prefix) {
                let end = if line.ends_with('\n') { "\n" } else { "" };
                format!("{prefix}{value}{end}")
            } else {
                line.to_string()
            }
        })
        .collect())
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect()
    }

    #[test]
    fn the_shipped_definition_runs_as_sonobuoys_own_account() {
        assert_eq!(
            value(DEFINITION, "  serviceAccountName: "),
            [SONOBUOY_SERVICE_ACCOUNT]
        );
        assert_eq!(render(&Overrides::default()).unwrap(), DEFINITION);
    }

    #[test]
    fn overrides_change_exactly_their_line() {
        let out = render(&Overrides {
            image: Some("registry.example.com/netpol-conformance:dev".into()),
            service_account: Some(LEAST_PRIVILEGE_SERVICE_ACCOUNT.into()),
        })
        .unwrap();
        assert_eq!(
            value(&out, "  image: "),
            ["registry.example.com/netpol-conformance:dev"]
        );
        assert_eq!(
            value(&out, "  serviceAccountName: "),
            [LEAST_PRIVILEGE_SERVICE_ACCOUNT]
        );
        let changed = DEFINITION
            .lines()
            .zip(out.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 2);
        assert_eq!(DEFINITION.lines().count(), out.lines().count());
    }

    #[test]
    fn bad_names_are_refused_with_the_flag_named() {
        let err = render(&Overrides {
            service_account: Some("Net_Pol".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err, PluginError::ServiceAccount("Net_Pol".into()));
        assert!(
            err.to_string().contains("--service-account `Net_Pol`"),
            "{err}"
        );
        let err = render(&Overrides {
            image: Some("a b".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--image `a b`"), "{err}");
    }

    #[test]
    fn a_key_the_definition_lacks_is_a_packaging_error() {
        let err = replace_value("kind: Pod\n", "  image: ", "x").unwrap_err();
        assert_eq!(
            err,
            PluginError::Definition {
                key: "image:".into(),
                hits: 0
            }
        );
    }
}
