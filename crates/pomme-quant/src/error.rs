//! The quantizer's error: a `pomme_core::Error`, or an exceeded accuracy
//! budget that carries the full validation report (so a CLI can still print
//! the table before exiting non-zero).

use crate::validate::ValidationReport;

/// Result alias of this crate.
pub type Result<T, E = QuantError> = std::result::Result<T, E>;

/// What can go wrong. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// Bad input, unreadable model or data, engine failure...
    #[error(transparent)]
    Core(#[from] pomme_core::Error),
    /// Validation ran, and the quantized model lost more than allowed. Nothing
    /// was written.
    #[error("{message}")]
    AccuracyBudgetExceeded {
        message: String,
        report: Box<ValidationReport>,
    },
}

impl From<QuantError> for pomme_core::Error {
    fn from(e: QuantError) -> Self {
        match e {
            QuantError::Core(e) => e,
            QuantError::AccuracyBudgetExceeded { message, .. } => {
                pomme_core::Error::UnsupportedPrecision(message)
            }
        }
    }
}
