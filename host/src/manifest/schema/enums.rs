//! The manifest's fixed-spelling values (`backend`, `source.kind`,
//! `train.schedule`, …): unit enums with their accepted spellings, errors
//! that list them, and serde impls, declared by one macro.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Declares a unit enum spelled as a fixed string in the manifest, with
/// `VARIANTS`, `as_str`, `Display`, `FromStr` (its error an
/// [`UnknownVariant`]) and serde impls whose errors list the accepted
/// spellings.
macro_rules! string_enum {
    // `listed "kind";` before the enum: every variant written
    // `Variant => "name": "description",` is also a built-in of that kind
    // for `dtx list` (crate::registry), so the names a manifest accepts and
    // the names `dtx list` prints come from this one declaration.
    (
        listed $kind:literal;
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal $(: $desc:literal)?, )+
        }
    ) => {
        string_enum! {
            $(#[$meta])*
            pub enum $name {
                $( $(#[$vmeta])* $variant => $text, )+
            }
        }
        $($(
            inventory::submit! {
                crate::registry::Builtin { kind: $kind, name: $text, description: $desc }
            }
        )?)+
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every accepted spelling, in declaration order.
            pub const VARIANTS: &'static [&'static str] = &[$($text),+];

            /// The spelling used in manifests.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(text: &str) -> Result<Self, UnknownVariant> {
                match text {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(UnknownVariant {
                        text: text.to_owned(),
                        expected: Self::VARIANTS,
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct EnumVisitor;
                impl<'de> Visitor<'de> for EnumVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str(&one_of($name::VARIANTS))
                    }
                    fn visit_str<E: de::Error>(self, text: &str) -> Result<$name, E> {
                        match text {
                            $( $text => Ok($name::$variant), )+
                            _ => Err(E::unknown_variant(text, $name::VARIANTS)),
                        }
                    }
                }
                deserializer.deserialize_str(EnumVisitor)
            }
        }
    };
}

/// A spelling that is none of a string enum's variants, from its `FromStr`
/// impl: "unknown variant `cdua`, expected `cpu` or `cuda`", worded as serde
/// words the same error while deserialising.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown variant `{text}`, expected {}", one_of(expected))]
pub struct UnknownVariant {
    /// The text given.
    pub text: String,
    /// Every accepted spelling, in declaration order (the enum's `VARIANTS`).
    pub expected: &'static [&'static str],
}

