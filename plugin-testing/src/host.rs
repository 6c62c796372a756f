//! [`TestHost`]: a dtx host on the CPU with a tiny model and its services.

use crate::services::{FnData, FnDenoiser, NetService, timesteps};
use crate::{Array, B, Labels, TINY_UNET_CONFIG, TestPlugin};
use burn::tensor::ops::FloatTensor;
use dtx::diffusion::Schedule;
use dtx::model::{Denoiser, ModelDescription, Net};
use dtx::plugins::{Instance, in_process_library};
use dtx::tensor_abi::{DenoiseService, Ranked, Session, SessionGuard, vtables};
use dtx_plugin_api::abi::Which;
use dtx_plugin_api::{ModelInfo, Plugin};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A dtx host on the CPU with a tiny model: the session plugins' services
/// run in, the model they are built for, its base weights.
///
/// Its services answer as a run's would: `denoise` and `features` run the
/// model with its base weights (student and source alike), `alpha_bar` and
/// `num_timesteps` follow the linear schedule of 1000 steps, and
/// `model_details` lists the base parameters. [`TestHost::with_denoiser`],
/// [`TestHost::with_data`], [`TestHost::with_schedule`] and
/// [`TestHost::with_condition`] replace or add what a test needs; a service
/// the test host lacks (source samples, condition encoders) answers with the
/// host's error.
pub struct TestHost {
    desc: ModelDescription,
    base: HashMap<String, FloatTensor<B>>,
    info: ModelInfo,
    net: Rc<NetService>,
    // declared last: the session outlives the plugins' parameters
    _session: SessionGuard,
}

