use std::fs;
use std::path::Path;

use crate::VpnConfig;
use config::{Config, Environment, File, FileFormat, Map};
use vpn_errors::ConfigError;

use crate::{ConfigLoadError, validate};

/// The commented default configuration that `vpn-node init` writes.
pub const TEMPLATE: &str = include_str!("template.toml");

/// Keys whose environment override is a comma-separated list.
const LIST_KEYS: [&str; 7] = [
    "network.listen",
    "network.bootstrap",
    "network.allowed_peers",
    "membership.ca",
    "node.routes",
    "firewall.deny_ports",
    "firewall.deny_protocols",
];

/// Loads `path` with the process's `VPN_*` environment variables applied on top.
pub fn load_file(path: &Path) -> Result<VpnConfig, ConfigLoadError> {
    load_file_with_env(path, std::env::vars())
}

/// Loads `path` with the `VPN_*` variables among `env` applied on top. A relative
/// `node.identity_file`, `membership.certificate` or `membership.revocations` is taken from
/// the file's directory.
pub fn load_file_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<VpnConfig, ConfigLoadError> {
    let text = fs::read_to_string(path)
        .map_err(|source| ConfigLoadError::Read { path: path.to_owned(), source })?;
    let mut config = load_str(&text, env)?;
    if let Some(dir) = path.parent() {
        let membership = &mut config.membership;
        let files = [Some(&mut config.node.identity_file), membership.certificate.as_mut()];
        let more = [membership.revocations.as_mut(), config.network.psk_file.as_mut()];
        for file in files.into_iter().chain(more).flatten() {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        }
    }
    Ok(config)
}

/// Loads a configuration from TOML text with the `VPN_*` variables among `env` applied on
/// top, and validates it.
pub fn load_str(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<VpnConfig, ConfigLoadError> {
    // Only VPN_<SECTION>__<KEY> overrides: other variables that merely start with VPN_ (an
    // operator's own, say) are not ours and are left alone.
    let env: Map<String, String> =
        env.into_iter().filter(|(k, _)| k.starts_with("VPN_") && k.contains("__")).collect();
    let mut environment = Environment::with_prefix("VPN")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env));
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    let raw = Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(|e| ConfigLoadError::Syntax(e.to_string()))?;
    let config: VpnConfig = raw
        .clone()
        .try_deserialize()
        .map_err(|e| ConfigLoadError::Invalid(vec![describe(e, &raw)]))?;
    let problems = validate(&config);
    if problems.is_empty() { Ok(config) } else { Err(ConfigLoadError::Invalid(problems)) }
}

/// The config crate names keys as `peers[0]peer_id`; its own lookups want `peers[0].peer_id`.
fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '.' && c != '[' {
            out.push('.');
        }
        after_index = c == ']';
        out.push(c);
    }
    out
}

