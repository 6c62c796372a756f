//! Built-in components register themselves here with `inventory`, so adding
//! one is a `submit!` next to its code and `dtx list` shows it with no central
//! table to edit. Each entry names its kind (`schedule`, `model`, …), its name
//! as written in manifests, and one line on what it is.

/// A built-in component.
#[derive(Debug)]
pub struct Builtin {
    /// Kind: `model`, `schedule`, `sampler`, `dataset`, `metric`.
    pub kind: &'static str,
    /// Name as written in manifests.
    pub name: &'static str,
    /// One line on what it is.
    pub description: &'static str,
}

inventory::collect!(Builtin);

/// Every registered component, sorted by kind then name.
pub fn all() -> Vec<&'static Builtin> {
    let mut v: Vec<&'static Builtin> = inventory::iter::<Builtin>.into_iter().collect();
    v.sort_by_key(|b| (b.kind, b.name));
    v
}

/// The components of one kind (tests hold the lists against each other).
#[cfg(test)]
pub(crate) fn of_kind(kind: &str) -> Vec<&'static Builtin> {
    all().into_iter().filter(|b| b.kind == kind).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn schedules_register_themselves() {
        let names: Vec<&str> = super::of_kind("schedule").iter().map(|b| b.name).collect();
        assert_eq!(names, ["cosine", "linear", "scaled_linear"]);
    }

    /// `dtx list` and the manifest accept the same names: both come from the
    /// manifest enums' one declaration (`string_enum!` with `listed`).
    #[test]
    fn listed_names_are_the_names_manifests_accept() {
        use crate::manifest::{Sampler, Schedule, SourceKind};
        let listed = |kind: &str| -> Vec<&str> {
            let mut v: Vec<&str> = super::of_kind(kind).iter().map(|b| b.name).collect();
            v.sort();
            v
        };
        let sorted = |names: &[&'static str]| -> Vec<&'static str> {
            let mut v = names.to_vec();
            v.sort();
            v
        };
        assert_eq!(listed("schedule"), sorted(Schedule::VARIANTS));
        assert_eq!(listed("sampler"), sorted(Sampler::VARIANTS));
        // `dtx` (an earlier run's checkpoint) is a source kind, not a model
        let models: Vec<&str> = sorted(SourceKind::VARIANTS)
            .into_iter()
            .filter(|&k| k != "dtx")
            .collect();
        assert_eq!(listed("model"), models);
    }
}
