//! dtx's own CPU kernels for the ops where burn's flex backend leaves the
//! most time on the table, behind functions with burn's signatures that
//! fall back to burn's op wherever a kernel does not apply.
//!
//! [`conv2d`] takes burn's rank-free primitives of any backend `B`. When `B`
//! is the CPU backend (`Autodiff<Flex>`, or `Flex` itself for untracked
//! work), the operands are f32, groups and dilation are 1 and every size is
//! non-zero, it runs [`conv`]'s kernels (Winograd's F(2×2, 3×3) for 3×3
//! padding-1 convolutions of images 8 pixels wide and more, an implicit
//! GEMM for other stride-1 convolutions, both on AVX-512 CPUs, im2col +
//! GEMM elsewhere) and, under autodiff,
//! registers its own backward step (burn's backend-extension pattern: a
//! [`Backward`] implementation prepared on the operands' graph nodes).
//! Anything else — CUDA, f16, grouped or dilated convolutions — goes to
//! `B::conv2d` unchanged. The backend is recognised by `TypeId`, so the
//! generic model code needs no extra bound.

pub mod adam;
pub mod attention;
pub mod conv;
mod direct;
mod gemm;
pub mod linear;
pub mod norm;
mod ops;
mod scratch;
mod simd;
mod winograd;

pub use adam::{adam_tensors, ema_tensors, sgd_tensors};
pub use linear::linear;
pub use ops::{attention, cat_channels, group_norm, silu, swap_rows_cols};

use burn::backend::Flex;
use burn::tensor::Shape;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use conv::{Geometry, Wanted};
use std::any::Any;

/// `conv2d` with burn's semantics (`x` `[N, C, H, W]`, `weight`
/// `[O, C/groups, KH, KW]`, optional `bias` `[O]`), on dtx's kernels where
/// they apply (see the module docs) and on `B::conv2d` elsewhere.
pub fn conv2d<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    if options.groups != 1 || options.dilation != [1, 1] {
        return B::conv2d(x, weight, bias, options);
    }
    let x = match cast::<_, FloatTensor<Autodiff<Flex>>>(x) {
        Ok(x) => {
            let (weight, bias) = (cast(weight), bias.map(cast));
            return match (weight, bias) {
                (Ok(w), None) => back(tracked_conv2d(x, w, None, options)),
                (Ok(w), Some(Ok(b))) => back(tracked_conv2d(x, w, Some(b), options)),
                (weight, bias) => B::conv2d(
                    back(x),
                    unwrap_either(weight),
                    bias.map(unwrap_either),
                    options,
                ),
            };
        }
        Err(x) => x,
    };
    match cast::<_, FlexTensor>(x) {
        Ok(x) => match (cast(weight), bias.map(cast)) {
            (Ok(w), None) => back(flex_conv2d(x, w, None, &options)),
            (Ok(w), Some(Ok(b))) => back(flex_conv2d(x, w, Some(b), &options)),
            (weight, bias) => B::conv2d(
                back(x),
                unwrap_either(weight),
                bias.map(unwrap_either),
                options,
            ),
        },
        Err(x) => B::conv2d(x, weight, bias, options),
    }
}

/// [`conv2d`] on ranked tensors.
pub fn conv2d_tensor<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let out = conv2d::<B>(
        prim(x),
        prim(weight),
        bias.map(|b| b.into_primitive().tensor()),
        options,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
thread_local! {
    /// Calls of the kernels on this thread (forward, backward), so tests
    /// can tell them from the fallback.
    static KERNEL_CALLS: std::cell::Cell<[usize; 2]> = const { std::cell::Cell::new([0, 0]) };
}

fn count(_which: usize) {
    #[cfg(test)]
    KERNEL_CALLS.with(|c| {
        let mut v = c.get();
        v[_which] += 1;
        c.set(v);
    });
}

/// `t` as a `U` when `T` is `U`, else `t` back.
fn cast<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    let mut slot = Some(t);
    if let Some(u) = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
    {
        return Ok(u);
    }
    match slot {
        Some(t) => Err(t),
        None => unreachable!("the value is taken only when it is a U"),
    }
}

/// `t` back as the caller's type (the caller checked the types are equal).
fn back<T: 'static, U: 'static>(t: T) -> U {
    cast(t).unwrap_or_else(|_| unreachable!("the caller's backend is this type"))
}

/// Either side of a [`cast`] of the caller's tensor, as the caller's type.
fn unwrap_either<T: 'static, U: 'static>(r: Result<U, T>) -> T {
    match r {
        Ok(u) => back(u),
        Err(t) => t,
    }
}

/// The geometry of a convolution the kernels cover, or `None`.
fn geometry(x: &Shape, w: &Shape, options: &ConvOptions<2>) -> Option<Geometry> {
    let (x, w) = (x.to_vec(), w.to_vec());
    let [n, c, h, wd] = <[usize; 4]>::try_from(x).ok()?;
    let [o, ci, kh, kw] = <[usize; 4]>::try_from(w).ok()?;
    let g = Geometry {
        n,
        c,
        h,
        w: wd,
        o,
        k: [kh, kw],
        stride: options.stride,
        padding: options.padding,
    };
    let [oh, ow] = g.out_hw()?;
    (ci == c && [n, c, h, wd, o, kh, kw, oh, ow].iter().all(|&d| d > 0)).then_some(g)
}

