//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs every fuzz target of `fuzz/` with
//! libFuzzer (cargo-fuzz, on the nightly toolchain) for N seconds each (20 by default).
//! Each run starts by replaying the target's seeds in `fuzz/seeds/<target>` (committed:
//! valid inputs, and every input that once failed, so they are regression tests) and what
//! earlier runs found in `fuzz/corpus/<target>` (not committed). A failure leaves the input
//! in `fuzz/artifacts/<target>` and fails the task; add it to the seeds once fixed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: [&str; 7] =
    ["frame_decoder", "segmented", "datagram", "packet_info", "ip_record", "certificate", "config"];

/// The toolchain libFuzzer's instrumentation needs.
const NIGHTLY: &str = "nightly";

fn rustup(args: &[&str], dir: &Path) -> Result<std::process::ExitStatus> {
    eprintln!("$ rustup {}", args.join(" "));
    Command::new("rustup")
        .args(args)
        .current_dir(dir)
        // The workspace's cargo and toolchain must not leak into the nightly build.
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .status()
        .context("running rustup (the nightly toolchain is needed for fuzzing)")
}

/// Installs cargo-fuzz from crates.io when it is missing.
fn ensure_cargo_fuzz(root: &Path) -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .current_dir(root)
        .env_remove("CARGO")
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    crate::cargo(&["install", "cargo-fuzz", "--locked"], &[])
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds = 20u64;
    let mut only = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--seconds" => {
                seconds = words
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("--seconds takes a whole number")?;
            }
            target if TARGETS.contains(&target) => only.push(target.to_owned()),
            other => {
                bail!("unknown fuzz target or option {other:?}; targets: {}", TARGETS.join(", "))
            }
        }
    }
    ensure_cargo_fuzz(root)?;
    let fuzz = root.join("fuzz");
    let mut report = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_empty() || only.iter().any(|o| o == *t)) {
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let (corpus_dir, seeds_dir) = (format!("corpus/{target}"), format!("seeds/{target}"));
        let started = Instant::now();
        let time = format!("-max_total_time={seconds}");
        let status = rustup(
            &[
                "run",
                NIGHTLY,
                "cargo",
                "fuzz",
                "run",
                target,
                &corpus_dir,
                &seeds_dir,
                "--",
                &time,
                "-print_final_stats=1",
            ],
            &fuzz,
        )?;
        let took = started.elapsed().as_secs();
        if !status.success() {
            bail!(
                "fuzz target {target} failed after {took} s; the input is in fuzz/artifacts/{target}"
            );
        }
        let inputs = std::fs::read_dir(&corpus)?.count();
        report.push(format!("{target}: {took} s, 0 crashes, corpus of {inputs} inputs"));
    }
    println!("fuzzing, {seconds} s per target:");
    for line in report {
        println!("  {line}");
    }
    Ok(())
}
