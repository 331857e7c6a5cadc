use std::fmt;
use std::io;
use std::path::PathBuf;

use vpn_errors::{ConfigError, VpnError};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigLoadError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file is not valid TOML: {0}")]
    Syntax(String),
    /// Values of the wrong type or breaking a rule, each with its key, value and rule.
    #[error("{}", Problems(.0))]
    Invalid(Vec<ConfigError>),
}

impl ConfigLoadError {
    /// Every problem found, when the values were at fault.
    pub fn problems(&self) -> &[ConfigError] {
        match self {
            ConfigLoadError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

struct Problems<'a>(&'a [ConfigError]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl From<ConfigLoadError> for VpnError {
    fn from(err: ConfigLoadError) -> Self {
        match err {
            ConfigLoadError::Invalid(mut problems) if problems.len() == 1 => {
                VpnError::Config(problems.remove(0))
            }
            ConfigLoadError::Read { source, .. } => VpnError::Io(source),
            other => VpnError::Other { context: "load configuration", source: Box::new(other) },
        }
    }
}
