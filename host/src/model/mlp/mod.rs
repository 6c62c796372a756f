//! Describes dtx's residual MLP denoiser for low-dimensional data, built from
//! `[source.config]` alone. The architecture, and so every parameter name and
//! shape, is defined here and in `docs/models.md` (the contract the engine
//! implements):
//!
//! ```text
//! e    = sinusoidal(t, hidden)                      // [cos(t·f_k), sin(t·f_k)], f_k = 10000^(-k/(hidden/2))
//! temb = time_embed.2(silu(time_embed.0(e)))  (+ class_embed[y])        -> point `temb`
//! h    = in_proj(x)
//! for block in down.0.res.0 … down.{B-1}.res.0, mid.res.0, up.0.res.0 … up.{B-1}.res.0:
//!     u = block.fc1(silu(block.norm(h))) + block.temb_proj(silu(temb))
//!     r = block.fc2(silu(u))                                             -> point `block.branch`
//!     h = h + r                                                          -> point `block`
//! out  = out_proj(silu(out_norm(h)))
//! ```
//! `norm` and `out_norm` are LayerNorms; weights are written `[in, out]`.
//! The network itself, [`MlpNet`], is `net.rs`.

mod net;

pub use net::{MlpConfig, MlpNet};

use super::config::{ConfigReader, check_keys, table_to_json};
use super::describe::Point;
use super::{ModelDescription, ModelError, Origin};
use std::path::Path;

/// Every `[source.config]` key an `mlp` source reads.
pub const KEYS: &[&str] = &["data_dim", "hidden", "blocks", "num_classes"];

/// The MLP's residual blocks, in forward order: `down.{i}.res.0` for
/// `i < blocks`, `mid.res.0`, `up.{i}.res.0` for `i < blocks`.
pub fn block_names(blocks: usize) -> Vec<String> {
    let down = (0..blocks).map(|i| format!("down.{i}.res.0"));
    let up = (0..blocks).map(|i| format!("up.{i}.res.0"));
    down.chain(std::iter::once("mid.res.0".to_owned()))
        .chain(up)
        .collect()
}

/// Every parameter of the MLP, in forward order, with its shape (`[in, out]`
/// for weights): the catalogue of the network [`MlpNet`] builds.
pub fn parameters(
    data_dim: usize,
    hidden: usize,
    blocks: usize,
    num_classes: usize,
) -> Vec<(String, Vec<usize>)> {
    let config = MlpConfig {
        data_dim,
        hidden,
        blocks,
        num_classes,
    };
    MlpNet::new(config).catalogue().entries().to_vec()
}

/// The widest layer or data vector a model config may ask for.
pub(crate) const MAX_WIDTH: usize = 1 << 16;
/// The most blocks (or layers per block) a model config may ask for.
pub(crate) const MAX_DEPTH: usize = 1024;

