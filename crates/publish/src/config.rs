//! The error type of every `validate()` in this crate: a field path and what is wrong with it.

use std::fmt;

/// One invalid configuration field, reported by path: `sinks.redis.url: not a redis:// or
/// rediss:// URL`. Messages never repeat the value (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, from the root of walbust's configuration file.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// Several errors on one line, `; ` between them, as walbust reports a
    /// refused configuration.
    pub fn join(errors: &[ConfigError]) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn new(prefix: &str, field: &str, message: impl fmt::Display) -> Self {
        Self {
            path: format!("{prefix}.{field}"),
            message: message.to_string(),
        }
    }
}

/// Collects errors; `finish` turns them into the `validate()` result.
#[derive(Debug)]
pub(crate) struct Errors<'a> {
    prefix: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub(crate) fn new(prefix: &'a str) -> Self {
        Self {
            prefix,
            errors: Vec::new(),
        }
    }

    pub(crate) fn check(&mut self, ok: bool, field: &str, message: impl fmt::Display) {
        if !ok {
            self.push(field, message);
        }
    }

    pub(crate) fn push(&mut self, field: &str, message: impl fmt::Display) {
        self.errors
            .push(ConfigError::new(self.prefix, field, message));
    }

    pub(crate) fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}
