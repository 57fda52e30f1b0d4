//! Errors that mean "bad usage or configuration" (exit code 2).

use std::fmt;

/// A usage or configuration error: the command line or a config file asks for
/// something impossible. Reported with exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// True when the error (or anything it wraps) is a usage error.
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<Usage>() || e.is::<peerdelta_protocol::rdc::ParamError>())
}

/// Returns a usage error.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => { anyhow::Error::new($crate::Usage(format!($($arg)*))) };
}
