//! `dtx export` (issue 22 item 4): a LoRA run's model merged into a
//! diffusers folder samples exactly what the run sampled with the plugin,
//! the PEFT adapter holds the factors whose update `(α/r)·B·A` is the
//! merged folder's change to each weight (f64 reference, 1e-6), and what
//! cannot be merged is refused by name. tests/fixtures/export/check_peft.py
//! checks the same files against diffusers and PEFT themselves (by hand;
//! docs/export.md).

use dtx_tests::run_in_process;
use dtx_tests::runs::{dtx_run, ok_manifest, out_dir, tensors};
use std::collections::BTreeMap;
use std::path::Path;

/// Every accepted sample's PNG bytes, by file name.
fn pngs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// The f32 values of a safetensors tensor's raw bytes.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn a_lora_run_exports_a_merged_folder_that_samples_as_the_run_and_a_peft_adapter() {
    let out = out_dir("export", "lora");
    let r = dtx_run("lora-unet.toml", &out, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("lora-unet");
    let merged = out.join("merged");
    let e = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(e.stdout.contains("merged `lora`"), "{}", e.stdout);
    let mut files: Vec<String> = std::fs::read_dir(&merged)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["config.json", "diffusion_pytorch_model.safetensors"]
    );

    // a run on the merged folder with no plugin samples what the LoRA run
    // sampled: the same weights, bit for bit. It keeps the LoRA run's
    // [train] (its 100-step schedule is the sampler's) at a rate that moves
    // no weight (lr 1e-30: W + 1e-30 rounds to W).
    let manifest = std::fs::read_to_string(ok_manifest("lora-unet.toml")).unwrap();
    let start = manifest.find("[[plugin]]").unwrap();
    let end = manifest.find("[sample]").unwrap();
    let plain = format!("{}{}", &manifest[..start], &manifest[end..])
        .replace(
            "path = \"../../fixtures/models/tiny-diffusers\"\ninit = \"random\"       # the folder has a config.json and no weights",
            &format!("path = \"{}\"", merged.display()),
        )
        .replace("name = \"lora-unet\"", "name = \"merged\"");
    assert!(plain.contains(&merged.display().to_string()), "{plain}");
    let m = out.join("merged.toml");
    std::fs::write(&m, &plain).unwrap();
    let set = format!("run.output_dir=\"{}\"", out.display());
    let again = run_in_process(&[
        "run",
        m.to_str().unwrap(),
        "--quiet",
        "--set",
        &set,
        "--set",
        "train.lr=1e-30",
        "--set",
        "train.trainable=\"all\"",
    ]);
    assert_eq!(again.code, 0, "{}\n{plain}", again.stderr);
    let ran = pngs(&run);
    assert!(!ran.is_empty());
    assert_eq!(ran, pngs(&out.join("merged")));

    // the PEFT adapter: (α/r)·B·A is the merged change to each weight
    let peft = out.join("peft");
    let p = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "peft",
        "--out",
        peft.to_str().unwrap(),
    ]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 2);
    assert_eq!(config["lora_alpha"], 4.0);
    let scale = 4.0 / 2.0;
    let (_, adapter) = tensors(&peft.join("adapter_model.safetensors"));
    let (_, merged_w) = tensors(&merged.join("diffusion_pytorch_model.safetensors"));
    let (_, ckpt) = tensors(&run.join("checkpoints/latest.safetensors"));
    let modules = config["target_modules"].as_array().unwrap();
    assert!(!modules.is_empty());
    assert_eq!(adapter.len(), 2 * modules.len());
    for module in modules {
        let module = module.as_str().unwrap();
        let a = f32s(&adapter[&format!("base_model.model.{module}.lora_A.weight")]);
        let b = f32s(&adapter[&format!("base_model.model.{module}.lora_B.weight")]);
        let key = format!("{module}.weight");
        let w0 = f32s(&ckpt[&format!("param/{key}")]);
        let w1 = f32s(&merged_w[&key]);
        let r = 2;
        let (out_ch, fan_in) = (b.len() / r, a.len() / r);
        assert_eq!(out_ch * fan_in, w0.len(), "{key}");
        for i in 0..out_ch {
            for j in 0..fan_in {
                let d: f64 = (0..r)
                    .map(|k| b[i * r + k] as f64 * a[k * fan_in + j] as f64)
                    .sum();
                let want = w0[i * fan_in + j] as f64 + scale * d;
                let got = w1[i * fan_in + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-6,
                    "{key}[{i}, {j}]: {got} vs {want}"
                );
            }
        }
    }
    // weights no LoRA targets are the base's as they were
    let untouched = merged_w
        .keys()
        .filter(|k| {
            !modules
                .iter()
                .any(|m| format!("{}.weight", m.as_str().unwrap()) == **k)
        })
        .count();
    assert!(untouched > 0);
    for (k, v) in &merged_w {
        if !modules
            .iter()
            .any(|m| format!("{}.weight", m.as_str().unwrap()) == *k)
        {
            assert_eq!(v, &ckpt[&format!("param/{k}")], "{k}");
        }
    }

    // an existing folder is refused and left as it was
    let taken = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        peft.to_str().unwrap(),
    ]);
    assert!(
        taken.failed().contains("already exists"),
        "{}",
        taken.stderr
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn what_cannot_be_merged_is_refused_by_name() {
    let out = out_dir("export", "refused");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &["train.steps=2", "sample.count=2", "sample.steps=2"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("two-plugins");
    let dest = out.join("x");
    let e = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
    ]);
    let msg = e.failed();
    // the MLP source, before any plugin
    assert!(msg.contains("MLP"), "{msg}");
    assert!(!dest.exists());
    let p = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--format",
        "peft",
        "--out",
        dest.to_str().unwrap(),
    ]);
    let msg = p.failed();
    assert!(msg.contains("`adapter` (inject)"), "{msg}");
    assert!(!dest.exists());
    let f = run_in_process(&["export", run.to_str().unwrap(), "--format", "onnx"]);
    assert!(f.failed().contains("`onnx` is not a format"));
    let _ = std::fs::remove_dir_all(&out);
}

