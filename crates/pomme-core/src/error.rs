//! The one error enum, and the single table mapping it to HTTP and gRPC.
//!
//! Every crate returns [`Error`]; the server maps it with [`Error::http_status`]
//! and [`Error::grpc_code`] and nowhere else. Messages are one line and name the
//! problem; they are safe to show to clients except for [`Error::Internal`],
//! whose detail goes to logs only (see [`Error::client_message`]).

use std::fmt;

/// Result alias used across pomme.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, by kind. `Clone` because one batch failure is
/// sent to every request of the batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A backend, device or model is not available (library missing, no GPU, not ready).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No such model (or version) is loaded.
    #[error("model not found: {0}")]
    ModelNotFound(String),
    /// The artifact is missing, empty, truncated or not a model this backend reads.
    #[error("invalid model: {0}")]
    InvalidModelFormat(String),
    /// The model parsed but could not be turned into a runnable plan.
    #[error("compilation failed: {0}")]
    CompilationFailed(String),
    /// The engine failed while running.
    #[error("inference failed: {0}")]
    InferenceFailed(String),
    /// The request's deadline passed.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The caller went away or cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Concurrency or queue limit reached; try again later.
    #[error("resource limit: {0}")]
    ResourceLimit(String),
    /// Loading or running would exceed the memory budget.
    #[error("memory budget exceeded: {0}")]
    MemoryBudgetExceeded(String),
    /// The request's inputs do not match the model (name, dtype, shape, size, count).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The requested precision is not supported by this backend or model.
    #[error("unsupported precision: {0}")]
    UnsupportedPrecision(String),
    /// A model of this name and version is already loaded.
    #[error("model already loaded: {0}")]
    ModelAlreadyLoaded(String),
    /// A bug or an unexpected engine state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The kind of an [`Error`], without its message; used as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    Unavailable,
    ModelNotFound,
    InvalidModelFormat,
    CompilationFailed,
    InferenceFailed,
    Timeout,
    Cancelled,
    ResourceLimit,
    MemoryBudgetExceeded,
    InvalidInput,
    UnsupportedPrecision,
    ModelAlreadyLoaded,
    Internal,
}

/// gRPC status codes, numbered as in the gRPC specification (core has no tonic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    Cancelled = 1,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl ErrorKind {
    /// Stable snake_case name (metrics label, JSON).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::InvalidModelFormat => "invalid_model_format",
            ErrorKind::CompilationFailed => "compilation_failed",
            ErrorKind::InferenceFailed => "inference_failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::ResourceLimit => "resource_limit",
            ErrorKind::MemoryBudgetExceeded => "memory_budget_exceeded",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::UnsupportedPrecision => "unsupported_precision",
            ErrorKind::ModelAlreadyLoaded => "model_already_loaded",
            ErrorKind::Internal => "internal",
        }
    }

    /// The one error → (HTTP status, gRPC code, retryable) table.
    pub const fn mapping(self) -> (u16, GrpcCode, bool) {
        match self {
            ErrorKind::Unavailable => (503, GrpcCode::Unavailable, true),
            ErrorKind::ModelNotFound => (404, GrpcCode::NotFound, false),
            ErrorKind::InvalidModelFormat => (400, GrpcCode::InvalidArgument, false),
            ErrorKind::CompilationFailed => (500, GrpcCode::Internal, false),
            ErrorKind::InferenceFailed => (500, GrpcCode::Internal, true),
            ErrorKind::Timeout => (504, GrpcCode::DeadlineExceeded, true),
            ErrorKind::Cancelled => (499, GrpcCode::Cancelled, false),
            ErrorKind::ResourceLimit => (429, GrpcCode::ResourceExhausted, true),
            ErrorKind::MemoryBudgetExceeded => (507, GrpcCode::ResourceExhausted, false),
            ErrorKind::InvalidInput => (400, GrpcCode::InvalidArgument, false),
            ErrorKind::UnsupportedPrecision => (400, GrpcCode::InvalidArgument, false),
            ErrorKind::ModelAlreadyLoaded => (409, GrpcCode::AlreadyExists, false),
            ErrorKind::Internal => (500, GrpcCode::Internal, false),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::ModelNotFound(_) => ErrorKind::ModelNotFound,
            Error::InvalidModelFormat(_) => ErrorKind::InvalidModelFormat,
            Error::CompilationFailed(_) => ErrorKind::CompilationFailed,
            Error::InferenceFailed(_) => ErrorKind::InferenceFailed,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            Error::ResourceLimit(_) => ErrorKind::ResourceLimit,
            Error::MemoryBudgetExceeded(_) => ErrorKind::MemoryBudgetExceeded,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::UnsupportedPrecision(_) => ErrorKind::UnsupportedPrecision,
            Error::ModelAlreadyLoaded(_) => ErrorKind::ModelAlreadyLoaded,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind().mapping().2
    }

    /// HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        self.kind().mapping().0
    }

    /// gRPC status code for this error.
    pub fn grpc_code(&self) -> GrpcCode {
        self.kind().mapping().1
    }

    /// The message to show a client: internals are hidden behind a generic line.
    pub fn client_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error (details in the server log)".to_string(),
            other => other.to_string(),
        }
    }

    /// The same kind of error with another message.
    pub fn with_message(&self, msg: impl Into<String>) -> Error {
        let m = msg.into();
        match self.kind() {
            ErrorKind::Unavailable => Error::Unavailable(m),
            ErrorKind::ModelNotFound => Error::ModelNotFound(m),
            ErrorKind::InvalidModelFormat => Error::InvalidModelFormat(m),
            ErrorKind::CompilationFailed => Error::CompilationFailed(m),
            ErrorKind::InferenceFailed => Error::InferenceFailed(m),
            ErrorKind::Timeout => Error::Timeout(m),
            ErrorKind::Cancelled => Error::Cancelled(m),
            ErrorKind::ResourceLimit => Error::ResourceLimit(m),
            ErrorKind::MemoryBudgetExceeded => Error::MemoryBudgetExceeded(m),
            ErrorKind::InvalidInput => Error::InvalidInput(m),
            ErrorKind::UnsupportedPrecision => Error::UnsupportedPrecision(m),
            ErrorKind::ModelAlreadyLoaded => Error::ModelAlreadyLoaded(m),
            ErrorKind::Internal => Error::Internal(m),
        }
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> String {
        let s = self.to_string();
        s.split_once(": ")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or(s)
    }

    /// Shorthand for `InvalidInput(format!(..))`.
    pub fn invalid_input(msg: impl Into<String>) -> Error {
        Error::InvalidInput(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(Error::ResourceLimit("queue full".into()).http_status(), 429);
        assert_eq!(
            Error::ResourceLimit("q".into()).grpc_code(),
            GrpcCode::ResourceExhausted
        );
        assert!(Error::Timeout("x".into()).is_retryable());
        assert!(!Error::InvalidInput("x".into()).is_retryable());
        assert_eq!(Error::ModelNotFound("m".into()).http_status(), 404);
        assert_eq!(
            Error::Unavailable("m".into()).grpc_code(),
            GrpcCode::Unavailable
        );
    }

    #[test]
    fn internal_details_are_hidden() {
        let e = Error::Internal("secret path /etc/x".into());
        assert!(!e.client_message().contains("secret"));
        assert!(
            Error::InvalidInput("bad".into())
                .client_message()
                .contains("bad")
        );
    }

    #[test]
    fn messages_are_one_line() {
        let e = Error::InvalidInput("input 'x' has dtype FP64, expected FP32".into());
        assert!(!e.to_string().contains('\n'));
    }
}
