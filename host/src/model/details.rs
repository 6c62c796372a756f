//! [`details`]: the base-parameter catalogue as plugins see it (api 0.4's
//! `ModelDetails`): every parameter of the network with its checkpoint key,
//! shape, role and block, with the prediction type, class count and data
//! shape. `dtx model inspect`, `dtx plugins inspect --model` and plugins'
//! `host.model_details()` read the same list.
//!
//! The role follows from the parameter's key and shape, the same way for
//! every denoiser: a rank-1 `weight` is a normalisation scale and the
//! `bias` beside it its shift (`norm`); another `bias` is a layer's
//! (`bias`); a `weight` of rank ≥ 3 is a convolution's kernel (`conv`); a
//! rank-2 `weight` is a class-embedding table when its layer is
//! `class_embedding`, `label_emb` or `class_embed` (`embedding`), else a
//! linear layer's (`linear`). The block is the injection point whose module
//! (`Point::module`) holds the key, the longest such prefix: a resnet's
//! parameters belong to `down.0.res.1`, the time embedding's to `temb`, an
//! attention block's to `down.0.attn.1` (the name of its `….branch` point
//! without the suffix); parameters outside every block (`conv_in`, the
//! output layers, resamplers) have none.

use super::{Denoiser, ModelDescription, Net};
use abi_stable::std_types::{RString, RVec};
use dtx_plugin_api::{BaseParamInfo, ModelDetails, ParamRole};
use std::collections::HashSet;

const EMBEDDING_LAYERS: [&str; 3] = ["class_embedding", "label_emb", "class_embed"];

/// What plugins learn about `desc`'s network beyond `ModelInfo`;
/// `prediction` as the manifest names it. The parameters are the
/// network's own catalogue (its declaration order); a description whose
/// network cannot be built lists the checkpoint's parameters, if known.
pub fn details(desc: &ModelDescription, prediction: &str) -> ModelDetails {
    match Net::from_description(desc) {
        Ok(net) => details_of(&net, desc, prediction),
        Err(_) => ModelDetails {
            prediction: RString::from(prediction),
            num_classes: 0,
            data_shape: RVec::new(),
            parameters: base_parameters(&desc.parameters, desc),
        },
    }
}

/// [`details`] of `net`, built from `desc` already (the run has it).
pub fn details_of(net: &Net, desc: &ModelDescription, prediction: &str) -> ModelDetails {
    ModelDetails {
        prediction: RString::from(prediction),
        num_classes: net.num_classes(),
        data_shape: RVec::from(net.data_shape()),
        parameters: base_parameters(net.catalogue().entries(), desc),
    }
}

/// Each `(key, shape)` with its role and block.
pub fn base_parameters(
    params: &[(String, Vec<usize>)],
    desc: &ModelDescription,
) -> RVec<BaseParamInfo> {
    let norms: HashSet<&str> = params
        .iter()
        .filter(|(k, s)| s.len() == 1 && k.ends_with(".weight"))
        .map(|(k, _)| k.trim_end_matches(".weight"))
        .collect();
    let blocks = block_prefixes(desc);
    params
        .iter()
        .map(|(key, shape)| BaseParamInfo {
            key: RString::from(key.as_str()),
            shape: RVec::from(shape.clone()),
            role: role(key, shape, &norms),
            block: RString::from(block_of(key, &blocks)),
        })
        .collect()
}

fn role(key: &str, shape: &[usize], norms: &HashSet<&str>) -> ParamRole {
    let (layer, name) = key.rsplit_once('.').unwrap_or(("", key));
    match (name, shape.len()) {
        (_, _) if norms.contains(layer) => ParamRole::NORM,
        ("bias", _) => ParamRole::BIAS,
        (_, r) if r >= 3 => ParamRole::CONV,
        (_, 2) if EMBEDDING_LAYERS.iter().any(|e| layer.ends_with(e)) => ParamRole::EMBEDDING,
        _ => ParamRole::LINEAR,
    }
}

