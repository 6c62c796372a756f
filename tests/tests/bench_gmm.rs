//! `dtx bench gmm` end to end with `--quick`: the source model, the
//! source-only and target-only runs at n = 10, the table, results.json and
//! the scatter plots.

use dtx_tests::run_in_process;
use dtx_tests::runs::out_dir;

#[test]
fn quick_bench_prints_the_table_and_writes_results_and_plots() {
    let out = out_dir("bench-gmm", "quick");
    let table = out.join("copy.md");
    let (o, t) = (out.display().to_string(), table.display().to_string());
    let r = run_in_process(&[
        "bench",
        "gmm",
        "--quick",
        "--n",
        "10",
        "--seeds",
        "0",
        "--methods",
        "source,target,tgdp",
        "--samples",
        "200",
        "--out",
        &o,
        "--table",
        &t,
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for line in [
        "| exact | – | ",
        "| source | – | ",
        "| target | 10 | ",
        "| tgdp | 10 | ",
    ] {
        assert!(r.stdout.contains(line), "no `{line}` in:\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains("| 0.145 |"),
        "the paper's Vanilla figure at n = 10:\n{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("One seed (0), so no spread."),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("finetune"),
        "only the methods asked for:\n{}",
        r.stdout
    );
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        md.contains("Setting (ours") && md.contains("| target | 10 |"),
        "{md}"
    );
    assert_eq!(std::fs::read_to_string(&table).unwrap(), md);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["exact", "source", "target", "tgdp"]);
    assert!(out.join("scatter-tgdp-n10.png").is_file());
    for row in rows {
        assert_eq!(row["samples"], 200, "{row}");
        let f: Vec<f64> = row["fractions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(f.len(), 8, "{row}");
        assert!((f.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{row}");
        assert!(row["mean_density"].as_f64().unwrap() >= 0.0, "{row}");
    }
    // 200 exact samples: coverage TV well below that of any collapse
    // (its expectation is ≈ 0.05 at this size).
    assert!(
        rows[0]["coverage_tv"].as_f64().unwrap() < 0.15,
        "{}",
        rows[0]
    );
    // Per-seed values stay in the rows; each method against `source`, one
    // seed so no interval.
    assert!(rows.iter().all(|r| r["seed"] == 0), "{rows:?}");
    let paired = json["paired"].as_array().unwrap();
    let pairs: Vec<String> = paired
        .iter()
        .map(|p| format!("{} {} {}", p["method"], p["n"], p["against"]))
        .collect();
    assert_eq!(
        pairs,
        ["\"target\" \"10\" \"source\"", "\"tgdp\" \"10\" \"source\""]
    );
    assert_eq!(paired[1]["mean_density"]["n"], 1);
    assert!(paired[1]["mean_density"]["ci95"].is_null());
    assert!(
        r.stdout.contains("| tgdp | 10 | source | 1 | "),
        "{}",
        r.stdout
    );
    assert!(md.contains("Paired differences, method − baseline"), "{md}");
    assert_eq!(json["target_weights"].as_array().unwrap().len(), 8);
    assert_eq!(json["pretrain"][0]["seed"], 0);

    for png in [
        "scatter-exact.png",
        "scatter-source.png",
        "scatter-target-n10.png",
    ] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert_eq!((img.width(), img.height()), (384, 384), "{png}");
    }
    // The run folders and the manifests that made them.
    for name in [
        "gmm-pretrain-seed0",
        "gmm-source-seed0",
        "gmm-target-n10-seed0",
    ] {
        assert!(
            out.join("runs").join(name).join("manifest.toml").is_file(),
            "{name}"
        );
        assert!(
            out.join("manifests").join(format!("{name}.toml")).is_file(),
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_unknown_method_is_refused_with_a_suggestion() {
    let out = out_dir("bench-gmm", "unknown");
    let o = out.display().to_string();
    let r = run_in_process(&["bench", "gmm", "--methods", "source,finetun", "--out", &o]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("did you mean `finetune`?"),
        "{}",
        r.stderr
    );
    assert!(
        !out.exists(),
        "nothing is written before the arguments are checked"
    );
}
