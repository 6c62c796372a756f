//! The group-norm and SiLU kernels against f64 references: the forward
//! formula evaluated directly, and gradients by central finite differences
//! of `L = Σ out·w` in f64 (step 1e-4, tolerance 1e-4 of the largest
//! gradient, which covers the f32 kernels' rounding). `exp` against f64's.

use super::*;
use crate::kernels::test_values as values;

/// The forward in f64.
fn reference(g: &NormGeometry, x: &[f64], gamma: &[f64], beta: &[f64], silu: bool) -> Vec<f64> {
    let block = g.c / g.groups * g.hw;
    let mut out = vec![0.0; x.len()];
    for (b, (o, x)) in out.chunks_mut(block).zip(x.chunks(block)).enumerate() {
        let m = block as f64;
        let mean = x.iter().sum::<f64>() / m;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        for (i, (o, v)) in o.iter_mut().zip(x).enumerate() {
            let c = (b % g.groups) * (g.c / g.groups) + i / g.hw;
            let y = (v - mean) / (var + g.eps).sqrt() * gamma[c] + beta[c];
            *o = if silu { y / (1.0 + (-y).exp()) } else { y };
        }
    }
    out
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| v as f64).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64) {
    let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= rel * scale,
            "{what}[{i}]: {a} vs {b} (scale {scale})"
        );
    }
}

/// Central differences of `Σ reference(·)·w` with respect to each entry of
/// one operand (`which`: 0 x, 1 γ, 2 β).
fn numeric(g: &NormGeometry, ops: [&[f64]; 3], w: &[f64], silu: bool, which: usize) -> Vec<f64> {
    let h = 1e-4;
    let loss = |ops: [&[f64]; 3]| -> f64 {
        reference(g, ops[0], ops[1], ops[2], silu)
            .iter()
            .zip(w)
            .map(|(o, w)| o * w)
            .sum()
    };
    (0..ops[which].len())
        .map(|i| {
            let mut plus = ops[which].to_vec();
            let mut minus = plus.clone();
            plus[i] += h;
            minus[i] -= h;
            let with = |v: &[f64]| {
                let mut o = ops;
                o[which] = v;
                loss(o)
            };
            (with(&plus) - with(&minus)) / (2.0 * h)
        })
        .collect()
}

fn check(g: NormGeometry, silu: bool) {
    let x = values(g.n * g.c * g.hw, 1, 2.0);
    let gamma = values(g.c, 2, 1.5);
    let beta = values(g.c, 3, 1.0);
    let w = values(x.len(), 4, 1.0);
    let (out, mean, rstd) = forward(&g, &x, &gamma, &beta, silu);
    assert_close(
        "out",
        &out,
        &reference(&g, &f64s(&x), &f64s(&gamma), &f64s(&beta), silu),
        1e-5,
    );
    let (dx, dgamma, dbeta) = backward(&g, &x, &gamma, &beta, &mean, &rstd, &w, silu);
    let (xd, gd, bd, wd) = (f64s(&x), f64s(&gamma), f64s(&beta), f64s(&w));
    let ops = [xd.as_slice(), gd.as_slice(), bd.as_slice()];
    assert_close("dx", &dx, &numeric(&g, ops, &wd, silu, 0), 1e-4);
    assert_close("dgamma", &dgamma, &numeric(&g, ops, &wd, silu, 1), 1e-4);
    assert_close("dbeta", &dbeta, &numeric(&g, ops, &wd, silu, 2), 1e-4);
}

#[test]
fn group_norm_matches_its_formula_and_finite_differences() {
    for silu in [false, true] {
        check(
            NormGeometry {
                n: 2,
                c: 8,
                hw: 6,
                groups: 4,
                eps: 1e-5,
            },
            silu,
        );
        check(
            NormGeometry {
                n: 3,
                c: 6,
                hw: 5,
                groups: 1,
                eps: 1e-6,
            },
            silu,
        );
        check(
            NormGeometry {
                n: 1,
                c: 4,
                hw: 9,
                groups: 4,
                eps: 1e-5,
            },
            silu,
        );
    }
}

#[test]
fn silu_matches_its_formula_and_derivative() {
    let x = values(40_000, 5, 12.0);
    let dout = values(x.len(), 6, 1.0);
    let want: Vec<f64> = x
        .iter()
        .map(|&v| v as f64 / (1.0 + (-(v as f64)).exp()))
        .collect();
    assert_close("silu", &silu(&x), &want, 2e-7);
    let h = 1e-4;
    let s = |v: f64| v / (1.0 + (-v).exp());
    let dwant: Vec<f64> = x
        .iter()
        .zip(&dout)
        .map(|(&v, &g)| g as f64 * (s(v as f64 + h) - s(v as f64 - h)) / (2.0 * h))
        .collect();
    assert_close("silu'", &silu_backward(&x, &dout), &dwant, 1e-5);
}

#[test]
fn exp_is_within_two_ulp_of_f64() {
    let mut x = -87.0f32;
    while x <= 88.0 {
        let want = (x as f64).exp();
        let got = exp(x) as f64;
        let ulp = (want as f32).abs() * f32::EPSILON;
        assert!(
            (got - want).abs() <= 2.0 * ulp as f64,
            "exp({x}) = {got}, f64 {want}"
        );
        x += 0.0137;
    }
    assert!(exp(-1000.0) > 0.0 && exp(1000.0).is_finite());
    // The vectorised build of the same function (AVX-512 or AVX2 where the
    // CPU has them) gives the same bits, the clamped ends included.
    let xs: Vec<f32> = (0..13_000).map(|i| -90.0 + i as f32 * 0.0137).collect();
    let scalar: Vec<u32> = xs.iter().map(|&x| exp(x).to_bits()).collect();
    let vector: Vec<u32> =
        crate::kernels::simd::wide!(xs.iter().map(|&x| exp(x).to_bits()).collect());
    assert_eq!(scalar, vector);
}