/// The f32 values of a flex tensor, contiguous, or `None` for other dtypes.
fn values(t: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    match t.as_slice::<f32>() {
        Some(s) => Some(s.into()),
        None => t
            .to_contiguous()
            .as_slice::<f32>()
            .map(|s| s.to_vec().into()),
    }
}

fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(values, shape))
}

/// The untracked kernel on flex tensors, or burn's op where it does not apply.
fn flex_conv2d(
    x: FlexTensor,
    w: FlexTensor,
    b: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let out = (|| {
        let g = geometry(&x.shape(), &w.shape(), options)?;
        let bias = match &b {
            Some(b) if b.shape().to_vec() == [g.o] => Some(values(b)?),
            Some(_) => return None,
            None => None,
        };
        count(0);
        let y = conv::forward(&g, &values(&x)?, &values(&w)?, bias.as_deref());
        let [oh, ow] = g.out_hw()?;
        Some(flex(y, vec![g.n, g.o, oh, ow]))
    })();
    out.unwrap_or_else(|| {
        <Flex as burn::tensor::ops::ModuleOps<Flex>>::conv2d(x, w, b, options.clone())
    })
}

/// The backward step of [`tracked_conv2d`]: the operands and the geometry.
#[derive(Debug)]
struct Conv2dBackward;

#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    w: FlexTensor,
    g: Geometry,
}

impl Backward<Flex, 3> for Conv2dBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Saved { x, w, g } = ops.state;
        let want = Wanted {
            x: node_x.is_some(),
            weight: node_w.is_some(),
            bias: node_b.is_some(),
        };
        let (Some(xv), Some(wv), Some(dyv)) = (values(&x), values(&w), values(&dy)) else {
            unreachable!("the forward checked every operand is f32")
        };
        count(1);
        let out = conv::backward(&g, &xv, &wv, &dyv, want);
        let shape = |t: &FlexTensor| t.shape().to_vec();
        if let (Some(node), Some(dx)) = (node_x, out.x) {
            grads.register::<Flex>(node.id, flex(dx, shape(&x)));
        }
        if let (Some(node), Some(dw)) = (node_w, out.weight) {
            grads.register::<Flex>(node.id, flex(dw, shape(&w)));
        }
        if let (Some(node), Some(db)) = (node_b, out.bias) {
            grads.register::<Flex>(node.id, flex(db, vec![g.o]));
        }
    }
}

type AdTensor = FloatTensor<Autodiff<Flex>>;

/// The kernel under autodiff: forward on the inner tensors, and a
/// [`Conv2dBackward`] step when any operand is tracked.
fn tracked_conv2d(
    x: AdTensor,
    w: AdTensor,
    b: Option<AdTensor>,
    options: ConvOptions<2>,
) -> AdTensor {
    let fits = geometry(&x.primitive.shape(), &w.primitive.shape(), &options).filter(|g| {
        [&x.primitive, &w.primitive]
            .iter()
            .all(|t| t.dtype() == DType::F32)
            && b.as_ref().is_none_or(|b| {
                b.primitive.dtype() == DType::F32 && b.primitive.shape().to_vec() == [g.o]
            })
    });
    let Some(g) = fits else {
        return <Autodiff<Flex> as burn::tensor::ops::ModuleOps<Autodiff<Flex>>>::conv2d(
            x, w, b, options,
        );
    };
    // A bias-free convolution gets a zero bias node that tracks nothing.
    let b = b.unwrap_or_else(|| AdTensor::new(flex(vec![0.0; g.o], vec![g.o])));
    let nodes = [x.node.clone(), w.node.clone(), b.node.clone()];
    let forward = || {
        flex_conv2d(
            x.primitive.clone(),
            w.primitive.clone(),
            Some(b.primitive.clone()),
            &options,
        )
    };
    match Conv2dBackward
        .prepare::<burn_autodiff::checkpoint::strategy::NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                x: x.primitive.clone(),
                w: w.primitive.clone(),
                g,
            };
            prep.finish(saved, forward())
        }
        OpsKind::UnTracked(prep) => prep.finish(forward()),
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod dispatch_tests;

/// Asserts `ours` is within 1e-5 of the largest magnitude of burn's
/// `theirs`, element by element (both sides sum the same f32 products,
/// maybe in another order): the kernels' tests against burn's ops.
#[cfg(test)]
pub(crate) fn close_to_burn<const D: usize>(
    what: &str,
    ours: Tensor<Flex, D>,
    theirs: Tensor<Flex, D>,
) {
    assert_eq!(ours.dims(), theirs.dims(), "{what} shape");
    let a = ours.into_data().to_vec::<f32>().unwrap();
    let b = theirs.into_data().to_vec::<f32>().unwrap();
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * scale,
            "{what}[{i}]: {x} vs burn's {y}"
        );
    }
}

/// A fixed stream in `[-scale, scale)` for the kernels' tests (xorshift).
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}
