//! Plugins' training recipes (api 0.4): the base parameters a plugin needs
//! trained (DiffFit's biases and norms) start training beside the
//! manifest's `trainable`, and groups of a plugin's parameters train at
//! their own rate and decay (LoRA+'s `B`, DiffFit's γ). Applied once the
//! plugins are built, before a checkpoint is restored, so a resumed run
//! trains exactly as the run it continues.

use super::error::{Result, run_error};
use super::student::Student;
use crate::tensor_abi::{BASE_OWNER, Session};
use crate::train::optim::{GroupSetting, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use dtx_plugin_api::abi::ParamId;
use dtx_plugin_api::points::matches;
use std::cell::RefCell;

/// Applies every plugin's recipe to the session's parameters and to
/// `optimizer`.
pub(super) fn apply<B: AutodiffBackend>(
    student: &Student<B>,
    optimizer: &RefCell<Optimizer<B>>,
) -> Result<()> {
    for cell in &student.plugins {
        let inst = cell.borrow();
        let recipe = inst.recipe();
        let name = inst.name.as_str();
        Session::<B>::with(|s| -> Result<()> {
            for pattern in recipe.train_base.iter() {
                let ids: Vec<ParamId> = s
                    .params
                    .entries()
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.owner == BASE_OWNER && matches(pattern, &e.name))
                    .map(|(i, _)| ParamId(i as u64))
                    .collect();
                if ids.is_empty() {
                    return Err(run_error!(
                        "plugin `{name}` asks to train `{pattern}`, which matches no base parameter of this model"
                    ));
                }
                for id in ids {
                    s.params.set_trainable(id)?;
                }
            }
            Ok(())
        })??;
        for g in recipe.groups.iter() {
            let setting = GroupSetting {
                lr_scale: g.lr_scale,
                weight_decay: g.weight_decay.into_option(),
            };
            let bad = |v: f32| !v.is_finite() || v < 0.0;
            if bad(setting.lr_scale) || setting.weight_decay.is_some_and(bad) {
                return Err(run_error!(
                    "plugin `{name}`: parameter group `{}` has learning-rate scale {} and weight decay {:?}; both must be finite and ≥ 0",
                    g.name,
                    setting.lr_scale,
                    setting.weight_decay
                ));
            }
            for &id in g.params.iter() {
                let owned = Session::<B>::with(|s| {
                    s.params.get(id).map(|e| e.owner == name).unwrap_or(false)
                })?;
                if !owned {
                    return Err(run_error!(
                        "plugin `{name}`: parameter group `{}` holds parameter {}, which is not one of its own",
                        g.name,
                        id.0
                    ));
                }
                optimizer.borrow_mut().set_group(id, setting);
            }
        }
    }
    Ok(())
}
