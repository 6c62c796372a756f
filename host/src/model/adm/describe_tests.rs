//! Tests of the ADM description: flags, defaults, points and parameters.
use super::super::safetensors_header::tests::{temp_dir, write_safetensors};
use super::*;

fn table(text: &str) -> toml::Table {
    text.parse().unwrap()
}

const SMALL: &str = r#"
    image_size = 32
    num_channels = 64
    num_res_blocks = 1
    channel_mult = "1,2,2"
    attention_resolutions = "16"
    learn_sigma = true
"#;

#[test]
fn small_config_with_learned_sigma() {
    let d = describe_config(&table(SMALL)).unwrap();
    assert_eq!(
        (
            d.data_channels,
            d.out_channels,
            d.resolution,
            d.temb_channels
        ),
        (3, 6, 32, 256)
    );
    let got: Vec<(&str, usize, usize, &str)> = d
        .points
        .iter()
        .map(|p| (p.name.as_str(), p.channels, p.height, p.module.as_str()))
        .collect();
    // Per layer: the ResBlock's branch, its output, the attention's branch
    // (attention at 16×16: level 1, up level 1, and the middle block).
    assert_eq!(
        got,
        [
            ("temb", 256, 0, "time_embed"),
            (
                "down.0.res.0.branch",
                64,
                32,
                "input_blocks.1.0.out_layers.3"
            ),
            ("down.0.res.0", 64, 32, "input_blocks.1.0"),
            (
                "down.1.res.0.branch",
                128,
                16,
                "input_blocks.3.0.out_layers.3"
            ),
            ("down.1.res.0", 128, 16, "input_blocks.3.0"),
            ("down.1.attn.0.branch", 128, 16, "input_blocks.3.1.proj_out"),
            (
                "down.2.res.0.branch",
                128,
                8,
                "input_blocks.5.0.out_layers.3"
            ),
            ("down.2.res.0", 128, 8, "input_blocks.5.0"),
            ("mid.res.0.branch", 128, 8, "middle_block.0.out_layers.3"),
            ("mid.res.0", 128, 8, "middle_block.0"),
            ("mid.attn.0.branch", 128, 8, "middle_block.1.proj_out"),
            ("mid.res.1.branch", 128, 8, "middle_block.2.out_layers.3"),
            ("mid.res.1", 128, 8, "middle_block.2"),
            (
                "up.0.res.0.branch",
                128,
                8,
                "output_blocks.0.0.out_layers.3"
            ),
            ("up.0.res.0", 128, 8, "output_blocks.0.0"),
            (
                "up.0.res.1.branch",
                128,
                8,
                "output_blocks.1.0.out_layers.3"
            ),
            ("up.0.res.1", 128, 8, "output_blocks.1.0"),
            (
                "up.1.res.0.branch",
                128,
                16,
                "output_blocks.2.0.out_layers.3"
            ),
            ("up.1.res.0", 128, 16, "output_blocks.2.0"),
            ("up.1.attn.0.branch", 128, 16, "output_blocks.2.1.proj_out"),
            (
                "up.1.res.1.branch",
                128,
                16,
                "output_blocks.3.0.out_layers.3"
            ),
            ("up.1.res.1", 128, 16, "output_blocks.3.0"),
            ("up.1.attn.1.branch", 128, 16, "output_blocks.3.1.proj_out"),
            (
                "up.2.res.0.branch",
                64,
                32,
                "output_blocks.4.0.out_layers.3"
            ),
            ("up.2.res.0", 64, 32, "output_blocks.4.0"),
            (
                "up.2.res.1.branch",
                64,
                32,
                "output_blocks.5.0.out_layers.3"
            ),
            ("up.2.res.1", 64, 32, "output_blocks.5.0"),
        ]
    );
    assert!(d.points.iter().all(|p| p.width == p.height));
    assert_eq!(d.config_value("channel_mult"), Some("[1, 2, 2]"));
    assert_eq!(d.config_value("attention_resolutions"), Some("[16]"));
    assert_eq!(d.config_value("use_scale_shift_norm"), Some("true"));
    assert_eq!(d.config_value("num_heads"), Some("4"));
    assert_eq!(d.config.len(), KEYS.len());
}

