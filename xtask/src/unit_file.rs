//! The systemd unit's hardening, as `systemd-analyze security` judges it: every setting it
//! finds missing is one docs/membership.md names with its reason (its table "Left out of
//! the unit"), and the unit keeps the node's configuration, identity and revocation list
//! out of the service's reach for writing.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The marker `systemd-analyze security` puts before a setting the unit lacks.
const EXPOSED: &str = "\u{2717} ";
/// The heading of the documented exceptions in docs/membership.md.
const LEFT_OUT: &str = "### Left out of the unit";

/// Checks dist/vpn-node.service against `systemd-analyze` and docs/membership.md.
pub fn check(root: &Path) -> Result<()> {
    let unit = root.join("dist").join("vpn-node.service");
    let text = fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
    read_only(&text)?;
    let report = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .context("running systemd-analyze")?;
    if !report.status.success() {
        bail!("systemd-analyze security failed: {}", String::from_utf8_lossy(&report.stderr));
    }
    let exposed = exposed(&String::from_utf8_lossy(&report.stdout));
    let doc = root.join("docs").join("membership.md");
    let doc = fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
    let documented = documented(&doc);
    if exposed.is_empty() {
        bail!("systemd-analyze reported nothing: its report format changed?");
    }
    let unexplained: Vec<_> = exposed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exposed).collect();
    if !unexplained.is_empty() || !stale.is_empty() {
        bail!(
            "the unit's hardening and docs/membership.md disagree: missing from the unit without a documented reason: {unexplained:?}; documented as missing but set: {stale:?}"
        );
    }
    eprintln!("systemd unit: {} settings left out, each with its reason", exposed.len());
    Ok(())
}

/// The names of the settings a `systemd-analyze security` report marks as missing.
fn exposed(report: &str) -> BTreeSet<String> {
    report
        .lines()
        .filter_map(|line| line.strip_prefix(EXPOSED))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The settings docs/membership.md's table of exceptions names (first column, in backticks;
/// a `|` in a name is escaped there as `\|`).
fn documented(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .skip_while(|line| !line.starts_with(LEFT_OUT))
        .skip(1)
        .take_while(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| name.replace("\\|", "|"))
        .collect()
}

/// The unit mounts the file system read-only, /etc/vpn-node included, and opens no way to
/// write there again.
fn read_only(unit: &str) -> Result<()> {
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for needed in ["ProtectSystem=strict", "ReadOnlyPaths=/etc/vpn-node"] {
        if !lines.contains(&needed) {
            bail!("the unit lacks {needed}: the service could write its own configuration");
        }
    }
    if let Some(line) =
        lines.iter().find(|l| l.starts_with("ReadWritePaths=") && l.contains("/etc"))
    {
        bail!("the unit makes /etc writable ({line})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_and_a_table_name_the_same_settings() {
        let report = "  NAME  DESCRIPTION  EXPOSURE\n\u{2717} PrivateNetwork=   Service has access   0.5\n\u{2713} UMask=  fine\n\u{2717} RestrictAddressFamilies=~AF_(INET|INET6)  net 0.3\n";
        let doc = "intro\n### Left out of the unit\n\n| setting | why |\n|---|---|\n| `PrivateNetwork=` | it is a VPN |\n| `RestrictAddressFamilies=~AF_(INET\\|INET6)` | the underlay |\n\n## Next\n| `Other=` | not ours |\n";
        assert_eq!(exposed(report), documented(doc));
        assert_eq!(exposed(report).len(), 2);
    }

    #[test]
    fn a_writable_configuration_is_caught() {
        assert!(read_only("ProtectSystem=strict\nReadOnlyPaths=/etc/vpn-node\n").is_ok());
        assert!(read_only("ProtectSystem=strict\n").is_err());
        assert!(
            read_only(
                "ProtectSystem=strict\nReadOnlyPaths=/etc/vpn-node\nReadWritePaths=/etc/vpn-node\n"
            )
            .is_err()
        );
    }
}
