//! `dtx model forward`: the inputs a user wrote (`x`, `timesteps`,
//! `class_labels`) checked against the model, one forward pass on the CPU in
//! f32, and its output and chosen injection-point activations written to a
//! safetensors file — only once everything has run, so an error leaves
//! nothing behind.

use super::model_cmd::ModelSource;
use super::model_open::OpenedModel;
use crate::model::weights::StoredTensor;
use crate::model::{Denoiser, ModelDescription, Recorder};
use crate::tensor_abi::CpuBackend as B;
use anyhow::{Context, anyhow, bail};
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `dtx model forward` arguments.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// The model: a diffusers folder, an ADM checkpoint, or a dtx run folder
    /// or checkpoint.
    pub path: PathBuf,
    /// Inputs: a safetensors file with `x` (float, B×C×H×W, or B×D for the
    /// MLP), `timesteps` (I64 or float, B) and, for a class-conditional
    /// model, `class_labels` (I64, B; guided-diffusion's `y` is read when
    /// `class_labels` is absent). Other tensors in the file are ignored.
    #[arg(long, value_name = "IN.safetensors")]
    pub inputs: PathBuf,
    /// Output file (safetensors): `out`, and each activation under its
    /// point's name.
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Injection points whose activations to write, comma-separated, or
    /// `all` (`temb`, `down.{i}.res.{j}`, `mid.res.{j}`, `up.{i}.res.{j}`:
    /// the output of that residual block, before anything that follows it).
    /// Branch points (`….branch`) are written when named; `all` leaves
    /// them out, as the glob `*` does.
    #[arg(long, value_delimiter = ',')]
    pub points: Vec<String>,
    /// The model's kind and config.
    #[command(flatten)]
    pub source: ModelSource,
}

/// The inputs of one forward pass, checked against the model.
struct Inputs {
    x: Shaped,
    timesteps: Vec<f32>,
    labels: Option<Vec<i64>>,
}

