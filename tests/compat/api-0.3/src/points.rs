//! Injection-point patterns: exact names (`mid.res.0`) or globs where `*`
//! matches any run of characters (`down.*`, `*.res.0`, `*`). One matcher, used
//! by plugins and the host alike.

/// Whether `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic wildcard matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && p[i] == n[j] && p[i] != '*' {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Whether `pattern` has a wildcard.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains('*')
}

/// The names among `available` that the patterns select, in `available`'s
/// order; errors name a pattern that selects nothing.
pub fn resolve<'a>(
    patterns: &[String],
    available: &'a [String],
) -> Result<Vec<&'a String>, String> {
    for p in patterns {
        if !available.iter().any(|a| matches(p, a)) {
            let what = if is_glob(p) {
                "matches no injection point"
            } else {
                "is not an injection point"
            };
            let list = if available.is_empty() {
                "the run has no denoiser".to_owned()
            } else {
                format!("the model has: {}", available.join(", "))
            };
            return Err(format!("`{p}` {what} of this model ({list})"));
        }
    }
    Ok(available
        .iter()
        .filter(|a| patterns.iter().any(|p| matches(p, a)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_documented() {
        assert!(matches("mid.res.0", "mid.res.0"));
        assert!(!matches("mid.res.0", "mid.res.1"));
        assert!(matches("down.*", "down.0.res.1"));
        assert!(!matches("down.*", "up.0.res.1"));
        assert!(matches("*.res.0", "up.2.res.0"));
        assert!(matches("*", "temb"));
        assert!(matches("up.*.res.*", "up.1.res.2"));
        assert!(!matches("up.*.res.1", "up.1.res.2"));
    }

    #[test]
    fn resolve_keeps_model_order_and_names_a_bad_pattern() {
        let avail: Vec<String> = ["temb", "down.0.res.0", "mid.res.0", "up.0.res.0"]
            .map(String::from)
            .to_vec();
        let got = resolve(&["up.*".into(), "mid.res.0".into()], &avail).unwrap();
        assert_eq!(got, vec![&avail[2], &avail[3]]);
        let err = resolve(&["down.9.res.0".into()], &avail).unwrap_err();
        assert!(
            err.contains("`down.9.res.0` is not an injection point"),
            "{err}"
        );
        assert!(err.contains("down.0.res.0, mid.res.0"), "{err}");
    }
}
