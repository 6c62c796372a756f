use super::*;

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/eval/metrics.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("index") as usize)
        .collect()
}

/// Relative error, against max(|expected|, 1e-12).
fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

/// Every metric against numpy/scipy (pytorch-fid's FD, clean-fid's KID) on
/// the committed fixture: 1e-6 relative, on full-rank and singular
/// covariances and on both of FD's routes (few images: nuclear norm; many:
/// eigenvalues).
#[test]
fn matches_numpy_scipy_fixture() {
    let f = fixture();
    for c in f["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let dim = c["dim"].as_u64().unwrap() as usize;
        let a = Features::new(floats(&c["a"]), dim);
        let b = Features::new(floats(&c["b"]), dim);
        let fd = frechet_distance(&a, &b).unwrap();
        let want = c["fd"].as_f64().unwrap();
        assert!(rel(fd, want) < 1e-6, "{name}: FD {fd} vs scipy {want}");
        let full = kid_full(&a, &b).unwrap();
        let want = c["kid_full"].as_f64().unwrap();
        assert!(rel(full, want) < 1e-6, "{name}: full KID {full} vs {want}");
        let draws: Vec<(Vec<usize>, Vec<usize>)> = c["subsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (indices(&p[0]), indices(&p[1])))
            .collect();
        let k = kid_with_subsets(&a, &b, &draws).unwrap();
        let want = c["kid_mean"].as_f64().unwrap();
        assert!(rel(k.mean, want) < 1e-6, "{name}: KID {} vs {want}", k.mean);
        let want = c["kid_std"].as_f64().unwrap();
        assert!(
            rel(k.std, want) < 1e-6,
            "{name}: KID std {} vs {want}",
            k.std
        );
        assert_eq!(k.subsets, draws.len());
        let near = nearest_distances(&a, &b).unwrap();
        for (g, w) in near.iter().zip(floats(&c["nearest_a_to_b"])) {
            assert!(rel(*g, w) < 1e-6, "{name}: nearest {g} vs {w}");
        }
        if let Some(p) = c.get("paired") {
            let got = mean_paired_distance(&a, &b).unwrap();
            assert!(rel(got, p.as_f64().unwrap()) < 1e-6, "{name}: paired");
        }
    }
}

fn gaussian(n: usize, d: usize, seed: u64, shift: f64) -> Features {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = StdRng::seed_from_u64(seed);
    Features::new(
        (0..n * d)
            .map(|_| {
                let e: f64 = StandardNormal.sample(&mut rng);
                e + shift
            })
            .collect(),
        d,
    )
}

/// FD of a set with itself is 0 (to round-off) and FD is symmetric; KID
/// tells a shifted distribution from a second draw of the same one.
#[test]
fn a_set_is_at_distance_zero_from_itself() {
    let a = gaussian(50, 5, 1, 0.0);
    let b = gaussian(40, 5, 2, 1.0);
    assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
    let (ab, ba) = (
        frechet_distance(&a, &b).unwrap(),
        frechet_distance(&b, &a).unwrap(),
    );
    assert!(rel(ab, ba) < 1e-9);
    // a mean shift of 1 in each of 5 dimensions adds about 5, plus sampling noise
    assert!(ab > 4.0 && ab < 8.0, "{ab}");
    // KID's cross term keeps k(a_i, a_i), so a set against itself is not 0;
    // two draws of one distribution are near 0, a shifted one is far.
    let shifted = kid_full(&a, &b).unwrap();
    let same = kid(&a, &gaussian(50, 5, 7, 0.0), 10, 40, 0).unwrap();
    assert!(shifted > 0.1, "{shifted}");
    assert!(same.mean.abs() < 0.1 * shifted, "{same:?} vs {shifted}");
}

/// The two routes to tr √(Σ_a Σ_b) agree on the same data: the nuclear
/// norm of X_a X_bᵀ (taken when images are few) and the eigenvalues of
/// √Σ_a Σ_b √Σ_a (taken when dimensions are few), 1e-8 relative.
#[test]
fn fd_routes_agree() {
    let a = gaussian(20, 30, 3, 0.1);
    let b = gaussian(25, 30, 4, 0.0);
    let (xa, xb) = (centred(&a).0, centred(&b).0);
    let by_svd = (&xa * xb.transpose()).singular_values().sum() / (19.0f64 * 24.0).sqrt();
    let sa = xa.transpose() * &xa / 19.0;
    let sb = xb.transpose() * &xb / 24.0;
    let ra = sqrt_psd(sa);
    let by_eig: f64 = SymmetricEigen::new(&ra * sb * &ra)
        .eigenvalues
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    assert!(rel(by_svd, by_eig) < 1e-8, "{by_svd} vs {by_eig}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let a = gaussian(1, 4, 1, 0.0);
    let b = gaussian(10, 4, 2, 0.0);
    assert!(matches!(
        frechet_distance(&a, &b),
        Err(MetricError::TooFew {
            need: 2,
            got: 1,
            ..
        })
    ));
    let c = gaussian(10, 3, 2, 0.0);
    assert_eq!(kid_full(&b, &c), Err(MetricError::Dim(4, 3)));
    let mut d = b.clone();
    d.data[3] = f64::NAN;
    assert_eq!(
        kid(&d, &b, 2, 10, 0),
        Err(MetricError::NonFinite("samples"))
    );
    let empty = Features::new(vec![], 4);
    assert!(nearest_distances(&b, &empty).is_err());
}