/// A named tensor as the input file holds it.
fn tensor<'a>(
    st: &'a safetensors::SafeTensors<'a>,
    file: &Path,
    key: &str,
    expected: &str,
) -> anyhow::Result<TensorView<'a>> {
    st.tensor(key).map_err(|_| {
        let mut names = st.names();
        names.sort();
        anyhow!(
            "`{}`: no tensor `{key}` (expected {expected}); the file holds: {}",
            file.display(),
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Integer values of an I64 or I32 tensor.
fn ints(v: &TensorView<'_>) -> Option<Vec<i64>> {
    let d = v.data();
    match v.dtype() {
        Dtype::I64 => Some(
            d.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        Dtype::I32 => Some(
            d.chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
                .collect(),
        ),
        _ => None,
    }
}

/// Reads and checks the inputs in `file` for the model `d` with `classes`
/// classes.
fn read_inputs(file: &Path, d: &ModelDescription, classes: usize) -> anyhow::Result<Inputs> {
    let bytes =
        crate::util::fs::read(file).with_context(|| format!("reading `{}`", file.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("`{}`: not a safetensors file: {e}", file.display()))?;
    let f = file.display();
    let want_x = if d.resolution == 0 {
        format!("F32 [B, {}]", d.data_channels)
    } else {
        format!("F32 [B, {}, H, W]", d.data_channels)
    };
    let x = tensor(&st, file, "x", &want_x)?;
    let xv = x
        .to_f32()
        .ok_or_else(|| anyhow!("`{f}`: `x`: expected {want_x}, found dtype {:?}", x.dtype()))?;
    let shape = x.shape().to_vec();
    let factor = d.downsampling();
    let fits = match (d.resolution, shape.as_slice()) {
        (0, [b, c]) => *b > 0 && *c == d.data_channels,
        (r, [b, c, h, w]) if r > 0 => {
            *b > 0
                && *c == d.data_channels
                && *h > 0
                && h.is_multiple_of(factor)
                && *w > 0
                && w.is_multiple_of(factor)
        }
        _ => false,
    };
    if !fits {
        let sides = if factor > 1 {
            format!(" (H and W multiples of {factor}, the model's downsampling)")
        } else {
            String::new()
        };
        bail!("`{f}`: `x`: expected shape {want_x}{sides}, found {shape:?}");
    }
    let b = shape[0];
    let t = tensor(&st, file, "timesteps", &format!("I64 or F32 [{b}]"))?;
    let tv = match ints(&t) {
        Some(i) => i.into_iter().map(|v| v as f32).collect(),
        None => t.to_f32().ok_or_else(|| {
            anyhow!(
                "`{f}`: `timesteps`: expected I64 or F32 [{b}], found dtype {:?}",
                t.dtype()
            )
        })?,
    };
    if t.shape() != [b] {
        bail!(
            "`{f}`: `timesteps`: expected shape [{b}] (one per row of `x`), found {:?}",
            t.shape()
        );
    }
    if let Some(bad) = tv.iter().find(|v| !v.is_finite()) {
        bail!("`{f}`: `timesteps`: {bad} is not a finite timestep");
    }
    let label_key = ["class_labels", "y"]
        .into_iter()
        .find(|k| st.names().contains(k));
    let labels = match (classes, label_key) {
        (0, Some(k)) => {
            bail!("`{f}`: `{k}`: the model is unconditional and takes no class labels; remove them")
        }
        (0, None) => None,
        (_, None) if d.kind == "mlp" => None,
        (k, None) => bail!(
            "`{f}`: no tensor `class_labels` (expected I64 [{b}], values 0 to {}): the model is \
             class-conditional",
            k - 1
        ),
        (k, Some(key)) => {
            let v = tensor(&st, file, key, "I64")?;
            let values = ints(&v).ok_or_else(|| {
                anyhow!(
                    "`{f}`: `{key}`: expected I64 [{b}], found dtype {:?}",
                    v.dtype()
                )
            })?;
            if v.shape() != [b] {
                bail!(
                    "`{f}`: `{key}`: expected shape [{b}] (one per row of `x`), found {:?}",
                    v.shape()
                );
            }
            // The MLP's class table has a row for the null class, K.
            let top = if d.kind == "mlp" { k } else { k - 1 };
            if let Some(bad) = values.iter().find(|&&y| y < 0 || y > top as i64) {
                bail!("`{f}`: `{key}`: label {bad} is outside 0 to {top}");
            }
            Some(values)
        }
    };
    Ok(Inputs {
        x: (shape, xv),
        timesteps: tv,
        labels,
    })
}

/// The points `--points` names, in forward order; unknown names are an
/// error listing the model's points. `all` is every point the glob `*`
/// selects: `temb` and the block outputs, not the branch points.
fn chosen_points(d: &ModelDescription, asked: &[String]) -> anyhow::Result<Vec<String>> {
    let names: Vec<&str> = d.points.iter().map(|p| p.name.as_str()).collect();
    if asked.iter().any(|p| p == "all") {
        return Ok(names
            .iter()
            .filter(|n| dtx_plugin_api::points::matches("*", n))
            .map(|n| (*n).to_owned())
            .collect());
    }
    for p in asked {
        if !names.contains(&p.as_str()) {
            let hint = crate::util::nearest(p, names.iter().copied())
                .map(|n| format!("did you mean `{n}`? "))
                .unwrap_or_default();
            bail!(
                "--points: the model has no injection point `{p}`; {hint}its points: all, {}",
                names.join(", ")
            );
        }
    }
    Ok(names
        .iter()
        .filter(|n| asked.iter().any(|p| p == *n))
        .map(|n| (*n).to_owned())
        .collect())
}

/// A tensor's shape and f32 values.
type Shaped = (Vec<usize>, Vec<f32>);

fn values<const D: usize>(t: Tensor<B, D>) -> anyhow::Result<Shaped> {
    let shape = t.dims().to_vec();
    let v = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow!("reading a tensor: {e:?}"))?;
    Ok((shape, v))
}

/// The output and the chosen points' activations (in `points` order) of
/// the forward at the data's rank `D`.
fn forward_at<const D: usize>(
    m: &OpenedModel,
    inputs: Inputs,
    points: &[String],
) -> anyhow::Result<Vec<(String, Shaped)>> {
    let dev = Default::default();
    let (xs, xv) = inputs.x;
    let b = xs[0];
    let dims: [usize; D] = xs.clone().try_into().map_err(|_| {
        anyhow!(
            "an input of rank {} where the model takes rank {D}",
            xs.len()
        )
    })?;
    let x = Tensor::<B, D>::from_data(TensorData::new(xv, dims), &dev);
    let t = Tensor::<B, 1>::from_data(TensorData::new(inputs.timesteps, [b]), &dev);
    let labels = inputs
        .labels
        .map(|l| Tensor::<B, 1, Int>::from_data(TensorData::new(l, [b]), &dev));
    let weights = m.net.weights(&m.params)?;
    let mut record = Recorder::<B, D>::new(points);
    let output = match m.net.forward(&weights, x, t, labels, &mut record, None) {
        Ok(out) => out,
        Err(never) => match never {},
    };
    let mut tensors = vec![("out".to_owned(), values(output)?)];
    for name in points {
        let shaped = match (name.as_str(), &record.temb) {
            ("temb", Some(temb)) => values(temb.clone())?,
            _ => values(
                record
                    .blocks
                    .remove(name)
                    .ok_or_else(|| anyhow!("the forward never reached point `{name}`"))?,
            )?,
        };
        tensors.push((name.clone(), shaped));
    }
    Ok(tensors)
}

/// Runs `dtx model forward` on the opened model.
pub fn run(a: &ForwardArgs, m: &OpenedModel, out: &mut dyn Write) -> anyhow::Result<()> {
    let d = &m.description;
    let points = chosen_points(d, &a.points)?;
    let inputs = read_inputs(&a.inputs, d, m.net.num_classes())?;
    let tensors = match m.net.data_shape().len() {
        1 => forward_at::<2>(m, inputs, &points)?,
        _ => forward_at::<4>(m, inputs, &points)?,
    };
    write_tensors(&a.out, &tensors)?;
    let (_, (shape, _)) = &tensors[0];
    writeln!(
        out,
        "wrote `{}`: out {shape:?}{}",
        a.out.display(),
        tensors[1..]
            .iter()
            .map(|(n, (s, _))| format!(", {n} {s:?}"))
            .collect::<String>()
    )?;
    Ok(())
}

/// Writes F32 tensors to `file` atomically.
fn write_tensors(file: &Path, tensors: &[(String, Shaped)]) -> anyhow::Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, v))| {
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), s.clone(), b)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow!("writing `{}`: {e}", file.display()))?;
    let data = safetensors::serialize(views, None)
        .map_err(|e| anyhow!("writing `{}`: {e}", file.display()))?;
    crate::train::checkpoint::write_atomically(file, &data)?;
    Ok(())
}
