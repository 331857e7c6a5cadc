use std::fmt;

use crate::BoxError;

/// What went wrong in a service's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServiceErrorKind {
    /// The service was used before it was started.
    NotStarted,
    /// The service was started twice.
    AlreadyStarted,
    /// The service has been stopped.
    Stopped,
    /// The service could not start.
    Startup,
    /// The service is busy or short of capacity for now.
    Unavailable,
    /// A bug: an invariant of the service did not hold.
    Internal,
}

impl fmt::Display for ServiceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceErrorKind::NotStarted => "not started",
            ServiceErrorKind::AlreadyStarted => "already started",
            ServiceErrorKind::Stopped => "stopped",
            ServiceErrorKind::Startup => "failed to start",
            ServiceErrorKind::Unavailable => "unavailable",
            ServiceErrorKind::Internal => "internal error",
        })
    }
}

/// A failure of one of the node's services, naming the service and the operation.
#[derive(Debug)]
pub struct ServiceError {
    kind: ServiceErrorKind,
    service: &'static str,
    operation: &'static str,
    source: Option<BoxError>,
}

impl ServiceError {
    /// A new error of `kind` in `service` (e.g. `"stream pool"`) during `operation`.
    pub fn new(kind: ServiceErrorKind, service: &'static str, operation: &'static str) -> Self {
        Self { kind, service, operation, source: None }
    }

    /// Keeps the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ServiceErrorKind {
        self.kind
    }

    /// The service concerned.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The operation that failed.
    pub fn operation(&self) -> &'static str {
        self.operation
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.service, self.operation, self.kind)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_service_operation_and_cause() {
        let err = ServiceError::new(ServiceErrorKind::Startup, "tun", "create interface")
            .with_source(std::io::Error::other("permission denied"));
        assert_eq!(err.to_string(), "tun create interface: failed to start: permission denied");
        assert_eq!(err.kind(), ServiceErrorKind::Startup);
        assert_eq!(err.service(), "tun");
    }
}