/// An ADM run (its output blocks fine-tuned, the rest frozen in the source
/// `.pt`: a checkpoint that refers to its base) exports guided-diffusion's
/// state dict with its flags; dtx reads the pair back, and its forward is
/// the run's, bit for bit.
#[test]
fn an_adm_run_exports_its_state_dict_and_flags() {
    use dtx_tests::files::{f32_bytes, f32_tensors, i64_bytes, write_safetensors};
    use safetensors::Dtype::{F32, I64};
    let out = out_dir("export", "adm");
    let r = dtx_run("adm-pt.toml", &out, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("adm-pt");
    let dest = out.join("adm-export");
    let e = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let model = dest.join("model.safetensors");
    let flags = dest.join("config.toml");
    let text = std::fs::read_to_string(&flags).unwrap();
    assert!(
        text.contains("num_classes = 5") && text.contains("learn_sigma = true"),
        "{text}"
    );
    let x: Vec<f32> = (0..2 * 3 * 8 * 8)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let inputs = out.join("in.safetensors");
    write_safetensors(
        &inputs,
        &[
            ("x", F32, vec![2, 3, 8, 8], f32_bytes(&x)),
            ("timesteps", I64, vec![2], i64_bytes(&[10, 90])),
            ("class_labels", I64, vec![2], i64_bytes(&[1, 3])),
        ],
    );
    let forward = |args: &[&str], file: &Path| {
        let mut all = vec!["model", "forward"];
        all.extend(args);
        all.extend([
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ]);
        let f = run_in_process(&all);
        assert_eq!(f.code, 0, "{}", f.stderr);
        f32_tensors(file)["out"].clone()
    };
    let exported = forward(
        &[model.to_str().unwrap(), "--config", flags.to_str().unwrap()],
        &out.join("exported.safetensors"),
    );
    let ran = forward(&[run.to_str().unwrap()], &out.join("ran.safetensors"));
    assert_eq!(exported, ran);
    let _ = std::fs::remove_dir_all(&out);
}

/// A `[source] kind = "dtx"` manifest for a run `name` on the run folder
/// `source`, with `lora-unet.toml`'s [target], [train] (its 100-step
/// schedule is the sampler's) and [sample], and no plugin; written into
/// `out`, its path returned.
fn on_dtx_source(out: &Path, name: &str, source: &Path) -> std::path::PathBuf {
    let manifest = std::fs::read_to_string(ok_manifest("lora-unet.toml")).unwrap();
    let start = manifest.find("[[plugin]]").unwrap();
    let end = manifest.find("[sample]").unwrap();
    let text = format!("{}{}", &manifest[..start], &manifest[end..])
        .replace(
            "kind = \"diffusers\"\npath = \"../../fixtures/models/tiny-diffusers\"\ninit = \"random\"       # the folder has a config.json and no weights",
            &format!("kind = \"dtx\"\npath = \"{}\"", source.display()),
        )
        .replace("name = \"lora-unet\"", &format!("name = \"{name}\""))
        .replace("output_dir = \"runs\"", &format!("output_dir = \"{}\"", out.display()));
    assert!(text.contains("kind = \"dtx\""), "{text}");
    let m = out.join(format!("{name}.toml"));
    std::fs::write(&m, text).unwrap();
    m
}

/// A LoRA run (with an EMA) as the `kind = "dtx"` source of a run with no
/// plugin and nothing to train: that run's weights are the LoRA run's W'
/// (EMA averages through the `weights` hook), byte for byte what `dtx
/// export` writes, so it samples the LoRA run's samples bit for bit. A
/// source run whose plugin library is gone is refused naming the plugin
/// and the run.
#[test]
fn a_lora_run_as_a_dtx_source_loads_its_merged_weights() {
    let out = out_dir("export", "dtx-source");
    let r = dtx_run("lora-unet.toml", &out, &["train.ema.decay=0.5"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("lora-unet");
    let merged = out.join("merged");
    let e = run_in_process(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(e.stdout.contains("EMA values"), "{}", e.stdout);

    let next = on_dtx_source(&out, "next", &run);
    let m = next.to_str().unwrap();
    let plan = run_in_process(&["plan", m]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout.contains("its plugin `lora` merged"),
        "{}",
        plan.stdout
    );
    let again = run_in_process(&["run", m, "--quiet"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let ran = pngs(&run);
    assert!(!ran.is_empty());
    assert_eq!(ran, pngs(&out.join("next")));
    // nothing trained: the checkpoint holds the weights loaded, which are
    // the exported ones
    let (_, loaded) = tensors(&out.join("next/checkpoints/latest.safetensors"));
    let (_, exported) = tensors(&merged.join("diffusion_pytorch_model.safetensors"));
    assert_eq!(
        exported.len(),
        loaded.keys().filter(|k| k.starts_with("param/")).count()
    );
    for (k, v) in &exported {
        assert_eq!(Some(v), loaded.get(&format!("param/{k}")), "{k}");
    }

    // a source run without plugins (`next`) is read as before: nested
    let plan = run_in_process(&[
        "plan",
        on_dtx_source(&out, "third", &out.join("next"))
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout.contains("its base parameters"),
        "{}",
        plan.stdout
    );

    // a source run whose plugin library is gone
    let moved = out.join("moved");
    std::fs::create_dir_all(moved.join("checkpoints")).unwrap();
    std::fs::copy(
        run.join("checkpoints/latest.safetensors"),
        moved.join("checkpoints/latest.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(run.join("manifest.toml")).unwrap();
    assert!(text.contains("\"dtx_plugin_lora\""), "{text}");
    std::fs::write(
        moved.join("manifest.toml"),
        text.replace("\"dtx_plugin_lora\"", "\"dtx_plugin_gone\""),
    )
    .unwrap();
    let gone = run_in_process(&[
        "plan",
        on_dtx_source(&out, "gone", &moved).to_str().unwrap(),
    ]);
    let msg = gone.failed();
    assert!(
        msg.contains(&moved.display().to_string())
            && msg.contains("`lora`")
            && msg.contains("dtx_plugin_gone"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A source run with an `inject` plugin cannot be merged: the plan and the
/// run are refused, naming the run, the plugins and their hooks.
#[test]
fn a_dtx_source_with_an_unmergeable_plugin_is_refused_by_name() {
    let out = out_dir("export", "dtx-refused");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &["train.steps=2", "sample.count=2", "sample.steps=2"],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = out.join("two-plugins");
    let next = dtx_run(
        "gmm-mlp.toml",
        &out,
        &[
            "run.name=\"next\"",
            "source.kind=\"dtx\"",
            &format!("source.path=\"{}\"", run.display()),
            "source.config={}",
            "train.steps=1",
        ],
        &[],
    );
    let msg = next.failed();
    assert!(
        msg.contains(&run.display().to_string())
            && msg.contains("`adapter` (inject)")
            && msg.contains("`probe` (inject, score, filter)")
            && msg.contains("dtx sample"),
        "{msg}"
    );
    assert!(!out.join("next").exists());
    let _ = std::fs::remove_dir_all(&out);
}
