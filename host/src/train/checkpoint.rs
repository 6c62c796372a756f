//! Checkpoints: one safetensors file holding every parameter, the EMA, the
//! optimizer moments and each plugin's state, with the step and the data
//! position in its metadata — everything a run needs to continue
//! bit-identically. Written atomically (temp file, fsync, rename), so a run
//! killed mid-write keeps its previous checkpoint.

use super::base_ref::BaseRef;
use super::ema::Ema;
use super::optim::{AdamState, Optimizer};
use crate::model::weights::LoadFailure;
use crate::tensor_abi::ParamStore;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorMetadata, read_sync};
use dtx_plugin_api::abi::ParamId;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Parameter groups by parameter name: `(learning-rate scale, weight
/// decay)`.
type Groups = BTreeMap<String, (f32, Option<f32>)>;

/// The group settings of every parameter of `store` that has some.
fn groups_of<B: AutodiffBackend>(store: &ParamStore<B>, optimizer: &Optimizer<B>) -> Groups {
    store
        .entries()
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let g = optimizer.group(ParamId(i as u64))?;
            Some((e.name.clone(), (g.lr_scale, g.weight_decay)))
        })
        .collect()
}

/// Format tag written in every checkpoint's metadata.
pub const FORMAT: &str = "dtx-checkpoint-1";

/// Checkpoint errors name the file.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint `{}`: {message}", .path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The file is not a dtx checkpoint, or does not fit this run.
    #[error("checkpoint `{}` does not fit this run: {message}", .path.display())]
    Mismatch {
        /// File.
        path: PathBuf,
        /// What differs.
        message: String,
    },
}

/// Where training stood, besides tensors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Steps completed.
    pub step: u64,
    /// Data iterator epoch.
    pub epoch: u64,
    /// Data iterator index within the epoch.
    pub index: usize,
}

fn bytes_of<B: Backend>(t: FloatTensor<B>) -> (Vec<usize>, Vec<u8>) {
    let shape = t.shape().to_vec();
    let data: TensorData = read_sync(B::float_into_data(t))
        .expect("reading tensor data")
        .convert::<f32>();
    (shape, data.as_bytes().to_vec())
}

fn tensor_of<B: Backend>(view: &TensorView<'_>, device: &B::Device) -> FloatTensor<B> {
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    B::float_from_data(TensorData::new(values, view.shape().to_vec()), device)
}

/// Registers a model's weights from its source (a folder or file) in a
/// store: what reads the base a checkpoint refers to.
pub type SourceLoader<'a, B> = dyn Fn(&Path, &mut ParamStore<B>) -> Result<(), String> + 'a;

/// Whether a store entry is a base tensor that does not train: what a
/// checkpoint with a [`BaseRef`] leaves in the base file.
fn is_frozen_base(name: &str, trainable: bool) -> bool {
    !trainable && !name.starts_with("plugin.")
}

/// The base a checkpoint refers to (its `base` metadata), if it does.
pub fn base_of(metadata: &HashMap<String, String>) -> Result<Option<BaseRef>, String> {
    metadata
        .get("base")
        .map(|s| serde_json::from_str(s).map_err(|e| format!("bad base record: {e}")))
        .transpose()
}

/// Each plugin instance's saved state, by instance name.
pub type PluginStates = Vec<(String, Vec<u8>)>;

