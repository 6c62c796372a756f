//! Parity with transformers' `CLIPModel`, `CLIPImageProcessor` and
//! `CLIPTokenizerFast`, and the loader's errors.
//!
//! Reference: `tests/fixtures/clip/tiny-clip/` (a randomly initialised
//! CLIPModel: hidden 32, 2 layers, 4 heads, intermediate 37, image 64,
//! patch 16, projection 16, 16 text positions; `quick_gelu` text, `gelu`
//! vision) with `expected.safetensors` and `prompts.json`, written by
//! `tests/fixtures/clip/make_fixtures.py` (torch 2.15, transformers 5.24.0,
//! tokenizers 0.23.3; f32 on CPU).
//!
//! Tolerances: embeddings 1e-4 absolute (values are O(1); two 2-layer
//! encoders summed in another order than PyTorch's; measured 4e-7 pooled,
//! 1.7e-6 patches, 7e-7 text); preprocessing without a resize 1e-6 absolute
//! (the same f32 subtraction and division; measured 0); token ids exactly
//! equal.

use super::text::pool_position;
use super::*;
use crate::model::weights::WeightProblem;
use burn::backend::{Autodiff, Flex};
use burn::tensor::TensorData;
use safetensors::tensor::{Dtype, TensorView};
use std::path::PathBuf;

type B = Flex;

/// Embeddings, against transformers.
const EMBED_TOLERANCE: f32 = 1e-4;
/// pixel_values of an image that needs no resize, against the processor.
const PIXEL_TOLERANCE: f32 = 1e-6;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/clip")
}

fn model_dir() -> PathBuf {
    fixture_dir().join("tiny-clip")
}

/// `expected.safetensors`: name → (shape, values); int64 as f32.
fn expected() -> crate::model::test_io::Io {
    crate::model::test_io::read_io(&fixture_dir().join("expected.safetensors"))
}

