//! Stage 4 of a run: each plugin's `prepare` (auxiliary training), with a
//! spinner counting its optimizer steps and what it logged written to
//! `metrics.jsonl`.

use super::dir::RunDir;
use super::error::Result;
use super::student::Student;
use super::support::progress_spinner;
use crate::tensor_abi::Session;
use burn::tensor::backend::AutodiffBackend;
use dtx_plugin_api::abi::Hook;
use std::collections::HashMap;
use std::io::Write;

/// Runs every plugin's `prepare` in manifest order, before `before`
/// (`train` or `sample`).
pub(super) fn run<B: AutodiffBackend>(
    student: &Student<B>,
    before: &str,
    quiet: bool,
    dir: &mut RunDir,
    log: &mut dyn Write,
) -> Result<()> {
    let run_dir = dir.path.display().to_string();
    student.each_hooked(
        |p| p.implements(Hook::Prepare),
        |inst| -> Result<()> {
            let started = std::time::Instant::now();
            // The host sees prepare's progress through `optimizer_step`: a
            // spinner counting steps on a terminal, nothing otherwise.
            let spinner = progress_spinner(quiet, &format!("prepare `{}`", inst.name));
            if let Some(sp) = spinner.clone() {
                Session::<B>::with(|s| {
                    s.services.prepare_steps = 0;
                    s.services.on_prepare_step = Some(Box::new(move |n| {
                        sp.set_message(format!("{n} optimizer steps"));
                    }));
                })?;
            }
            let result = inst.prepare(before, &run_dir);
            let steps = Session::<B>::with(|s| {
                s.services.on_prepare_step = None;
                s.services.prepare_steps
            })?;
            if let Some(sp) = spinner {
                sp.finish_and_clear();
            }
            result?;
            // What it logged, one `prepare` line of metrics.jsonl per value,
            // numbered per name (a curve per name).
            let logs = Session::<B>::with(|s| s.services.take_logs())?;
            let mut counts: HashMap<String, u64> = HashMap::new();
            for (name, value) in logs {
                let n = counts.entry(name.clone()).or_default();
                *n += 1;
                dir.log(
                &serde_json::json!({"prepare": inst.name, "key": name, "n": *n, "value": value}),
            )?;
            }
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(plugin = %inst.name, seconds, steps, "prepare done");
            if !quiet {
                writeln!(
                    log,
                    "prepare `{}`: {steps} optimizer steps in {seconds:.1} s",
                    inst.name
                )?;
            }
            Ok(())
        },
    )?;
    Ok(())
}
