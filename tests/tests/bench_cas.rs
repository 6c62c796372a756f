//! `dtx bench cas` end to end with `--quick` (two training, sampling and
//! plugin-classifier steps): every arm's run, the real images, the table,
//! results.json and table.md, and `--reuse` of finished runs.

use dtx_tests::run_in_process;
use dtx_tests::runs::out_dir;

const ARMS: [&str; 5] = [
    "finetune",
    "finetune+cfg",
    "finetune+cfg+rejection",
    "sdft+rejection",
    "real",
];

fn bench(out: &std::path::Path, extra: &[&str]) -> dtx_tests::Output {
    let root = dtx_tests::workspace_root();
    let table = out.join("copy.md");
    let sets = [
        format!("run.output_dir=\"{}\"", out.display()),
        // small training and held-out sets keep the quick runs short
        "target.limit=40".to_owned(),
        "target.holdout=20".to_owned(),
    ];
    let mut args = vec![
        "bench".to_owned(),
        "cas".into(),
        "--quick".into(),
        "--seeds".into(),
        "0".into(),
        "--per-class".into(),
        "4".into(),
        "--test-images".into(),
        "100".into(),
        "--out".into(),
        table.display().to_string(),
    ];
    for s in sets {
        args.extend(["--set".to_owned(), s]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    // the arms' manifests are in the repository's shipped folder, named
    // here so that the bench finds them from any working folder
    args.extend([
        "--manifests".to_owned(),
        root.join("manifests").display().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_in_process(&refs)
}

#[test]
fn quick_bench_scores_every_arm_on_equal_per_class_counts() {
    let out = out_dir("bench-cas", "quick");
    let r = bench(&out, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);

    // The table has every arm, CAS in [0, 100].
    let md = std::fs::read_to_string(out.join("bench-cas/table.md")).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("copy.md")).unwrap(), md);
    for arm in ARMS {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {arm} | ")))
            .unwrap_or_else(|| panic!("no row for {arm} in:\n{md}"));
        let cas: f64 = line.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!((0.0..=100.0).contains(&cas), "{line}");
        assert!(r.stdout.contains(line), "the table is printed too");
    }

    // results.json: one row per arm, equal per-class counts, each arm has
    // at least that many of each class, and a synthetic arm's acceptance.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench-cas/results.json")).unwrap())
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    let arms: Vec<&str> = rows.iter().map(|r| r["arm"].as_str().unwrap()).collect();
    assert_eq!(arms, ARMS);
    let n = rows[0]["per_class"].as_u64().unwrap();
    assert!((1..=4).contains(&n), "{n}");
    for row in rows {
        assert_eq!(row["per_class"].as_u64(), Some(n), "{row}");
        let cas = row["cas"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cas), "{row}");
        let available = row["available"].as_array().unwrap();
        assert_eq!(available.len(), 2, "two classes: {row}");
        assert!(available.iter().all(|a| a.as_u64().unwrap() >= n), "{row}");
        let rate = &row["acceptance_rate"];
        if row["arm"] == "real" {
            assert!(rate.is_null(), "{row}");
            // the real arm has the run's 40 training images
            let total: u64 = available.iter().map(|a| a.as_u64().unwrap()).sum();
            assert_eq!(total, 40, "{row}");
        } else {
            let rate = rate.as_f64().unwrap();
            assert!(rate > 0.0 && rate <= 1.0, "{row}");
        }
    }
    // Paired CAS differences against fine-tuning (one seed: no interval),
    // in the table and in results.json.
    assert!(
        md.contains("| finetune+cfg+rejection | finetune+cfg | 1 | "),
        "{md}"
    );
    let paired = json["paired"].as_array().unwrap();
    assert_eq!(paired.len(), 6, "{paired:?}");
    assert_eq!(paired[0]["arm"], "finetune+cfg");
    assert_eq!(paired[0]["against"], "finetune");
    let d = paired[0]["cas"]["differences"][0].as_f64().unwrap();
    let cas = |i: usize| rows[i]["cas"].as_f64().unwrap();
    assert!((d - (cas(1) - cas(0))).abs() < 1e-9, "{}", paired[0]);
    assert!(paired[0]["cas"]["ci95"].is_null());
    // Arms without rejection keep every sample they draw; the run folders
    // are where the bench says.
    assert_eq!(rows[0]["acceptance_rate"].as_f64(), Some(1.0));
    assert_eq!(rows[1]["acceptance_rate"].as_f64(), Some(1.0));
    for slug in [
        "finetune",
        "finetune-cfg",
        "finetune-cfg-rejection",
        "sdft-rejection",
    ] {
        let dir = out.join(format!("bench-cas-{slug}-seed0"));
        assert!(dir.join("samples/labels.csv").is_file(), "{slug}");
    }
    // A cut, if the quick rejection runs stopped short, is announced.
    if n < 4 {
        assert!(r.stdout.contains("every arm is cut to"), "{}", r.stdout);
    }

    // --reuse scores the same folders again without running them.
    let again = bench(&out, &["--reuse"]);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert_eq!(
        again.stdout.matches(": reusing ").count(),
        4,
        "{}",
        again.stdout
    );
    let md2 = std::fs::read_to_string(out.join("bench-cas/table.md")).unwrap();
    assert_eq!(md, md2, "same runs, same classifier: the same table");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_zero_per_class_count_is_refused_before_anything_runs() {
    let out = out_dir("bench-cas", "zero");
    let r = run_in_process(&["bench", "cas", "--per-class", "0"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("--per-class"), "{}", r.stderr);
    assert!(!out.exists());
}
