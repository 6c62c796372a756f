//! Small helpers shared by the host's error messages.

/// The candidate closest to `word` when it is close enough to be a likely
/// typo (case-insensitive match, a longer word that starts with it, or an
/// edit distance of about a third of the word, counting a swap of neighbours
/// as one edit).
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = match word.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|candidate| {
            let (w, c) = (word.to_ascii_lowercase(), candidate.to_ascii_lowercase());
            let d = if w == c {
                0
            } else if c.len() >= 4 && w.starts_with(&c) {
                // `training` for `train`: a longer spelling of the same word.
                limit
            } else {
                edit_distance(&w, &c)
            };
            (d, candidate)
        })
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, candidate)| candidate)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and
/// swaps of two neighbours each cost 1.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_hand_counts() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("stpes", "steps"), 1, "a swap is one edit");
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("steps", "steps"), 0);
    }

    #[test]
    fn nearest_suggests_only_close_words() {
        assert_eq!(nearest("stpes", ["steps", "batch"]), Some("steps"));
        assert_eq!(nearest("zzz", ["steps", "batch"]), None);
    }

    #[test]
    fn nearest_finds_typos_and_ignores_strangers() {
        let keys = ["steps", "batch", "lr", "schedule", "timesteps"];
        assert_eq!(nearest("stpes", keys), Some("steps"));
        assert_eq!(nearest("Steps", keys), Some("steps"));
        assert_eq!(nearest("shedule", keys), Some("schedule"));
        assert_eq!(nearest("learning_rate", keys), None);
        assert_eq!(
            nearest("training", ["run", "train", "target"]),
            Some("train")
        );
        assert_eq!(edit_distance("lamda", "lambda"), 1);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }
}
