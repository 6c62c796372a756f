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

/// The components of one kind.
pub fn of_kind(kind: &str) -> Vec<&'static Builtin> {
    all().into_iter().filter(|b| b.kind == kind).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn schedules_register_themselves() {
        let names: Vec<&str> = super::of_kind("schedule").iter().map(|b| b.name).collect();
        assert_eq!(names, ["cosine", "linear", "scaled_linear"]);
    }
}