/// Writes a checkpoint of `store` with the optimizer's moments, `ema`,
/// plugin states and `progress` to `path` atomically.
pub fn save<B: AutodiffBackend>(
    path: &Path,
    store: &ParamStore<B>,
    optimizer: &Optimizer<B>,
    ema: Option<&Ema<B>>,
    plugin_states: &[(String, Vec<u8>)],
    progress: &Progress,
    base: Option<&BaseRef>,
) -> Result<(), CheckpointError> {
    let io = |e: &dyn std::fmt::Display| CheckpointError::Io {
        path: path.into(),
        message: e.to_string(),
    };
    let mut frozen = 0usize;
    let mut blobs: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let mut adam_k: BTreeMap<String, i32> = BTreeMap::new();
    let groups = groups_of(store, optimizer);
    for (i, e) in store.entries().iter().enumerate() {
        // with a base file to refer to, its frozen tensors stay there
        if base.is_some() && is_frozen_base(&e.name, e.trainable) {
            frozen += 1;
            continue;
        }
        let (shape, bytes) = bytes_of::<B>(e.value.clone());
        blobs.insert(format!("param/{}", e.name), (Dtype::F32, shape, bytes));
        if let Some(AdamState { m, v, k }) = optimizer.state(ParamId(i as u64)) {
            let (s, b) = bytes_of::<B::InnerBackend>(m.clone());
            blobs.insert(format!("adam_m/{}", e.name), (Dtype::F32, s, b));
            let (s, b) = bytes_of::<B::InnerBackend>(v.clone());
            blobs.insert(format!("adam_v/{}", e.name), (Dtype::F32, s, b));
            adam_k.insert(e.name.clone(), *k);
        }
    }
    if let Some(ema) = ema {
        for (name, t) in &ema.shadow {
            let (s, b) = bytes_of::<B::InnerBackend>(t.clone());
            blobs.insert(format!("ema/{name}"), (Dtype::F32, s, b));
        }
    }
    for (plugin, state) in plugin_states {
        blobs.insert(
            format!("plugin_state/{plugin}"),
            (Dtype::U8, vec![state.len()], state.clone()),
        );
    }
    let views: Vec<(String, TensorView<'_>)> = blobs
        .iter()
        .map(|(k, (dt, s, b))| {
            Ok((
                k.clone(),
                TensorView::new(*dt, s.clone(), b).map_err(|e| io(&e))?,
            ))
        })
        .collect::<Result<_, CheckpointError>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_owned(), FORMAT.to_owned());
    meta.insert(
        "progress".to_owned(),
        serde_json::to_string(progress).expect("serialisable"),
    );
    meta.insert(
        "adam_k".to_owned(),
        serde_json::to_string(&adam_k).expect("serialisable"),
    );
    meta.insert(
        "groups".to_owned(),
        serde_json::to_string(&groups).expect("serialisable"),
    );
    meta.insert(
        "ema".to_owned(),
        ema.map(|e| e.decay.to_string()).unwrap_or_default(),
    );
    if let Some(b) = base.filter(|_| frozen > 0) {
        let mut v = serde_json::to_value(b).expect("serialisable");
        v["frozen_tensors"] = frozen.into();
        meta.insert("base".to_owned(), v.to_string());
    }
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| io(&e))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` atomically ([`crate::util::write_atomic`]: no
/// temporary file is left behind when it fails).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    crate::util::write_atomic(path, bytes).map_err(|e| CheckpointError::Io {
        path: path.into(),
        message: e.to_string(),
    })
}

/// The base model's tensors in a checkpoint, by parameter name: the EMA
/// value when `prefer_ema` and there is one, else the trained value;
/// plugin parameters (`plugin.*`) left out.
fn base_views<'a>(
    ckpt: &Path,
    st: &'a safetensors::SafeTensors<'a>,
    prefer_ema: bool,
) -> Result<BTreeMap<String, TensorView<'a>>, CheckpointError> {
    let mut views = BTreeMap::new();
    for name in st.names() {
        let Some(key) = name.strip_prefix("param/") else {
            continue;
        };
        if key.starts_with("plugin.") {
            continue;
        }
        let ema = prefer_ema
            .then(|| st.tensor(&format!("ema/{key}")).ok())
            .flatten();
        let view = match ema {
            Some(v) => v,
            None => st.tensor(name).map_err(|e| CheckpointError::Io {
                path: ckpt.into(),
                message: e.to_string(),
            })?,
        };
        views.insert(key.to_owned(), view);
    }
    if views.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: ckpt.into(),
            message: "it holds no base-model parameters".into(),
        });
    }
    Ok(views)
}

/// Registers the base model's weights from the dtx checkpoint `ckpt` (EMA
/// values when it keeps them) as base parameters of `store`, one per entry
/// of `expected` (name, shape), `trainable(name)` deciding which train: a
/// `kind = "dtx"` source. Every missing, unexpected or misshaped parameter
/// is listed in one error naming the checkpoint and each key.
pub fn load_base<B: AutodiffBackend>(
    ckpt: &Path,
    expected: &[(String, Vec<usize>)],
    store: &mut ParamStore<B>,
    device: &B::Device,
    trainable: &dyn Fn(&str) -> bool,
    load_source: Option<&SourceLoader<'_, B>>,
) -> Result<(), CheckpointError> {
    let mismatch = |message: String| CheckpointError::Mismatch {
        path: ckpt.into(),
        message,
    };
    let bytes = crate::util::fs::read(ckpt).map_err(|e| CheckpointError::Io {
        path: ckpt.into(),
        message: e.to_string(),
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Io {
        path: ckpt.into(),
        message: e.to_string(),
    })?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| CheckpointError::Io {
            path: ckpt.into(),
            message: e.to_string(),
        })?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    if let Some(base) = base_of(&meta).map_err(&mismatch)? {
        let load = load_source.ok_or_else(|| {
            mismatch(format!(
                "it holds only what trained, on the base `{}`, and nothing here reads that base",
                base.source
            ))
        })?;
        return load_referred_base(ckpt, &st, &base, load, store, device);
    }
    let views = base_views(ckpt, &st, true)?;
    crate::model::weights::register_fitting(expected, views, store, device, trainable).map_err(
        |failure| match failure {
            LoadFailure::Problems(problems) => mismatch(format!(
                "its base-model weights do not fit the run's model {}",
                crate::model::weights::problem_list(&problems)
            )),
            LoadFailure::Read(m) | LoadFailure::Store(m) => mismatch(m),
        },
    )
}

/// [`load_base`] of a checkpoint that refers to its base: the base from its
/// source file (the digest checked first), then the checkpoint's own base
/// tensors (those that trained; EMA values when kept) over it.
fn load_referred_base<B: AutodiffBackend>(
    ckpt: &Path,
    st: &safetensors::SafeTensors<'_>,
    base: &BaseRef,
    load_source: &SourceLoader<'_, B>,
    store: &mut ParamStore<B>,
    device: &B::Device,
) -> Result<(), CheckpointError> {
    let mismatch = |message: String| CheckpointError::Mismatch {
        path: ckpt.into(),
        message,
    };
    let now = super::base_ref::sha256_of(Path::new(&base.path)).map_err(|e| {
        mismatch(format!(
            "it holds only what trained, on the base `{}`, which cannot be read: {e}",
            base.path
        ))
    })?;
    if now != base.sha256 {
        return Err(mismatch(format!(
            "its base `{}` changed since it was trained (sha256 {} then, {now} now)",
            base.path, base.sha256
        )));
    }
    load_source(Path::new(&base.source), store)
        .map_err(|e| mismatch(format!("its base `{}`: {e}", base.source)))?;
    for name in st.names() {
        let Some(key) = name.strip_prefix("param/") else {
            continue;
        };
        if key.starts_with("plugin.") {
            continue;
        }
        let view = st
            .tensor(&format!("ema/{key}"))
            .or_else(|_| st.tensor(name))
            .map_err(|e| mismatch(e.to_string()))?;
        let id = store
            .by_name(key)
            .ok_or_else(|| mismatch(format!("`{key}` is not a parameter of its base model")))?;
        let e = store.get_mut(id).map_err(|e| mismatch(e.to_string()))?;
        if view.shape() != e.value.shape().to_vec().as_slice() {
            return Err(mismatch(format!(
                "`{key}` has shape {:?}, its base model's {:?}",
                view.shape(),
                e.value.shape().to_vec()
            )));
        }
        e.value = B::float_set_require_grad(tensor_of::<B>(&view, device), e.trainable);
    }
    Ok(())
}

/// Writes the base model's weights from checkpoint `ckpt` to `out` as a
/// plain safetensors file under their checkpoint keys (what diffusers'
/// `diffusion_pytorch_model.safetensors` holds): the EMA value of each
/// parameter when `prefer_ema` and the checkpoint keeps one, else the
/// trained value. Plugin parameters (`plugin.*`) are left out. Returns the
/// number of tensors written.
pub fn export_base(ckpt: &Path, out: &Path, prefer_ema: bool) -> Result<usize, CheckpointError> {
    let io = |e: &dyn std::fmt::Display| CheckpointError::Io {
        path: ckpt.into(),
        message: e.to_string(),
    };
    let bytes = crate::util::fs::read(ckpt).map_err(|e| io(&e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io(&e))?;
    let views = base_views(ckpt, &st, prefer_ema)?;
    let n = views.len();
    let mut meta = HashMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| io(&e))?;
    write_atomically(out, &data)?;
    Ok(n)
}

/// Restores a checkpoint into `store` (every parameter must exist with the same
/// shape), the optimizer's moments (when given), `ema`, and returns the
/// plugin states and progress.
pub fn load<B: AutodiffBackend>(
    path: &Path,
    store: &mut ParamStore<B>,
    mut optimizer: Option<&mut Optimizer<B>>,
    ema: Option<&mut Ema<B>>,
    device: &B::Device,
    base: Option<&BaseRef>,
) -> Result<(PluginStates, Progress), CheckpointError> {
    let io = |e: &dyn std::fmt::Display| CheckpointError::Io {
        path: path.into(),
        message: e.to_string(),
    };
    let mismatch = |m: String| CheckpointError::Mismatch {
        path: path.into(),
        message: m,
    };
    let bytes = crate::util::fs::read(path).map_err(|e| io(&e))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io(&e))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(mismatch(format!("not a {FORMAT} file")));
    }
    let progress: Progress =
        serde_json::from_str(meta.get("progress").map(String::as_str).unwrap_or(""))
            .map_err(|e| mismatch(format!("bad progress record: {e}")))?;
    let adam_k: BTreeMap<String, i32> =
        serde_json::from_str(meta.get("adam_k").map(String::as_str).unwrap_or("{}"))
            .map_err(|e| mismatch(e.to_string()))?;
    if let Some(o) = optimizer.as_deref() {
        // parameter groups (plugins' recipes) are rebuilt from the plugins
        // before a restore; they must be the ones the checkpoint trained with
        let saved: Groups =
            serde_json::from_str(meta.get("groups").map(String::as_str).unwrap_or("{}"))
                .map_err(|e| mismatch(format!("bad parameter-group record: {e}")))?;
        let now = groups_of(store, o);
        if let Some(name) = saved
            .keys()
            .chain(now.keys())
            .find(|k| saved.get(*k) != now.get(*k))
        {
            let show = |g: Option<&(f32, Option<f32>)>| match g {
                Some((lr, wd)) => format!(
                    "learning rate x{lr}{}",
                    wd.map(|d| format!(", weight decay {d}"))
                        .unwrap_or_default()
                ),
                None => "no group".to_owned(),
            };
            return Err(mismatch(format!(
                "parameter `{name}` trained with {} there, and this run gives it {}: a plugin's recipe changed (rebuilt plugin?); resume with the plugin it was trained with",
                show(saved.get(name)),
                show(now.get(name))
            )));
        }
    }
    // a checkpoint that refers to its base instead of holding it: this
    // run's source must be that file, whose frozen tensors the store holds
    let saved_base = base_of(&meta).map_err(&mismatch)?;
    if let Some(sb) = &saved_base {
        match base {
            Some(b) if b.sha256 == sb.sha256 => {}
            Some(b) => {
                return Err(mismatch(format!(
                    "it was trained on the base `{}` (sha256 {}), and this run's source `{}` \
                     has sha256 {}: the base changed; continue on the base it trained on",
                    sb.path, sb.sha256, b.path, b.sha256
                )));
            }
            None => {
                return Err(mismatch(format!(
                    "it holds only what trained, on the base `{}` (sha256 {}), and this run's \
                     source is not a weights file to read that base from",
                    sb.path, sb.sha256
                )));
            }
        }
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io(&e))?;
    for (i, e) in store.entries_mut().iter_mut().enumerate() {
        let view = match st.tensor(&format!("param/{}", e.name)) {
            Ok(v) => v,
            // frozen: the value the source gave it is the checkpoint's
            Err(_) if saved_base.is_some() && is_frozen_base(&e.name, e.trainable) => continue,
            Err(_) => return Err(mismatch(format!("it has no parameter `{}`", e.name))),
        };
        if view.shape() != e.value.shape().to_vec().as_slice() {
            return Err(mismatch(format!(
                "parameter `{}` has shape {:?}, this run expects {:?}",
                e.name,
                view.shape(),
                e.value.shape().to_vec()
            )));
        }
        e.value = B::float_set_require_grad(tensor_of::<B>(&view, device), e.trainable);
        let state = match (
            st.tensor(&format!("adam_m/{}", e.name)),
            st.tensor(&format!("adam_v/{}", e.name)),
        ) {
            (Ok(m), Ok(v)) => Some(AdamState {
                m: tensor_of::<B::InnerBackend>(&m, device),
                v: tensor_of::<B::InnerBackend>(&v, device),
                k: *adam_k
                    .get(&e.name)
                    .ok_or_else(|| mismatch(format!("no Adam step count for `{}`", e.name)))?,
            }),
            _ => None,
        };
        if let Some(o) = optimizer.as_deref_mut() {
            o.set_state(ParamId(i as u64), state);
        }
    }
    if let Some(ema) = ema {
        for (name, t) in ema.shadow.iter_mut() {
            let view = st
                .tensor(&format!("ema/{name}"))
                .map_err(|_| mismatch(format!("it has no EMA of `{name}`")))?;
            *t = tensor_of::<B::InnerBackend>(&view, device);
        }
    }
    let states = st
        .names()
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix("plugin_state/")
                .map(|p| (p.to_owned(), n.to_owned()))
        })
        .map(|(p, n)| {
            (
                p,
                st.tensor(&n).map(|v| v.data().to_vec()).unwrap_or_default(),
            )
        })
        .collect();
    Ok((states, progress))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_abi::CpuBackend as B;
    use burn::tensor::ops::FloatTensorOps;

    /// A checkpoint whose base model does not fit: every problem is named
    /// in one error (a missing, a misshaped and an unexpected parameter),
    /// and nothing is registered.
    #[test]
    fn load_base_lists_every_problem() {
        let dev = Default::default();
        let mut store = ParamStore::<B>::default();
        let prim =
            |v: Vec<f32>, shape: Vec<usize>| B::float_from_data(TensorData::new(v, shape), &dev);
        store
            .register_base("a.weight", prim(vec![1.0; 6], vec![2, 3]), true)
            .unwrap();
        store
            .register_base("b.weight", prim(vec![1.0; 4], vec![4]), true)
            .unwrap();
        store
            .register_base("extra.bias", prim(vec![0.0; 2], vec![2]), true)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("dtx-ckpt-base-{}", std::process::id()));
        let file = dir.join("latest.safetensors");
        let progress = Progress {
            step: 1,
            epoch: 0,
            index: 0,
        };
        save(&file, &store, &Optimizer::new(), None, &[], &progress, None).unwrap();
        let expected = vec![
            ("a.weight".to_owned(), vec![2, 3]),
            ("b.weight".to_owned(), vec![2, 2]),
            ("c.weight".to_owned(), vec![5]),
        ];
        let mut into = ParamStore::<B>::default();
        let err = load_base::<B>(&file, &expected, &mut into, &dev, &|_| false, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "checkpoint `{}` does not fit this run: its base-model weights do not fit the \
                 run's model (3 problems):\n  `b.weight`: expected shape [2, 2], found [4]\n  \
                 missing key `c.weight` (expected shape [5])\n  unexpected key `extra.bias` \
                 (shape [2]); the config has no such parameter",
                file.display()
            )
        );
        assert!(into.entries().is_empty(), "nothing registered on error");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Parameter groups are written into a checkpoint and must be the same
    /// when it is restored: a changed recipe is refused, naming the
    /// parameter and both settings.
    #[test]
    fn parameter_groups_are_kept_and_checked_on_restore() {
        use crate::train::optim::GroupSetting;
        let dev = Default::default();
        let mut store = ParamStore::<B>::default();
        let id = store
            .register(
                "lora",
                "b",
                B::float_from_data(TensorData::new(vec![0.5f32; 2], vec![2]), &dev),
            )
            .unwrap();
        let fast = GroupSetting {
            lr_scale: 4.0,
            weight_decay: None,
        };
        let mut saved_with = Optimizer::new();
        saved_with.set_group(id, fast);
        let dir = std::env::temp_dir().join(format!("dtx-ckpt-groups-{}", std::process::id()));
        let file = dir.join("latest.safetensors");
        let progress = Progress {
            step: 2,
            epoch: 0,
            index: 0,
        };
        save(&file, &store, &saved_with, None, &[], &progress, None).unwrap();
        // the same groups: restored
        let mut same = Optimizer::new();
        same.set_group(id, fast);
        load::<B>(&file, &mut store, Some(&mut same), None, &dev, None).unwrap();
        // another rate: refused, naming the parameter and both settings
        let mut other = Optimizer::new();
        other.set_group(
            id,
            GroupSetting {
                lr_scale: 1.0,
                weight_decay: Some(0.1),
            },
        );
        let err = load::<B>(&file, &mut store, Some(&mut other), None, &dev, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parameter `plugin.lora.b` trained with learning rate x4 there")
                && err.contains("this run gives it learning rate x1, weight decay 0.1"),
            "{err}"
        );
        // none at all: refused too
        let err = load::<B>(
            &file,
            &mut store,
            Some(&mut Optimizer::new()),
            None,
            &dev,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("this run gives it no group"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