/// "`a` or `b`" / "one of `a`, `b`, `c`", as serde words it.
fn one_of(names: &[&str]) -> String {
    match names {
        [one] => format!("`{one}`"),
        [a, b] => format!("`{a}` or `{b}`"),
        _ => {
            let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

string_enum! {
    /// `run.backend`: where tensors live.
    #[derive(Default)]
    pub enum Backend {
        /// `"cpu"`: burn's CPU backend, always built.
        #[default]
        Cpu => "cpu",
        /// `"cuda"`: needs dtx built with `--features cuda`.
        Cuda => "cuda",
    }
}

string_enum! {
    listed "model";
    /// `source.kind`: the format of the pretrained checkpoint.
    pub enum SourceKind {
        /// `"diffusers"`: a diffusers `UNet2DModel` folder (config + weights).
        Diffusers => "diffusers": "diffusers UNet2DModel folder (config.json + safetensors); described by dtx plan",
        /// `"adm"`: a guided-diffusion (ADM) `.pt` checkpoint; flags in
        /// `source.config`.
        Adm => "adm": "guided-diffusion / improved-diffusion ADM U-Net, flags in [source.config]; described by dtx plan",
        /// `"mlp"`: dtx's small MLP denoiser for 2-D toy data; sizes in
        /// `source.config`, `path` optional.
        Mlp => "mlp": "residual MLP denoiser for low-dimensional data, built from [source.config]",
        /// `"dtx"`: a checkpoint written by an earlier dtx run.
        Dtx => "dtx",
    }
}

string_enum! {
    /// `source.prediction`: what the network outputs.
    #[derive(Default)]
    pub enum Prediction {
        /// `"epsilon"`: the added noise ε (DDPM).
        #[default]
        Epsilon => "epsilon",
        /// `"v_prediction"`: v = α_t ε − σ_t x0 (Salimans & Ho, 2022).
        VPrediction => "v_prediction",
        /// `"sample"`: the clean sample x0.
        Sample => "sample",
    }
}

string_enum! {
    /// `train.optimizer`.
    #[derive(Default)]
    pub enum Optimizer {
        /// `"adamw"`: Adam with decoupled weight decay.
        #[default]
        AdamW => "adamw",
        /// `"adam"`: Adam.
        Adam => "adam",
        /// `"sgd"`: plain stochastic gradient descent.
        Sgd => "sgd",
    }
}

string_enum! {
    /// `source.init`: pretrained weights or a fresh random init.
    #[derive(Default)]
    pub enum Init {
        /// `"pretrained"`: the checkpoint's weights.
        #[default]
        Pretrained => "pretrained",
        /// `"random"`: PyTorch's default initialisation, seeded by `run.seed`.
        Random => "random",
    }
}

string_enum! {
    /// `train.loss_weight`: the per-timestep weight of the denoising loss.
    #[derive(Default)]
    pub enum LossWeight {
        /// `"none"`: L_simple (Ho et al., 2020).
        #[default]
        None => "none",
        /// `"p2"`: perception-prioritised weighting, 1 / (k + SNR(t))^γ
        /// (Choi et al., 2022).
        P2 => "p2",
        /// `"min_snr"`: min-SNR-γ weighting (Hang et al., 2023).
        MinSnr => "min_snr",
    }
}

string_enum! {
    listed "schedule";
    /// `train.schedule`: the noise schedule β_t.
    #[derive(Default)]
    pub enum Schedule {
        /// `"linear"`: β linear from 1e-4 to 0.02 (DDPM).
        #[default]
        Linear => "linear": "β linear from 1e-4 to 0.02 (Ho et al. 2020)",
        /// `"scaled_linear"`: √β linear (Stable Diffusion).
        ScaledLinear => "scaled_linear": "√β linear from √1e-4 to √0.02 (latent diffusion)",
        /// `"cosine"`: ᾱ_t from a squared cosine (Nichol & Dhariwal, 2021).
        Cosine => "cosine": "cosine ᾱ, diffusers' squaredcos_cap_v2 (Nichol & Dhariwal 2021, Eq. 17)",
    }
}

string_enum! {
    listed "sampler";
    /// `sample.sampler`.
    #[derive(Default)]
    pub enum Sampler {
        /// `"ddim"`: DDIM steps with `eta`.
        #[default]
        Ddim => "ddim": "DDIM steps with eta (Song et al. 2021, Eq. 12 and 16); eta = 0 is deterministic",
        /// `"ddpm"`: ancestral DDPM steps.
        Ddpm => "ddpm": "ancestral DDPM steps, posterior mean of Ho et al. 2020 Eq. 7; fixed_small, fixed_large or learned_range variance",
    }
}

string_enum! {
    /// `condition.encoder`: what turns an image into a condition embedding.
    #[derive(Default)]
    pub enum EncoderKind {
        /// `"unet"`: pooled activations of the frozen source U-Net at a
        /// fixed timestep (embedded; needs no download).
        #[default]
        Unet => "unet",
        /// `"clip"`: a CLIP model folder (transformers `CLIPModel` layout).
        Clip => "clip",
    }
}

string_enum! {
    /// `condition.tokens`: which CLIP embeddings condition the model.
    #[derive(Default)]
    pub enum TokenKind {
        /// `"pooled"`: one token, the projected pooled embedding (the space
        /// text prompts share).
        #[default]
        Pooled => "pooled",
        /// `"patches"`: the projected vision-tower tokens (class + patches);
        /// images only.
        Patches => "patches",
    }
}