fn prompts() -> Vec<String> {
    let text = std::fs::read_to_string(fixture_dir().join("prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensor4<Bk: Backend>(shape: &[usize], values: &[f32]) -> Tensor<Bk, 4> {
    let shape: [usize; 4] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> (Vec<usize>, Vec<f32>) {
    let dims = t.dims().to_vec();
    (
        dims,
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
    )
}

/// Largest |a − b|, after checking the shapes agree.
fn max_diff(got: &(Vec<usize>, Vec<f32>), want: &[usize], want_values: &[f32]) -> f32 {
    assert_eq!(got.0, want, "shape");
    crate::model::test_io::max_err(&got.1, want_values)
}

fn load() -> Clip<B> {
    Clip::load(&model_dir(), &Default::default()).unwrap()
}

#[test]
fn sizes_follow_the_config() {
    let clip = load();
    assert_eq!(clip.embed_dim(), 16);
    assert_eq!(clip.image_tokens(ClipTokens::Pooled), 1);
    assert_eq!(clip.image_tokens(ClipTokens::Patches), 1 + 4 * 4);
    assert_eq!(clip.image_size(), 64);
}

#[test]
fn image_embeddings_match_transformers() {
    let (clip, io) = (load(), expected());
    let (shape, pixels) = &io["pixel_values"];
    for (tokens, key) in [
        (ClipTokens::Pooled, "image_pooled"),
        (ClipTokens::Patches, "image_patches"),
    ] {
        let got = values(clip.encode_pixels(tensor4(shape, pixels), tokens));
        let (want_shape, want) = &io[key];
        // image_pooled is [B, D]; encode_pixels gives [B, 1, D].
        let want_shape = match tokens {
            ClipTokens::Pooled => vec![want_shape[0], 1, want_shape[1]],
            ClipTokens::Patches => want_shape.clone(),
        };
        let diff = max_diff(&got, &want_shape, want);
        assert!(diff <= EMBED_TOLERANCE, "{key}: max |diff| {diff}");
    }
}

#[test]
fn preprocess_without_resize_matches_the_processor() {
    let (clip, io) = (load(), expected());
    let (shape, image) = &io["image"];
    let (want_shape, want) = &io["image_pixel_values"];
    let got = values(clip.preprocess(tensor4(shape, image)).unwrap());
    let diff = max_diff(&got, want_shape, want);
    assert!(diff <= PIXEL_TOLERANCE, "max |diff| {diff}");
}

#[test]
fn preprocess_with_resize_follows_torchvision_antialiased_bicubic() {
    // An 80×96 image: shorter side to 64 (96 → 76), centre crop 64².
    // PIL's float bicubic (f64 sums) against torchvision's antialiased
    // bicubic on float tensors (f32): the same filter; measured 1.6e-5 in
    // normalised units (≈ 4e-6 on [0, 1] pixels), bounded at 1e-4.
    let (clip, io) = (load(), expected());
    let (shape, image) = &io["resize_image"];
    let (want_shape, want) = &io["resize_pixel_values"];
    let got = values(clip.preprocess(tensor4(shape, image)).unwrap());
    let diff = max_diff(&got, want_shape, want);
    assert!(diff <= 1e-4, "max |diff| {diff}");
}

#[test]
fn grey_images_are_repeated_and_other_channel_counts_refused() {
    let clip = load();
    let grey: Vec<f32> = (0..64 * 64).map(|i| (i % 7) as f32 / 7.0).collect();
    let rgb: Vec<f32> = grey.iter().cycle().take(3 * 64 * 64).copied().collect();
    let a = values(clip.preprocess(tensor4(&[1, 1, 64, 64], &grey)).unwrap());
    let b = values(clip.preprocess(tensor4(&[1, 3, 64, 64], &rgb)).unwrap());
    assert_eq!(a, b);
    let err = clip
        .preprocess(tensor4(&[1, 2, 64, 64], &[0.0; 2 * 64 * 64]))
        .unwrap_err();
    assert!(matches!(err, ModelError::BadInput { .. }), "{err}");
    assert!(err.to_string().contains("2 channels"), "{err}");
}

#[test]
fn tokenize_matches_transformers() {
    let (clip, io) = (load(), expected());
    let prompts = prompts();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let got = clip.tokenize(&prompts).unwrap();
    let (shape, want) = &io["input_ids"];
    assert_eq!([got.len(), got[0].len()], [shape[0], shape[1]]);
    let got: Vec<f32> = got.iter().flatten().map(|&id| id as f32).collect();
    assert_eq!(&got, want);
}

fn text_parity(clip: &Clip<B>, key: &str) {
    let io = expected();
    let prompts = prompts();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let got = values(clip.encode_text(&prompts).unwrap());
    let (shape, want) = &io[key];
    let diff = max_diff(&got, &[shape[0], 1, shape[1]], want);
    assert!(diff <= EMBED_TOLERANCE, "{key}: max |diff| {diff}");
}

#[test]
fn text_embeddings_match_transformers() {
    // eos_token_id = id of <|endoftext|>: pooled at its first position.
    text_parity(&load(), "text_embeds");
}

#[test]
fn no_prompts_give_no_rows() {
    let clip = load();
    assert!(clip.tokenize(&[]).unwrap().is_empty());
    assert_eq!(values(clip.encode_text(&[]).unwrap()).0, [0, 1, 16]);
}

/// A copy of the fixture model in a fresh temp folder.
fn copy_model(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtx-clip-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn legacy_eos_token_id_2_pools_at_the_largest_id() {
    // The fixture's merged tokens have ids above <|endoftext|>, so the two
    // rules pool different tokens of "a photo of the cat".
    let dir = copy_model("eos2");
    let config = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["text_config"]["eos_token_id"] = 2.into();
    std::fs::write(&config, json.to_string()).unwrap();
    text_parity(
        &Clip::load(&dir, &Default::default()).unwrap(),
        "text_embeds_eos2",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pooling_rules() {
    // eos 9: the first 9; none: position 0 (argmax of all-false).
    assert_eq!(pool_position(&[5, 7, 9, 9, 9], 9), 2);
    assert_eq!(pool_position(&[5, 7, 8], 9), 0);
    // eos 2 (legacy): the first largest id, whatever it is.
    assert_eq!(pool_position(&[5, 11, 9, 11], 2), 1);
}

#[test]
fn works_on_the_autodiff_backend() {
    let clip = Clip::<Autodiff<Flex>>::load(&model_dir(), &Default::default()).unwrap();
    let io = expected();
    let (shape, pixels) = &io["pixel_values"];
    let got = values(clip.encode_pixels(tensor4(shape, pixels), ClipTokens::Pooled));
    let (want_shape, want) = &io["image_pooled"];
    let diff = max_diff(&got, &[want_shape[0], 1, want_shape[1]], want);
    assert!(diff <= EMBED_TOLERANCE, "max |diff| {diff}");
    assert_eq!(values(clip.encode_text(&["a cat"]).unwrap()).0, [1, 1, 16]);
}

/// Rewrites `dir/model.safetensors` through `edit` (name → (dtype, shape,
/// bytes)).
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, dtype, shape, data)| {
            (
                k.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
}

#[test]
fn weight_problems_are_all_reported_with_file_and_key() {
    let dir = copy_model("broken");
    edit_weights(&dir, |t| {
        t.retain(|(k, ..)| {
            k != "text_projection.weight" && k != "vision_model.encoder.layers.1.mlp.fc2.bias"
        });
        t.push(("extra.weight".into(), Dtype::F32, vec![2], vec![0; 8]));
        let pre = t
            .iter_mut()
            .find(|(k, ..)| k == "vision_model.pre_layrnorm.weight")
            .unwrap();
        pre.2 = vec![16];
        pre.3.truncate(16 * 4);
    });
    let err = Clip::<B>::load(&dir, &Default::default()).unwrap_err();
    let ModelError::Weights { file, problems } = &err else {
        panic!("{err}");
    };
    assert_eq!(file, &dir.join("model.safetensors"));
    assert_eq!(
        problems,
        &[
            WeightProblem::Unexpected {
                key: "extra.weight".into(),
                found: vec![2]
            },
            WeightProblem::Missing {
                key: "text_projection.weight".into(),
                expected: vec![16, 32]
            },
            WeightProblem::Missing {
                key: "vision_model.encoder.layers.1.mlp.fc2.bias".into(),
                expected: vec![32]
            },
            WeightProblem::Shape {
                key: "vision_model.pre_layrnorm.weight".into(),
                expected: vec![32],
                found: vec![16]
            },
        ]
    );
    let text = err.to_string();
    for needle in [
        "model.safetensors",
        "4 problems",
        "extra.weight",
        "text_projection.weight",
        "layers.1.mlp.fc2.bias",
        "pre_layrnorm.weight",
    ] {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn position_ids_buffers_and_half_precision_are_read() {
    // Older transformers saved the position_ids buffers (int64); BF16
    // weights are converted.
    let dir = copy_model("position-ids");
    edit_weights(&dir, |t| {
        for (name, n) in [("text_model", 16), ("vision_model", 17)] {
            let data: Vec<u8> = (0..n as i64).flat_map(i64::to_le_bytes).collect();
            t.push((
                format!("{name}.embeddings.position_ids"),
                Dtype::I64,
                vec![1, n],
                data,
            ));
        }
        let (_, dtype, _, data) = t
            .iter_mut()
            .find(|(k, ..)| k == "visual_projection.weight")
            .unwrap();
        *dtype = Dtype::BF16;
        *data = data
            .chunks_exact(4)
            .flat_map(|b| {
                // Round to the nearest bfloat16: the top half of the f32.
                let bits = u32::from_le_bytes(b.try_into().unwrap());
                (((bits + 0x8000) >> 16) as u16).to_le_bytes()
            })
            .collect();
    });
    let clip = Clip::<B>::load(&dir, &Default::default()).unwrap();
    let io = expected();
    let (shape, pixels) = &io["pixel_values"];
    let got = values(clip.encode_pixels(tensor4(shape, pixels), ClipTokens::Pooled));
    let (want_shape, want) = &io["image_pooled"];
    // The projection rounded to bf16 (relative error ≤ 2^-9) moves the
    // embeddings (O(1)) by 4.1e-3 at most (measured); bounded at 1e-2.
    let diff = max_diff(&got, &[want_shape[0], 1, want_shape[1]], want);
    assert!(diff <= 1e-2, "max |diff| {diff}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_files_are_named() {
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let dir = copy_model(&format!("missing-{file}"));
        std::fs::remove_file(dir.join(file)).unwrap();
        let err = Clip::<B>::load(&dir, &Default::default()).unwrap_err();
        match &err {
            ModelError::MissingFile { path, .. } => assert_eq!(path, &dir.join(file)),
            other => panic!("{file}: {other}"),
        }
        assert!(err.to_string().contains(file), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn broken_tokenizer_is_named() {
    let dir = copy_model("bad-tokenizer");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = Clip::<B>::load(&dir, &Default::default()).unwrap_err();
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn parse(json: &str) -> Result<ClipConfig, ModelError> {
    ClipConfig::parse(Path::new("m/config.json"), json)
}

#[test]
fn absent_keys_take_transformers_defaults() {
    let c = parse("{}").unwrap();
    assert_eq!(c.projection_dim, 512);
    let (t, v) = (&c.text, &c.vision);
    assert_eq!(
        (
            t.encoder.hidden,
            t.encoder.intermediate,
            t.encoder.heads,
            t.encoder.layers
        ),
        (512, 2048, 8, 12)
    );
    assert_eq!((t.vocab, t.max_len, t.eos_token_id), (49408, 77, 49407));
    assert_eq!(t.encoder.act, config::Activation::QuickGelu);
    assert_eq!(
        (
            v.encoder.hidden,
            v.encoder.intermediate,
            v.encoder.heads,
            v.encoder.layers
        ),
        (768, 3072, 12, 12)
    );
    assert_eq!((v.image_size, v.patch_size, v.channels), (224, 32, 3));
    assert_eq!((v.encoder.eps, t.encoder.eps), (1e-5, 1e-5));
}

#[test]
fn config_dict_sections_win_as_in_transformers() {
    // openai/clip-vit-* configs carry both; `_dict` wins whole.
    let c = parse(
        r#"{"text_config": {"hidden_size": 64, "num_attention_heads": 4},
            "text_config_dict": {"hidden_size": 128}}"#,
    )
    .unwrap();
    assert_eq!((c.text.encoder.hidden, c.text.encoder.heads), (128, 8));
}

#[test]
fn config_errors_name_file_and_key() {
    let err = parse(r#"{"vision_config": {"hidden_act": "relu"}}"#).unwrap_err();
    assert_eq!(
        err.to_string(),
        "m/config.json: vision_config.hidden_act: unsupported value \"relu\"; \
         dtx implements \"quick_gelu\" and \"gelu\""
    );
    let err =
        parse(r#"{"text_config": {"hidden_size": 30, "num_attention_heads": 4}}"#).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("m/config.json: text_config.num_attention_heads: 4 heads"),
        "{err}"
    );
    let err = parse(r#"{"vision_config": {"image_size": [224, 224]}}"#).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("m/config.json: vision_config.image_size: expected"),
        "{err}"
    );
    assert!(matches!(parse("[1]"), Err(ModelError::BadJson { .. })));
}