#[test]
fn huge_counts_are_errors_at_their_key() {
    for (from, to, key) in [
        (
            "num_res_blocks = 1",
            "num_res_blocks = 4294967296",
            "num_res_blocks",
        ),
        (
            "num_channels = 64",
            "num_channels = 4294967296",
            "num_channels",
        ),
    ] {
        let err = describe_config(&table(&SMALL.replace(from, to)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("must be at most"),
            "{err}"
        );
    }
}

#[test]
fn channel_mult_defaults_by_image_size() {
    let d = describe_config(&table(
        "image_size = 256\nnum_channels = 256\nnum_res_blocks = 2",
    ))
    .unwrap();
    assert_eq!(d.config_value("channel_mult"), Some("[1, 1, 2, 2, 4, 4]"));
    assert_eq!(d.point("mid.res.0").unwrap().height, 8);
    let d = describe_config(&table(
        "image_size = 512\nnum_channels = 256\nnum_res_blocks = 2",
    ))
    .unwrap();
    assert_eq!(d.point("down.0.res.0").unwrap().channels, 128);
    let err = describe_config(&table(
        "image_size = 32\nnum_channels = 64\nnum_res_blocks = 2",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(
            "[source.config].channel_mult: missing required key (guided-diffusion picks it only"
        ),
        "{err}"
    );
}

#[test]
fn released_guided_diffusion_flags_are_accepted() {
    // MODEL_FLAGS of the 64x64 ImageNet and 256x256 unconditional
    // checkpoints (guided-diffusion README), model flags only.
    let d = describe_config(&table(
        r#"attention_resolutions = "32,16,8"
           class_cond = true
           dropout = 0.1
           image_size = 64
           learn_sigma = true
           num_channels = 192
           num_head_channels = 64
           num_res_blocks = 3
           resblock_updown = true
           use_new_attention_order = true
           use_fp16 = true
           use_scale_shift_norm = true"#,
    ))
    .unwrap();
    // temb, 30 ResBlocks with their branches, attention at 3 of 4
    // levels: 3 × 3 down, 3 × 4 up, and the middle block's.
    assert_eq!(
        (d.points.len(), d.temb_channels, d.out_channels),
        (1 + 2 * (12 + 2 + 16) + (9 + 12 + 1), 768, 6)
    );
    assert_eq!(d.point("up.0.res.3").unwrap().module, "output_blocks.3.0");
    let d = describe_config(&table(
        r#"attention_resolutions = "32,16,8"
           image_size = 256
           learn_sigma = true
           num_channels = 256
           num_head_channels = 64
           num_res_blocks = 2
           resblock_updown = true"#,
    ))
    .unwrap();
    assert_eq!(d.point("down.5.res.1").unwrap().module, "input_blocks.17.0");
    assert_eq!(d.point("down.5.res.1").unwrap().channels, 1024);
}

#[test]
fn arrays_work_like_flag_strings() {
    let a = describe_config(&table(SMALL)).unwrap();
    let b = describe_config(&table(
        &SMALL
            .replace("\"1,2,2\"", "[1, 2, 2]")
            .replace("\"16\"", "[16]"),
    ))
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn unknown_keys_suggest_and_redirect() {
    let err = describe_config(&table("image_size = 32\nnum_chanels = 64"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("[source.config].num_chanels: unknown key (did you mean `num_channels`?); valid keys: attention_resolutions, channel_mult,"),
        "{err}"
    );
    let err = describe_config(&table("diffusion_steps = 1000"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key; `diffusion_steps` is a diffusion flag, not a model hyperparameter: set `train.timesteps`"), "{err}");
}

#[test]
fn bad_values_are_located() {
    let err = describe_config(&table("num_channels = 64\nnum_res_blocks = 1"))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "[source.config].image_size: missing required key");
    let err = describe_config(&table(&SMALL.replace("\"1,2,2\"", "\"1,x,2\"")))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "[source.config].channel_mult[1]: expected a positive number, found \"x\""
    );
    let err = describe_config(&table(&SMALL.replace("64", "48")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("48 x channel_mult[0] = 48 channels, not a positive multiple of 32"),
        "{err}"
    );
    let err = describe_config(&table(&format!("{SMALL}\nnum_heads = 3")))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "[source.config].num_heads: an attention block with 128 channels cannot be split into 3 heads"
    );
    let err = describe_config(&table(&SMALL.replace("true", "\"True\"")))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "[source.config].learn_sigma: expected a boolean, found a string \"True\""
    );
}

#[test]
fn checkpoint_files() {
    let dir = temp_dir("adm");
    let err = describe(&dir.join("model.pt"), &table(SMALL))
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("model.pt: no such file or folder; expected a guided-diffusion checkpoint (.pt or .safetensors)"), "{err}");

    std::fs::write(dir.join("model.pt"), b"not read").unwrap();
    let d = describe(&dir.join("model.pt"), &table(SMALL)).unwrap();
    assert!(!d.parameters_known());

    let file = dir.join("model.safetensors");
    write_safetensors(
        &file,
        r#"{"time_embed.0.weight":{"dtype":"F16","shape":[256,64],"data_offsets":[0,32768]}}"#,
        32768,
    );
    let d = describe(&file, &table(SMALL)).unwrap();
    assert_eq!(
        d.parameters,
        [("time_embed.0.weight".to_owned(), vec![256, 64])]
    );

    std::fs::write(dir.join("model.bin"), b"").unwrap();
    let err = describe(&dir.join("model.bin"), &table(SMALL))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ends in .pt"), "{err}");
}
