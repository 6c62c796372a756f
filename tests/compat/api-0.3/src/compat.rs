//! The one function that decides whether a plugin built against one version of
//! `dtx-plugin-api` can run in a host built against another.
//!
//! The rule (documented in `docs/abi-policy.md`): the major versions are equal, and
//! the plugin's minor version is not newer than the host's. Minor versions only
//! append to the prefix-type vtables, so a host reads everything an older plugin
//! has; a plugin built against a newer minor may call entries the host lacks.
//! Patch versions and pre-release tags do not matter. The major version is the
//! compatibility line even while it is 0 (unlike cargo's caret rule for 0.x).

use std::fmt;

/// A parsed `major.minor.patch` version (pre-release and build tags dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    /// Incompatible changes.
    pub major: u64,
    /// Appended vtable fields, new op codes.
    pub minor: u64,
    /// Fixes.
    pub patch: u64,
}

impl ApiVersion {
    /// Parses `1.2.3`, `1.2.3-rc.1`, `1.2.3+build`; `None` when it is not a version.
    pub fn parse(text: &str) -> Option<ApiVersion> {
        let core = text.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let version = ApiVersion {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next().unwrap_or(Some(0))?,
        };
        parts.next().is_none().then_some(version)
    }

    /// This crate's version: the version plugins built now are built against.
    pub fn current() -> ApiVersion {
        ApiVersion::parse(crate::abi::API_VERSION).expect("CARGO_PKG_VERSION is a version")
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Whether a plugin built against `plugin` runs in a host built against `host`.
pub fn is_compatible(plugin: ApiVersion, host: ApiVersion) -> bool {
    plugin.major == host.major && plugin.minor <= host.minor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ApiVersion {
        ApiVersion::parse(s).unwrap()
    }

    #[test]
    fn parses_and_drops_tags() {
        assert_eq!(
            v("0.1.0"),
            ApiVersion {
                major: 0,
                minor: 1,
                patch: 0
            }
        );
        assert_eq!(v("1.2.3-rc.1"), v("1.2.3"));
        assert_eq!(v("1.2.3+abc"), v("1.2.3"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert!(ApiVersion::parse("1").is_none());
        assert!(ApiVersion::parse("1.x.0").is_none());
        assert!(ApiVersion::parse("1.2.3.4").is_none());
    }

    #[test]
    fn older_minor_loads_newer_minor_and_other_major_do_not() {
        assert!(is_compatible(v("0.1.0"), v("0.1.0")));
        assert!(
            is_compatible(v("0.1.5"), v("0.1.0")),
            "patch does not matter"
        );
        assert!(is_compatible(v("0.1.0"), v("0.3.2")), "older minor loads");
        assert!(
            !is_compatible(v("0.2.0"), v("0.1.0")),
            "newer minor is refused"
        );
        assert!(
            !is_compatible(v("1.0.0"), v("0.1.0")),
            "other major is refused"
        );
        assert!(
            !is_compatible(v("0.1.0"), v("1.1.0")),
            "other major is refused"
        );
    }
}
