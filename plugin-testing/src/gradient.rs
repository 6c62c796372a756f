//! Gradients of a hook's output against central finite differences, with
//! respect to a plugin parameter or to the hook's input.

use crate::plugin::InjectInputs;
use crate::{Array, B, TestPlugin};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, TensorMetadata};
use dtx::tensor_abi::Session;

/// What a check differentiates: the output of one hook call as a function
/// of the value `x` it is handed (a parameter's or the input's).
type Run<'a> = dyn Fn(&mut TestPlugin, FloatTensor<B>) -> Result<FloatTensor<B>, String> + 'a;

impl TestPlugin {
    /// How far the autodiff gradient of `Σ v ⊙ W'` (v a fixed random
    /// array) with respect to parameter `param` is from central finite
    /// differences (step `eps`, f64 sums), as the largest absolute error
    /// over the parameter's entries divided by the largest gradient entry.
    pub fn check_weights_gradient(
        &mut self,
        key: &str,
        w: &Array,
        param: &str,
        eps: f32,
    ) -> Result<f64, String> {
        let w = w.clone();
        self.check_param(param, eps, &move |p: &mut TestPlugin, _| {
            p.weights_prim(key, w.to_prim())
        })
    }

    /// As [`TestPlugin::check_weights_gradient`], for `inject` at `point`.
    pub fn check_inject_gradient(
        &mut self,
        point: &str,
        h: &Array,
        param: &str,
        eps: f32,
    ) -> Result<f64, String> {
        let h = h.clone();
        let inputs = InjectInputs {
            training: true,
            ..Default::default()
        };
        self.check_param(param, eps, &move |p: &mut TestPlugin, _| {
            p.inject_prim(point, h.to_prim(), &inputs)
        })
    }

    /// How far the autodiff gradient of `Σ v ⊙ inject(h)` with respect to
    /// the activation `h` itself is from central finite differences (the
    /// measure of [`TestPlugin::check_weights_gradient`]): what the host's
    /// backward through the plugin's module relies on.
    pub fn check_inject_input_gradient(
        &mut self,
        point: &str,
        h: &Array,
        eps: f32,
    ) -> Result<f64, String> {
        let inputs = InjectInputs {
            training: true,
            ..Default::default()
        };
        self.check_input(h, eps, &|p: &mut TestPlugin, x| {
            p.inject_prim(point, x, &inputs)
        })
    }

    /// As [`TestPlugin::check_inject_input_gradient`], for `weights` with
    /// respect to the base weight `W` it is handed.
    pub fn check_weights_input_gradient(
        &mut self,
        key: &str,
        w: &Array,
        eps: f32,
    ) -> Result<f64, String> {
        self.check_input(w, eps, &|p: &mut TestPlugin, x| p.weights_prim(key, x))
    }

    fn check_param(&mut self, param: &str, eps: f32, run: &Run<'_>) -> Result<f64, String> {
        let id = self.param_id(param)?;
        let base = self.param(param)?;
        let first = run(self, base.to_prim())?;
        let v = Array::random(&first.shape().to_vec(), 7);
        let grads = B::backward(objective(first, &v));
        let g = Session::<B>::with(|s| {
            let e = s.params.get(id).map_err(|e| e.to_string())?;
            B::grad(&e.value, &grads).ok_or_else(|| format!("no gradient reached `{param}`"))
        })
        .map_err(|e| e.to_string())??;
        let g = Array::of_prim(B::from_inner(g));
        let value = |p: &mut TestPlugin, a: &Array| -> Result<f64, String> {
            p.set_param(param, a)?;
            dot(run(p, a.to_prim())?, &v)
        };
        let worst = central_differences(self, &base, &g, eps, &value);
        self.set_param(param, &base)?;
        worst
    }

    fn check_input(&mut self, x: &Array, eps: f32, run: &Run<'_>) -> Result<f64, String> {
        let leaf = B::float_set_require_grad(x.to_prim(), true);
        let first = run(self, leaf.clone())?;
        let v = Array::random(&first.shape().to_vec(), 7);
        let grads = B::backward(objective(first, &v));
        let g = B::grad(&leaf, &grads).ok_or("no gradient reached the hook's input")?;
        let g = Array::of_prim(B::from_inner(g));
        let value = |p: &mut TestPlugin, a: &Array| dot(run(p, a.to_prim())?, &v);
        central_differences(self, x, &g, eps, &value)
    }
}

/// `Σ v ⊙ out`, the scalar whose gradient the checks compare.
fn objective(out: FloatTensor<B>, v: &Array) -> FloatTensor<B> {
    let n: usize = out.shape().num_elements();
    let flat = B::float_reshape(out, Shape::new([n]));
    let vv = B::float_reshape(v.to_prim(), Shape::new([n]));
    B::float_sum(B::float_mul(flat, vv))
}

/// `Σ v ⊙ out` in f64, off the graph.
fn dot(out: FloatTensor<B>, v: &Array) -> Result<f64, String> {
    let out = Array::of_prim(dtx::tensor_abi::untracked::<B>(out));
    if out.values.len() != v.values.len() {
        return Err(format!("the hook's output changed shape: {:?}", out.shape));
    }
    Ok(out
        .values
        .iter()
        .zip(&v.values)
        .map(|(o, w)| f64::from(*o) * f64::from(*w))
        .sum())
}

/// The largest gap between `g` and the central difference of `value`
/// around `at`, entry by entry, over the largest entry of `g`.
fn central_differences(
    p: &mut TestPlugin,
    at: &Array,
    g: &Array,
    eps: f32,
    value: &dyn Fn(&mut TestPlugin, &Array) -> Result<f64, String>,
) -> Result<f64, String> {
    if g.values.len() != at.values.len() {
        return Err(format!(
            "a gradient of shape {:?} for a value of shape {:?}",
            g.shape, at.shape
        ));
    }
    let mut worst = 0f64;
    for i in 0..at.values.len() {
        let mut up = at.clone();
        up.values[i] += eps;
        let mut down = at.clone();
        down.values[i] -= eps;
        let fd = (value(p, &up)? - value(p, &down)?) / (2.0 * f64::from(eps));
        worst = worst.max((fd - f64::from(g.values[i])).abs());
    }
    let scale = g
        .values
        .iter()
        .map(|x| f64::from(x.abs()))
        .fold(0.0, f64::max)
        .max(1e-12);
    Ok(worst / scale)
}