/// Describes the MLP that `config` defines. `path`, when given, names its
/// weights, which must exist; they are read by the engine.
pub fn describe(path: Option<&Path>, config: &toml::Table) -> Result<ModelDescription, ModelError> {
    let map = table_to_json(config);
    check_keys(&map, KEYS, |_| None)?;
    let mut r = ConfigReader::new(Origin::SourceConfig, &map);
    let data_dim = r.usize("data_dim", Some(2))?;
    let hidden = r.usize("hidden", Some(128))?;
    let blocks = r.usize("blocks", Some(2))?;
    let num_classes = r.usize("num_classes", Some(0))?;
    r.at_most(&[
        ("data_dim", data_dim, MAX_WIDTH),
        ("hidden", hidden, MAX_WIDTH),
        ("blocks", blocks, MAX_DEPTH),
        (
            "num_classes",
            num_classes,
            crate::util::limits::MAX_CLASSES as usize,
        ),
    ])?;
    for (key, n) in [("data_dim", data_dim), ("hidden", hidden)] {
        if n == 0 {
            return Err(ModelError::Invalid {
                at: r.at(key),
                reason: "must be at least 1".into(),
            });
        }
    }
    if hidden % 2 != 0 {
        return Err(ModelError::Invalid {
            at: r.at("hidden"),
            reason: format!("{hidden} is odd; the sinusoidal time features need an even width"),
        });
    }
    if let Some(path) = path
        && !path.exists()
    {
        return Err(ModelError::MissingFile {
            path: path.to_owned(),
            expected: "the MLP's weights (leave `path` out to start from a fresh model)".into(),
        });
    }

    // Each block's branch (`fc2`'s output), then its output.
    let mut points = vec![Point::vector("temb", hidden, "time_embed")];
    for b in block_names(blocks) {
        points.push(Point::vector(
            format!("{b}.branch"),
            hidden,
            format!("{b}.fc2"),
        ));
        points.push(Point::vector(b.clone(), hidden, b));
    }
    Ok(ModelDescription {
        kind: "mlp".into(),
        data_channels: data_dim,
        out_channels: data_dim,
        resolution: 0,
        temb_channels: hidden,
        points,
        parameters: parameters(data_dim, hidden, blocks, num_classes),
        config: r.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn huge_counts_are_errors_at_their_key() {
        for (text, key) in [
            ("blocks = 4294967296", "blocks"),
            ("hidden = 4294967296", "hidden"),
            ("num_classes = 4000000000", "num_classes"),
        ] {
            let err = describe(None, &table(text)).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("must be at most"),
                "{err}"
            );
        }
    }

    #[test]
    fn points_are_temb_then_every_block() {
        let d = describe(None, &table("hidden = 64\nblocks = 2")).unwrap();
        let got: Vec<(&str, usize, usize, usize, &str)> = d
            .points
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.channels,
                    p.height,
                    p.width,
                    p.module.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("temb", 64, 0, 0, "time_embed"),
                ("down.0.res.0.branch", 64, 0, 0, "down.0.res.0.fc2"),
                ("down.0.res.0", 64, 0, 0, "down.0.res.0"),
                ("down.1.res.0.branch", 64, 0, 0, "down.1.res.0.fc2"),
                ("down.1.res.0", 64, 0, 0, "down.1.res.0"),
                ("mid.res.0.branch", 64, 0, 0, "mid.res.0.fc2"),
                ("mid.res.0", 64, 0, 0, "mid.res.0"),
                ("up.0.res.0.branch", 64, 0, 0, "up.0.res.0.fc2"),
                ("up.0.res.0", 64, 0, 0, "up.0.res.0"),
                ("up.1.res.0.branch", 64, 0, 0, "up.1.res.0.fc2"),
                ("up.1.res.0", 64, 0, 0, "up.1.res.0"),
            ]
        );
        assert_eq!((d.data_channels, d.resolution, d.temb_channels), (2, 0, 64));
        assert_eq!(
            d.config,
            [
                ("blocks", "2"),
                ("data_dim", "2"),
                ("hidden", "64"),
                ("num_classes", "0")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn parameter_count_matches_hand_count() {
        // data_dim 2, hidden 4, 1 block (3 residual blocks), 3 classes:
        //   time_embed.0 + .2   2 · (4·4 + 4)            =  40
        //   class_embed         (3 + 1) · 4              =  16
        //   in_proj             2·4 + 4                  =  12
        //   per block           norm 8 + fc1 40 + temb_proj 40 + fc2 36 = 124, × 3 = 372
        //   out_norm + out_proj 8 + (4·2 + 2)            =  18
        let d = describe(None, &table("hidden = 4\nblocks = 1\nnum_classes = 3")).unwrap();
        assert_eq!(d.total_parameters(), 40 + 16 + 12 + 372 + 18);
        // Defaults (2, 128, 2 blocks, unconditional): 33,024 + 384 + 5 · 99,200 + 514.
        let d = describe(None, &toml::Table::new()).unwrap();
        assert_eq!(d.total_parameters(), 529_922);
    }

    #[test]
    fn parameter_names_follow_the_contract() {
        let names: Vec<String> = parameters(2, 4, 0, 1).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "time_embed.0.weight",
                "time_embed.0.bias",
                "time_embed.2.weight",
                "time_embed.2.bias",
                "class_embed.weight",
                "in_proj.weight",
                "in_proj.bias",
                "mid.res.0.norm.weight",
                "mid.res.0.norm.bias",
                "mid.res.0.fc1.weight",
                "mid.res.0.fc1.bias",
                "mid.res.0.temb_proj.weight",
                "mid.res.0.temb_proj.bias",
                "mid.res.0.fc2.weight",
                "mid.res.0.fc2.bias",
                "out_norm.weight",
                "out_norm.bias",
                "out_proj.weight",
                "out_proj.bias",
            ]
        );
        let p = parameters(2, 4, 0, 1);
        assert_eq!(p[5].1, [2, 4]);
        assert_eq!(p[9].1, [4, 8]);
        assert_eq!(p[13].1, [8, 4]);
        assert_eq!(p[17].1, [4, 2]);
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let err = describe(None, &table("hiden = 64"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "[source.config].hiden: unknown key (did you mean `hidden`?); valid keys: blocks, data_dim, hidden, num_classes"
        );
        let err = describe(None, &table("hidden = 63"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("[source.config].hidden: 63 is odd"),
            "{err}"
        );
        let err = describe(None, &table("blocks = -1"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "[source.config].blocks: expected a non-negative integer, found an integer -1"
        );
    }
}
