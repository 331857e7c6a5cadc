//! The programs the network tests need, installed from Debian's packages when missing.

use std::process::Command;

use anyhow::{Result, bail};

/// Program -> the Debian package that has it.
const TOOLS: [(&str, &str); 5] = [
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("nft", "nftables"),
    ("systemd-analyze", "systemd"),
];

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes sure every tool the network tests need is there: installs the missing ones with
/// apt-get when root, and otherwise fails naming exactly what is missing.
pub fn ensure() -> Result<()> {
    ensure_these(&TOOLS)
}

/// Makes sure every program of `tools` (program, Debian package) is there, as [`ensure`].
pub fn ensure_these(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools.iter().filter(|(p, _)| !have(p)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("the network tests need root and these Debian packages: {}", missing.join(" "));
    }
    eprintln!("installing {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-q"]).status()?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !install.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}
