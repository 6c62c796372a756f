//! What plugins see and say is observable: `features(student)` runs the
//! other plugins' `inject`, what `score` and `filter` log reaches
//! `metrics.jsonl` (tagged as sampling), and every filter score is written
//! per sample to `samples/scores.csv`.

use dtx_tests::runs::{dtx_run, out_dir};

fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_feature_loss_sees_the_other_plugins_adapters() {
    // `two-plugins.toml`: the example adapter at `mid.*` (zero-initialised,
    // training), then the probe at `mid.res.0`, whose `feature` term is
    // the gap between features(student) and features(source) there. The
    // base is frozen, so the gap is the adapter's doing: 0 at the first
    // step, then not.
    let out = out_dir("observed", "features");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &[
            "train.steps=4",
            "train.batch=8",
            "train.lr=1e-2",
            "plugin[1].config.feature_weight=1.0",
            "sample.count=2",
            "sample.steps=2",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let gaps: Vec<f64> = metrics(&out.join("two-plugins"))
        .iter()
        .filter_map(|m| m.get("probe.feature_gap").and_then(|v| v.as_f64()))
        .collect();
    assert_eq!(gaps.len(), 4, "{gaps:?}");
    assert_eq!(gaps[0], 0.0, "{gaps:?}");
    assert!(gaps[3] > 0.0, "the adapters are left out: {gaps:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn sampling_logs_and_filter_scores_are_kept() {
    let out = out_dir("observed", "sampling");
    let r = dtx_run(
        "two-plugins.toml",
        &out,
        &[
            "train.steps=1",
            "train.batch=8",
            "plugin[1].config.log_sampling=true",
            "plugin[1].config.threshold=0.0",
            "sample.count=6",
            "sample.batch=4",
            "sample.steps=2",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = out.join("two-plugins");
    let m = metrics(&dir);
    let record = m
        .iter()
        .find_map(|v| v.get("sample"))
        .expect("sample record");
    let drawn = record["drawn"].as_u64().unwrap() as usize;
    let accepted = record["accepted"].as_u64().unwrap() as usize;
    // sampling values, tagged by batch; two DDIM steps call `score` twice
    // per batch, `filter` once
    let logged = |key: &str| {
        m.iter()
            .filter(|v| v["key"] == key && v.get("sampling_batch").is_some())
            .count()
    };
    let batches: std::collections::BTreeSet<u64> = m
        .iter()
        .filter_map(|v| v.get("sampling_batch").and_then(|b| b.as_u64()))
        .collect();
    // 6 samples in batches of at most 4: two batches at least, one
    // `filter` call each
    assert!(batches.len() >= 2, "{m:?}");
    assert_eq!(logged("probe.filter_mean"), batches.len());
    assert_eq!(logged("probe.eps_norm"), 2 * batches.len());
    // one score row per drawn sample (one filter), the accepted ones with
    // their index among the saved samples
    let csv = std::fs::read_to_string(dir.join("samples/scores.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(csv.lines().next(), Some("drawn,plugin,score,keep,sample"));
    assert_eq!(rows.len(), drawn, "{csv}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string());
        assert_eq!(row[1], "probe");
        let score: f32 = row[2].parse().unwrap();
        assert_eq!(row[3], (score > 0.0).to_string(), "{csv}");
        if row[3] == "false" {
            assert_eq!(row[4], "", "{csv}");
        }
    }
    let saved: Vec<&str> = rows
        .iter()
        .map(|r| r[4])
        .filter(|f| !f.is_empty())
        .collect();
    let expected: Vec<String> = (0..accepted).map(|i| i.to_string()).collect();
    assert_eq!(saved, expected, "{csv}");
    let _ = std::fs::remove_dir_all(&out);
}