impl TestHost {
    /// The tiny diffusers U-Net ([`TINY_UNET_CONFIG`]), weights from seed 0.
    pub fn tiny_unet() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dtx-plugin-testing-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        std::fs::write(dir.join("config.json"), TINY_UNET_CONFIG).expect("writing config.json");
        let desc = dtx::model::describe("diffusers", Some(&dir), &toml::Table::new())
            .expect("the tiny U-Net's config is valid");
        let _ = std::fs::remove_dir_all(&dir);
        Self::with(desc)
    }

    /// dtx's residual MLP on 2-D data (hidden 32, 2 blocks), weights from
    /// seed 0.
    pub fn mlp() -> Self {
        let table: toml::Table = "hidden = 32\nblocks = 2".parse().expect("TOML");
        let desc = dtx::model::describe("mlp", None, &table).expect("the MLP's config is valid");
        Self::with(desc)
    }

    fn with(desc: ModelDescription) -> Self {
        use rand::SeedableRng;
        let session = Session::<B>::install(Default::default(), 0);
        dtx::train::optim::install::<B>(Default::default()).expect("an optimizer");
        let net = Net::from_description(&desc).expect("the model builds");
        let details = dtx::model::details_of(&net, &desc, "epsilon");
        let base = Session::<B>::with(|s| {
            s.services.model_details = Some(details);
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            net.init::<B>(&mut s.params, &mut rng, &Default::default(), &|_| false)
                .expect("the weights initialise");
            s.params
                .entries()
                .iter()
                .map(|e| {
                    (
                        e.name.clone(),
                        dtx::tensor_abi::untracked::<B>(e.value.clone()),
                    )
                })
                .collect()
        })
        .expect("the session is installed");
        let weights = net
            .weights::<B>(&base)
            .expect("the base weights fit the model");
        let net = Rc::new(NetService { net, weights });
        let alpha_bar = Schedule::Linear
            .alpha_bars(1000)
            .into_iter()
            .map(|a| a as f32)
            .collect();
        Session::<B>::with(|s| {
            s.services.denoiser = Some(net.clone() as Rc<dyn DenoiseService<B>>);
            s.services.alpha_bar = Some(alpha_bar);
        })
        .expect("the session is installed");
        let info = desc.to_model_info();
        TestHost {
            desc,
            base,
            info,
            net,
            _session: session,
        }
    }

    /// Answers `denoise` with `f` instead of the model: ε of `which` for
    /// `x_t` at each example's timestep (`|x_t, t, which| …`). Its answers are
    /// values outside the autodiff graph, and `features` is refused.
    pub fn with_denoiser(self, f: impl Fn(&Array, &[f32], Which) -> Array + 'static) -> Self {
        self.install(|s| s.services.denoiser = Some(Rc::new(FnDenoiser(Box::new(f)))));
        self
    }

    /// Serves `dataset_batch` with `f`: `|split, batch|` → the examples and
    /// their labels ([`Labels::classes`] or [`Labels::masks`]).
    pub fn with_data(
        self,
        f: impl FnMut(&str, usize) -> Result<(Array, Option<Labels>), String> + 'static,
    ) -> Self {
        self.install(|s| s.services.data = Some(Rc::new(RefCell::new(FnData(Box::new(f))))));
        self
    }

    /// The schedule's ᾱ_t for t = 0..T−1 (`alpha_bar`, `num_timesteps`).
    pub fn with_schedule(self, alpha_bar: &[f32]) -> Self {
        self.install(|s| s.services.alpha_bar = Some(alpha_bar.to_vec()));
        self
    }

    /// A run with `[condition]` embeddings of `tokens × dim`
    /// (`condition_shape`); pass them to the hooks that take them
    /// ([`crate::TestPlugin::inject_with`]).
    pub fn with_condition(self, tokens: usize, dim: usize) -> Self {
        self.install(|s| s.services.condition_shape = Some((tokens, dim)));
        self
    }

    fn install(&self, f: impl FnOnce(&mut Session<B>)) {
        Session::<B>::with(f).expect("the session is installed");
    }

    /// Runs `f` as plugin `name`'s code outside a hook, as a test of the
    /// plugin crate's own functions (its losses, its networks) needs: the
    /// plugin API's tensors (`Tensor::from_f32`, `Host::get()`) reach this
    /// host, and the parameters `f` registers (`host.scope().pp(…)`) are
    /// the plugin's (`plugin.<name>.…`), in this host's session.
    pub fn in_plugin<R>(&self, name: &str, f: impl FnOnce() -> R) -> R {
        /// Puts back the session's running plugin, even when `f` panics.
        struct Restore(Option<String>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                let _ = Session::<B>::with(|s| s.current_plugin = previous);
            }
        }
        dtx_plugin_api::__private::install_host(vtables::<B>());
        let previous = Session::<B>::with(|s| s.current_plugin.replace(name.to_owned()))
            .expect("the session is installed");
        let _restore = Restore(previous);
        f()
    }

    /// The scalars plugins logged since the last call (`<plugin>.<name>`).
    pub fn logs(&self) -> Vec<(String, f64)> {
        Session::<B>::with(|s| s.services.take_logs()).expect("the session is installed")
    }

    /// ᾱ_t of the schedule the services use.
    pub fn alpha_bar(&self) -> Vec<f32> {
        Session::<B>::with(|s| s.services.alpha_bar.clone().unwrap_or_default())
            .expect("the session is installed")
    }

    /// The model's output for `x` at each example's timestep `t`, as
    /// `denoise` answers it without [`TestHost::with_denoiser`]: a
    /// reference for a test's expected values.
    pub fn denoise(&self, x: &Array, t: &[f32]) -> Array {
        let x = Ranked::from_float("x", x.to_prim()).expect("x of rank 2 or 4");
        let out = self
            .net
            .denoise(x, timesteps(t), Which::Source, None)
            .expect("the model runs");
        Array::of_prim(dtx::tensor_abi::untracked::<B>(out.into_float()))
    }

    /// The model's activations at `points` for `x` at timesteps `t`, as
    /// `features` answers them.
    pub fn features(&self, x: &Array, t: &[f32], points: &[&str]) -> Vec<Array> {
        let x = Ranked::from_float("x", x.to_prim()).expect("x of rank 2 or 4");
        let points: Vec<String> = points.iter().map(|p| p.to_string()).collect();
        self.net
            .features(x, timesteps(t), &points, Which::Source, None)
            .expect("the model has these points")
            .into_iter()
            .map(|f| Array::of_prim(dtx::tensor_abi::untracked::<B>(f.into_float())))
            .collect()
    }

    /// The model plugins are built for: injection points with their sizes.
    pub fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// The shape of injection point `point` for a batch of `batch`:
    /// `[batch, C, H, W]`, or `[batch, C]` for `temb` and vector models.
    ///
    /// # Panics
    /// When the model has no such point.
    pub fn point_shape(&self, point: &str, batch: usize) -> Vec<usize> {
        let p = self
            .info
            .points
            .iter()
            .find(|p| p.name.as_str() == point)
            .unwrap_or_else(|| panic!("no point `{point}`"));
        if p.height == 0 {
            vec![batch, p.channels]
        } else {
            vec![batch, p.channels, p.height, p.width]
        }
    }

    /// The shape of a batch of `batch` examples of the model's data.
    pub fn data_shape(&self, batch: usize) -> Vec<usize> {
        let d = &self.desc;
        if d.resolution == 0 {
            vec![batch, d.data_channels]
        } else {
            vec![batch, d.data_channels, d.resolution, d.resolution]
        }
    }

    /// Every base parameter: checkpoint key and shape, as
    /// `host.model_details()` lists them.
    pub fn base_parameters(&self) -> Vec<(String, Vec<usize>)> {
        Net::from_description(&self.desc)
            .expect("the model builds")
            .parameters()
    }

    /// The base weight `key` (the model's random initialisation).
    ///
    /// # Panics
    /// When the model has no parameter `key`.
    pub fn base_weight(&self, key: &str) -> Array {
        Array::of_prim(
            self.base
                .get(key)
                .unwrap_or_else(|| panic!("no base parameter `{key}`"))
                .clone(),
        )
    }

    /// Builds the plugin `P` (linked into this test) from `config`, the
    /// `[plugin.config]` table as TOML text (`"rank = 2\nalpha = 4.0"`; empty
    /// for the defaults), through the ABI. The error is the host's, naming
    /// the key.
    pub fn plugin<P: Plugin>(&self, config: &str) -> Result<TestPlugin, String> {
        let table: toml::Table = config
            .parse()
            .map_err(|e| format!("the config is not TOML: {e}"))?;
        let json = serde_json::to_string(&table).map_err(|e| e.to_string())?;
        let lib = in_process_library(
            dtx_plugin_api::__private::root_module::<P>(),
            vtables::<B>(),
        )
        .map_err(|e| e.to_string())?;
        let inst =
            Instance::<B>::new(P::NAME, lib, &json, &self.info).map_err(|e| e.to_string())?;
        Ok(TestPlugin::new(
            inst,
            self.net.clone(),
            self.desc.temb_channels,
        ))
    }
}
