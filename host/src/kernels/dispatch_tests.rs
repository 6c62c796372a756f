//! [`conv2d`] against burn's own `conv2d` on the CPU backend: outputs and
//! the gradients of every operand through burn's autodiff, tracked and
//! untracked, with and without bias, and the fallbacks. Tolerance: 1e-5 of
//! the largest magnitude (both sides sum the same f32 products in another
//! order).

use super::*;
use crate::kernels::close_to_burn as close;
use burn::tensor::module;
use burn::tensor::{Distribution, Tensor};

type Ad = Autodiff<Flex>;

fn ours(
    x: Tensor<Ad, 4>,
    w: Tensor<Ad, 4>,
    b: Option<Tensor<Ad, 1>>,
    o: ConvOptions<2>,
) -> Tensor<Ad, 4> {
    let out = conv2d::<Ad>(
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        b.map(|b| b.into_primitive().tensor()),
        o,
    );
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(out))
}

/// Runs `f` and returns the kernel calls it made: `[forward, backward]`.
fn calls(f: impl FnOnce()) -> [usize; 2] {
    let before = KERNEL_CALLS.with(|c| c.get());
    f();
    let after = KERNEL_CALLS.with(|c| c.get());
    [after[0] - before[0], after[1] - before[1]]
}

fn compare(x_shape: [usize; 4], w_shape: [usize; 4], bias: bool, o: ConvOptions<2>) -> [usize; 2] {
    calls(|| compare_inner(x_shape, w_shape, bias, o))
}

fn compare_inner(x_shape: [usize; 4], w_shape: [usize; 4], bias: bool, o: ConvOptions<2>) {
    let dev = Default::default();
    let x = Tensor::<Flex, 4>::random(x_shape, Distribution::Uniform(-1.0, 1.0), &dev);
    let w = Tensor::<Flex, 4>::random(w_shape, Distribution::Uniform(-1.0, 1.0), &dev);
    let b = Tensor::<Flex, 1>::random([w_shape[0]], Distribution::Uniform(-1.0, 1.0), &dev);
    let leaves = || {
        (
            Tensor::<Ad, 4>::from_inner(x.clone()).require_grad(),
            Tensor::<Ad, 4>::from_inner(w.clone()).require_grad(),
            Tensor::<Ad, 1>::from_inner(b.clone()).require_grad(),
        )
    };
    let (x1, w1, b1) = leaves();
    let (x2, w2, b2) = leaves();
    let y1 = ours(x1.clone(), w1.clone(), bias.then(|| b1.clone()), o.clone());
    let y2 = module::conv2d(x2.clone(), w2.clone(), bias.then(|| b2.clone()), o.clone());
    close("y", y1.clone().inner(), y2.clone().inner());
    // A loss that weighs every output differently.
    let weights = Tensor::<Ad, 4>::from_inner(Tensor::random(
        y1.dims(),
        Distribution::Uniform(-1.0, 1.0),
        &dev,
    ));
    let g1 = (y1 * weights.clone()).sum().backward();
    let g2 = (y2 * weights).sum().backward();
    close("dx", x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap());
    close("dw", w1.grad(&g1).unwrap(), w2.grad(&g2).unwrap());
    if bias {
        close("db", b1.grad(&g1).unwrap(), b2.grad(&g2).unwrap());
    }
    // Untracked: the inner backend directly, and autodiff tensors without grads.
    let flex_y = conv2d::<Flex>(
        x.clone().into_primitive().tensor(),
        w.clone().into_primitive().tensor(),
        bias.then(|| b.clone().into_primitive().tensor()),
        o.clone(),
    );
    let want = module::conv2d(x.clone(), w.clone(), bias.then(|| b.clone()), o.clone());
    close(
        "flex y",
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(flex_y)),
        want.clone(),
    );
    let plain = ours(
        Tensor::from_inner(x.clone()),
        Tensor::from_inner(w.clone()),
        bias.then(|| Tensor::from_inner(b.clone())),
        o,
    );
    close("untracked y", plain.inner(), want);
}