/// Turns a deserialization error into the key, the value and the rule broken.
fn describe(err: config::ConfigError, raw: &Config) -> ConfigError {
    match err {
        config::ConfigError::Type { unexpected, expected, key, .. } => ConfigError::new(
            normalize_key(key.as_deref().unwrap_or("?")),
            unexpected,
            format!("expected {expected}"),
        ),
        config::ConfigError::At { error, key, .. } => {
            let key = normalize_key(key.as_deref().unwrap_or("?"));
            let value = raw
                .get::<config::Value>(&key)
                .map_or_else(|_| "(unset)".to_owned(), |v| format!("{:?}", v.to_string()));
            let rule = match *error {
                config::ConfigError::Message(message) => message,
                other => other.to_string(),
            };
            ConfigError::new(key, value, rule)
        }
        other => ConfigError::new("(top level)", "-", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const MINIMAL: &str = "[node]\naddress = \"100.64.0.1/10\"\n";

    fn problem(text: &str, vars: &[(&str, &str)]) -> ConfigError {
        let err = load_str(text, env(vars)).unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 1, "{err}");
        problems[0].clone()
    }

    #[test]
    fn template_loads_with_one_address_added() {
        let config =
            load_str(&format!("{TEMPLATE}\n"), env(&[("VPN_NODE__ADDRESS", "100.64.0.7/10")]))
                .unwrap();
        assert_eq!(config.node.address.unwrap().to_string(), "100.64.0.7/10");
        assert_eq!(config.worker, vpn_worker::WorkerSettings::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let text = format!("{MINIMAL}[worker]\nmax_workers = 5\n");
        let config = load_str(
            &text,
            env(&[
                ("VPN_WORKER__MAX_WORKERS", "9"),
                ("VPN_WORKER__IDLE_TIMEOUT", "3s"),
                ("VPN_DISCOVERY__MDNS", "false"),
                ("VPN_NETWORK__LISTEN", "/ip4/127.0.0.1/tcp/1,/ip4/127.0.0.1/udp/1/quic-v1"),
                ("OTHER_WORKER__MAX_WORKERS", "1"),
                ("VPN_SOMETHING_ELSE", "not ours"),
            ]),
        )
        .unwrap();
        assert_eq!(config.worker.max_workers, 9);
        assert_eq!(config.worker.idle_timeout, std::time::Duration::from_secs(3));
        assert!(!config.discovery.mdns);
        assert_eq!(config.network.listen.len(), 2);
    }

    #[test]
    fn wrong_types_name_key_value_and_rule() {
        let p = problem(&format!("{MINIMAL}[worker]\nmax_workers = \"abc\"\n"), &[]);
        assert_eq!(p.key, "worker.max_workers");
        assert!(p.value.contains("abc"), "{p}");
        assert!(p.rule.contains("integer"), "{p}");
    }

    #[test]
    fn bad_durations_name_key_value_and_rule() {
        let p = problem(&format!("{MINIMAL}[worker]\nidle_timeout = \"10 parsecs\"\n"), &[]);
        assert_eq!(p.key, "worker.idle_timeout");
        assert!(p.value.contains("10 parsecs"), "{p}");
        assert!(p.rule.contains("duration"), "{p}");
    }

    #[test]
    fn bad_values_in_lists_and_tables_are_located() {
        let p = problem(&format!("{MINIMAL}[[peers]]\npeer_id = \"nope\"\n"), &[]);
        assert_eq!(p.key, "peers[0].peer_id");
        assert!(p.value.contains("nope"), "{p}");
        let p = problem(&format!("{MINIMAL}[network]\nlisten = [\"/ip9/x\"]\n"), &[]);
        assert_eq!(p.key, "network.listen[0]");
        assert!(p.value.contains("/ip9/x"), "{p}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let p = problem(&format!("{MINIMAL}[worker]\nbogus = 1\n"), &[]);
        assert_eq!(p.key, "worker");
        assert!(p.rule.contains("unknown field `bogus`"), "{p}");
    }

    #[test]
    fn environment_values_are_checked_too() {
        let p = problem(MINIMAL, &[("VPN_WORKER__MAX_WORKERS", "many")]);
        assert_eq!(p.key, "worker.max_workers");
        assert!(p.value.contains("many"), "{p}");
    }

    #[test]
    fn broken_toml_is_a_syntax_error() {
        let err = load_str("[worker\n", env(&[])).unwrap_err();
        assert!(matches!(err, ConfigLoadError::Syntax(_)), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_file_with_env(Path::new("/nonexistent/vpn.toml"), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vpn.toml"), "{err}");
    }

    #[test]
    fn identity_file_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        fs::write(&path, MINIMAL).unwrap();
        let config = load_file_with_env(&path, env(&[])).unwrap();
        assert_eq!(config.node.identity_file, dir.path().join("identity.key"));
    }

    #[test]
    fn keys_are_normalized() {
        assert_eq!(normalize_key("peers[0]peer_id"), "peers[0].peer_id");
        assert_eq!(normalize_key("network.listen[1]"), "network.listen[1]");
        assert_eq!(normalize_key("a[0][1]b"), "a[0][1].b");
    }
}