/// `(block, key prefix)` for every block the points name.
fn block_prefixes(desc: &ModelDescription) -> Vec<(String, String)> {
    desc.points
        .iter()
        .filter_map(|p| match p.name.strip_suffix(".branch") {
            None => Some((p.name.clone(), p.module.clone())),
            // an attention's branch point: its module is the output layer
            // (`….to_out.0`, `….proj_out`); the block is the attention
            Some(block) if block.contains(".attn.") => {
                let cut = ["to_out", "proj_out"]
                    .iter()
                    .filter_map(|l| p.module.rfind(&format!(".{l}")))
                    .max()?;
                Some((block.to_owned(), p.module[..cut].to_owned()))
            }
            Some(_) => None,
        })
        .filter(|(_, m)| !m.is_empty())
        .collect()
}

fn block_of<'a>(key: &str, blocks: &'a [(String, String)]) -> &'a str {
    blocks
        .iter()
        .filter(|(_, m)| {
            key.len() > m.len() && key.starts_with(m.as_str()) && key.as_bytes()[m.len()] == b'.'
        })
        .max_by_key(|(_, m)| m.len())
        .map_or("", |(b, _)| b.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;

    fn desc(points: Vec<Point>) -> ModelDescription {
        ModelDescription {
            kind: "test".into(),
            data_channels: 3,
            out_channels: 3,
            resolution: 8,
            temb_channels: 4,
            points,
            parameters: Vec::new(),
            config: Vec::new(),
        }
    }

    #[test]
    fn roles_and_blocks_follow_keys_shapes_and_points() {
        let d = desc(vec![
            Point::vector("temb", 4, "time_embedding"),
            Point::image(
                "down.0.res.0".into(),
                4,
                8,
                "down_blocks.0.resnets.0".into(),
            ),
            Point::image(
                "down.0.res.0.branch".into(),
                4,
                8,
                "down_blocks.0.resnets.0.conv2".into(),
            ),
            Point::image(
                "down.0.attn.0.branch".into(),
                4,
                8,
                "down_blocks.0.attentions.0.to_out.0".into(),
            ),
        ]);
        let params: Vec<(String, Vec<usize>)> = [
            ("conv_in.weight", vec![4, 3, 3, 3]),
            ("conv_in.bias", vec![4]),
            ("time_embedding.linear_1.weight", vec![4, 4]),
            ("class_embedding.weight", vec![10, 4]),
            ("down_blocks.0.resnets.0.norm1.weight", vec![4]),
            ("down_blocks.0.resnets.0.norm1.bias", vec![4]),
            ("down_blocks.0.resnets.0.conv1.bias", vec![4]),
            ("down_blocks.0.attentions.0.to_q.weight", vec![4, 4]),
            ("down_blocks.0.attentions.0.to_out.0.bias", vec![4]),
            ("down_blocks.0.resnets.00.conv1.weight", vec![4, 4, 3, 3]),
        ]
        .into_iter()
        .map(|(k, s)| (k.to_owned(), s))
        .collect();
        let got: Vec<(String, &str, String)> = base_parameters(&params, &d)
            .iter()
            .map(|p| (p.key.to_string(), p.role.name(), p.block.to_string()))
            .collect();
        let want = [
            ("conv_in.weight", "conv", ""),
            ("conv_in.bias", "bias", ""),
            ("time_embedding.linear_1.weight", "linear", "temb"),
            ("class_embedding.weight", "embedding", ""),
            (
                "down_blocks.0.resnets.0.norm1.weight",
                "norm",
                "down.0.res.0",
            ),
            ("down_blocks.0.resnets.0.norm1.bias", "norm", "down.0.res.0"),
            ("down_blocks.0.resnets.0.conv1.bias", "bias", "down.0.res.0"),
            (
                "down_blocks.0.attentions.0.to_q.weight",
                "linear",
                "down.0.attn.0",
            ),
            (
                "down_blocks.0.attentions.0.to_out.0.bias",
                "bias",
                "down.0.attn.0",
            ),
            // `resnets.00` is not inside `resnets.0`
            ("down_blocks.0.resnets.00.conv1.weight", "conv", ""),
        ];
        let want: Vec<(String, &str, String)> = want
            .iter()
            .map(|(k, r, b)| (k.to_string(), *r, b.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