#[test]
fn conv2d_matches_burns_op_and_gradients() {
    compare(
        [4, 8, 8, 8],
        [6, 8, 3, 3],
        true,
        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    );
    compare(
        [3, 4, 9, 9],
        [4, 4, 3, 3],
        true,
        ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
    );
    compare(
        [2, 4, 9, 9],
        [4, 4, 3, 3],
        false,
        ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
    );
    compare(
        [2, 6, 5, 7],
        [3, 6, 1, 1],
        true,
        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
    );
}

#[test]
fn grouped_and_dilated_convolutions_fall_back_to_burn() {
    compare(
        [2, 4, 6, 6],
        [4, 2, 3, 3],
        true,
        ConvOptions::new([1, 1], [1, 1], [1, 1], 2),
    );
    compare(
        [2, 3, 7, 7],
        [2, 3, 3, 3],
        true,
        ConvOptions::new([1, 1], [2, 2], [2, 2], 1),
    );
}

#[test]
fn only_the_tracked_operands_get_gradients() {
    let dev = Default::default();
    let x = Tensor::<Ad, 4>::random([2, 3, 5, 5], Distribution::Default, &dev);
    let w = Tensor::<Ad, 4>::random([4, 3, 3, 3], Distribution::Default, &dev).require_grad();
    let o = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let grads = ours(x.clone(), w.clone(), None, o).sum().backward();
    assert!(x.grad(&grads).is_none());
    assert_eq!(w.grad(&grads).unwrap().dims(), [4, 3, 3, 3]);
}

#[test]
fn the_cast_recognises_only_its_own_type() {
    assert_eq!(cast::<u32, u32>(7), Ok(7));
    assert_eq!(cast::<u32, i32>(7), Err(7));
}

/// Attention through burn's ops: the head split, `softmax(q kᵀ/sqrt(d)) v`,
/// the merge.
fn attention_by_ops(
    q: Tensor<Ad, 3>,
    k: Tensor<Ad, 3>,
    v: Tensor<Ad, 3>,
    heads: usize,
) -> Tensor<Ad, 3> {
    let [b, n, w] = q.dims();
    let d = w / heads;
    let split = |t: Tensor<Ad, 3>| t.reshape([b, n, heads, d]).swap_dims(1, 2);
    let s = split(q)
        .matmul(split(k).swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt());
    burn::tensor::activation::softmax(s, 3)
        .matmul(split(v))
        .swap_dims(1, 2)
        .reshape([b, n, w])
}

#[test]
fn attention_matches_burns_ops_and_gradients() {
    let dev = Default::default();
    // 300 tokens: two full blocks of query rows and a partial one.
    for (b, n, heads, d) in [(3, 7, 2, 4), (2, 64, 4, 8), (1, 5, 1, 3), (2, 300, 2, 8)] {
        let make = |scale: f64| {
            Tensor::<Flex, 3>::random(
                [b, n, heads * d],
                Distribution::Uniform(-scale, scale),
                &dev,
            )
        };
        let (q, k, v) = (make(2.0), make(2.0), make(1.0));
        let weights = Tensor::<Ad, 3>::from_inner(make(1.0));
        let leaves = || [&q, &k, &v].map(|t| Tensor::<Ad, 3>::from_inner(t.clone()).require_grad());
        let [q1, k1, v1] = leaves();
        let [q2, k2, v2] = leaves();
        let y1 = crate::kernels::attention(&q1, &k1, &v1, heads)
            .expect("the CPU backend has the kernel");
        let y2 = attention_by_ops(q2.clone(), k2.clone(), v2.clone(), heads);
        close("attention y", y1.clone().inner(), y2.clone().inner());
        let g1 = (y1 * weights.clone()).sum().backward();
        let g2 = (y2 * weights).sum().backward();
        close("dq", q1.grad(&g1).unwrap(), q2.grad(&g2).unwrap());
        close("dk", k1.grad(&g1).unwrap(), k2.grad(&g2).unwrap());
        close("dv", v1.grad(&g1).unwrap(), v2.grad(&g2).unwrap());
    }
}
