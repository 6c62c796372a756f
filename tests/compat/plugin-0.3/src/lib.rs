//! A plugin built against dtx-plugin-api 0.3: `inject` scales the
//! activation by `1 + gain` (gain a parameter starting at 1) and `loss`
//! returns `gain²`. A 0.4 host refuses it with a short message naming
//! both versions (tests/tests/compat.rs).

use dtx_plugin_api::prelude::*;
use serde::{Deserialize, Serialize};

/// No keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {}

/// The plugin.
pub struct Old {
    gain: Param,
}

impl Plugin for Old {
    type Config = Config;
    const NAME: &'static str = "old";
    const VERSION: &'static str = "0.3.0";
    const DESCRIPTION: &'static str = "built against dtx-plugin-api 0.3";
    const HOOKS: &'static [Hook] = &[Hook::Inject, Hook::Loss];

    fn injection_points() -> Vec<String> {
        vec!["mid.res.0".into()]
    }

    fn new(_config: Config, host: &Host, _model: &ModelInfo) -> Result<Self, AbiError> {
        Ok(Old {
            gain: host.param("gain", &[1], ParamInit::constant(1.0))?,
        })
    }

    fn inject(&mut self, ctx: &Inject<'_>) -> Result<Tensor, AbiError> {
        Ok(&*ctx.h + &*ctx.h * self.gain.value())
    }

    fn loss(&mut self, _ctx: &Loss<'_>) -> Result<Vec<(String, Tensor)>, AbiError> {
        Ok(vec![("gain".into(), self.gain.value().square().sum())])
    }
}

export_plugin!(Old);
