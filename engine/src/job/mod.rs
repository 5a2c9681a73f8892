//! Job files: reading them ([`spec`]) and compiling them into a [`JobGraph`] with the built-in
//! sources, operators and sinks ([`compile`]).

pub mod compile;
pub mod registry;
pub mod spec;

use std::path::Path;

pub use self::compile::{CompiledJob, compile};
pub use self::spec::JobSpec;
use crate::error::EngineError;

/// Reads and parses a job file. Errors name the file, and the line and field at fault.
pub fn load(path: &Path) -> Result<JobSpec, EngineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::io(format!("reading the job file {}", path.display()), e))?;
    parse(&text).map_err(|e| match e {
        EngineError::Job { at, message } => EngineError::Job {
            at: format!("{} {at}", path.display()),
            message,
        },
        other => other,
    })
}

/// Parses the text of a job file.
pub fn parse(text: &str) -> Result<JobSpec, EngineError> {
    toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                format!("line {line}")
            }
            None => "(whole file)".to_string(),
        };
        EngineError::job(at, e.message().to_string())
    })
}
