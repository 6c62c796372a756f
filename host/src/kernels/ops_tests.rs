//! The layout ops ([`swap_rows_cols`], [`cat_channels`]) against burn's
//! `swap_dims` and `cat`: outputs and gradients through burn's autodiff.
//! Both sides only move values, so they must agree bit for bit.

use super::*;
use burn::tensor::Distribution;
use burn_autodiff::Autodiff;

type Ad = Autodiff<Flex>;

fn random<const D: usize>(shape: [usize; D]) -> Tensor<Ad, D> {
    let t = Tensor::<Flex, D>::random(shape, Distribution::Uniform(-1.0, 1.0), &Default::default());
    Tensor::from_inner(t).require_grad()
}

fn bits<const D: usize>(t: Tensor<Flex, D>) -> (Vec<usize>, Vec<u32>) {
    let dims = t.dims().to_vec();
    let v = t.into_data().to_vec::<f32>().unwrap();
    (dims, v.iter().map(|x| x.to_bits()).collect())
}

/// `Σ out·weights` for weights that differ per element, so every gradient
/// value is distinct.
fn loss<const D: usize>(out: Tensor<Ad, D>) -> Tensor<Ad, 1> {
    let w = Tensor::<Flex, D>::random(out.dims(), Distribution::Uniform(-1.0, 1.0), &out.device());
    (out * Tensor::from_inner(w)).sum()
}

#[test]
fn swap_rows_cols_is_burns_swap_dims_with_its_gradient() {
    // A contiguous operand, and a swapped view of one; each side gets its
    // own leaf with the same values.
    for (shape, swapped) in [([3, 5, 7], false), ([3, 7, 5], true)] {
        let value = random(shape).inner();
        let leaf = || Tensor::<Ad, 3>::from_inner(value.clone()).require_grad();
        let (l1, l2) = (leaf(), leaf());
        let input = |l: &Tensor<Ad, 3>| {
            if swapped {
                l.clone().swap_dims(1, 2)
            } else {
                l.clone()
            }
        };
        let ours = swap_rows_cols(&input(&l1)).expect("the CPU backend");
        let burns = input(&l2).swap_dims(1, 2);
        assert_eq!(bits(ours.clone().inner()), bits(burns.clone().inner()));
        <Flex as Backend>::seed(&Default::default(), 7);
        let g1 = loss(ours).backward();
        <Flex as Backend>::seed(&Default::default(), 7);
        let g2 = loss(burns).backward();
        assert_eq!(bits(l1.grad(&g1).unwrap()), bits(l2.grad(&g2).unwrap()));
    }
    // Untracked operands give the same values.
    let plain = random([2, 3, 4]).inner();
    let untracked = Tensor::<Ad, 3>::from_inner(plain.clone());
    let ours = swap_rows_cols(&untracked).unwrap().inner();
    assert_eq!(bits(ours), bits(plain.swap_dims(1, 2)));
}

#[test]
fn cat_channels_is_burns_cat_with_its_gradients() {
    let (a, b) = (random([2, 3, 4, 5]).inner(), random([2, 6, 4, 5]).inner());
    let leaves = || {
        let leaf = |t: &Tensor<Flex, 4>| Tensor::<Ad, 4>::from_inner(t.clone()).require_grad();
        (leaf(&a), leaf(&b))
    };
    let ((a1, b1), (a2, b2)) = (leaves(), leaves());
    let ours = cat_channels(&a1, &b1).expect("the CPU backend");
    let burns = Tensor::cat(vec![a2.clone(), b2.clone()], 1);
    assert_eq!(bits(ours.clone().inner()), bits(burns.clone().inner()));
    // `b` is used again after the concatenation (a U-Net's skip), so its
    // gradient is a sum of two.
    let extra = |b: &Tensor<Ad, 4>| b.clone().mul_scalar(3.0).sum();
    <Flex as Backend>::seed(&Default::default(), 11);
    let g1 = (loss(ours) + extra(&b1)).backward();
    <Flex as Backend>::seed(&Default::default(), 11);
    let g2 = (loss(burns) + extra(&b2)).backward();
    for (t1, t2) in [(&a1, &a2), (&b1, &b2)] {
        assert_eq!(bits(t1.grad(&g1).unwrap()), bits(t2.grad(&g2).unwrap()));
    }
    // Three dims, and a non-contiguous operand.
    let (a, b) = (random([4, 2, 3]), random([4, 3, 5]).swap_dims(1, 2));
    let ours = cat_channels(&a, &b).unwrap();
    let burns = Tensor::cat(vec![a, b], 1);
    assert_eq!(bits(ours.inner()), bits(burns.inner()));
}

#[test]
fn cat_channels_declines_parts_that_do_not_line_up() {
    assert!(cat_channels(&random([2, 3, 4]), &random([2, 3, 5])).is_none());
    assert!(cat_channels(&random([2, 3, 4]), &random([3, 3, 4])).is_none());
}
