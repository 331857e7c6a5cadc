//! `cargo xtask`: the project's tasks.
//!
//! - `cargo xtask test`: every test of the workspace (unit, property, integration, doc).
//! - `cargo xtask ci`: formatting, lints, docs, then `test` — what `.ci/run` runs.
//! - `cargo xtask demo`: runs the VPN on this machine (nodes in network namespaces).

use std::env;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let task = env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "test" => test(),
        "ci" => ci(),
        "demo" => demo(),
        _ => {
            eprintln!("usage: cargo xtask <test|ci|demo>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cargo` with `args` from the workspace root, failing if it fails.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = env!("CARGO_MANIFEST_DIR").trim_end_matches("/xtask");
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn test() -> Result<()> {
    cargo(&["test", "--workspace", "--all-targets", "--locked"], &[])?;
    cargo(&["test", "--workspace", "--doc", "--locked"], &[])
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"], &[])?;
    cargo(&["doc", "--workspace", "--no-deps", "--locked"], &[("RUSTDOCFLAGS", "-D warnings")])?;
    test()
}

fn demo() -> Result<()> {
    bail!(
        "the demo needs the node (network, discovery, TUN), which is not assembled yet; \
         `cargo xtask test` runs what exists"
    )
}
