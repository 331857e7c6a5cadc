/// A configuration value that breaks a rule: names the key, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}` = {value}: {rule}")]
pub struct ConfigError {
    /// The dotted key, e.g. `stream_pool.max_streams_per_peer`.
    pub key: String,
    /// The offending value as written (or as parsed).
    pub value: String,
    /// The rule it breaks, e.g. `must be at least min_streams_per_peer (4)`.
    pub rule: String,
}

impl ConfigError {
    /// A new error for `key` holding `value` that breaks `rule`.
    pub fn new(key: impl Into<String>, value: impl ToString, rule: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.to_string(), rule: rule.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_key_value_and_rule() {
        let err = ConfigError::new("worker.max_workers", 0, "must be at least 1");
        assert_eq!(err.to_string(), "config key `worker.max_workers` = 0: must be at least 1");
    }
}
