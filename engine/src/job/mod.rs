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
    let mut spec: JobSpec = toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        let at = match e.span() {
            Some(span) => {
                let line = line_of(text, span.start);
                match key_in(text, span, &message) {
                    Some((line, key)) => format!("line {line}, {key}"),
                    None => format!("line {line}"),
                }
            }
            None => "(whole file)".to_string(),
        };
        EngineError::job(at, message)
    })?;
    let operators = table_lines(text, "operator");
    // Tables written some other way (an inline array) are not found by their headers: then
    // no lines rather than wrong ones.
    if operators.len() == spec.operators.len() {
        spec.operator_lines = operators;
    }
    Ok(spec)
}

/// The lines of every `[[name]]` table of a job file, in order: each header, and the keys up
/// to the next header.
fn table_lines(text: &str, name: &str) -> Vec<spec::TableLines> {
    let header = format!("[[{name}]]");
    let mut tables: Vec<spec::TableLines> = Vec::new();
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.split('#').next().unwrap_or_default();
        let squeezed: String = code.split_whitespace().collect();
        if squeezed.starts_with('[') {
            inside = squeezed == header;
            if inside {
                tables.push(spec::TableLines {
                    header: n + 1,
                    keys: Vec::new(),
                });
            }
        } else if inside
            && let Some((key, _)) = code.split_once('=')
            && let Some(table) = tables.last_mut()
        {
            table.keys.push((key.trim().to_string(), n + 1));
        }
    }
    tables
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|b| **b == b'\n').count() + 1
}

/// The line and key an error is about, when toml only gives the span of the whole table:
/// stages are internally tagged enums (by `kind`), which serde buffers, so that errors inside
/// a `[[source]]`, `[[operator]]` or `[[sink]]` lose their key's position. An unknown field
/// names its key; a wrong type names its value, found if exactly one key in the table has it.
fn key_in(text: &str, span: std::ops::Range<usize>, message: &str) -> Option<(usize, String)> {
    // toml points at the table's header (or its whole text); otherwise at the key or value
    // itself, and the line is right already. The table runs to the next header.
    let start = span.start;
    let from_start = text.get(start..)?;
    if !from_start.starts_with('[') {
        return None;
    }
    let body_at = from_start.find('\n')? + 1;
    let end = from_start[body_at..]
        .find("\n[")
        .map(|i| start + body_at + i + 1)
        .unwrap_or(text.len())
        .max(span.end.min(text.len()));
    let table = &text[start..end];
    let quoted = |prefix: &str| -> Option<&str> {
        let rest = message.split_once(prefix)?.1;
        let start = rest.find('`')? + 1;
        let len = rest[start..].find('`')?;
        Some(&rest[start..start + len])
    };
    // serde shows a string value as Rust writes a string literal (`string "fast"`), other
    // values in backquotes (`integer `5``).
    let string_value = ["invalid type: string ", "invalid value: string "]
        .iter()
        .find_map(|prefix| message.split_once(prefix))
        .and_then(|(_, rest)| rest.rsplit_once(", expected"))
        .map(|(literal, _)| literal.trim_matches('"'));
    let mut found = Vec::new();
    let mut offset = start;
    for line in table.split_inclusive('\n') {
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            let value = value.split('#').next().unwrap_or_default().trim();
            let hit = if let Some(name) = quoted("unknown field") {
                key == name
            } else if let Some(v) = string_value {
                value.trim_matches(|c| c == '"' || c == '\'') == v
                    && (value.starts_with('"') || value.starts_with('\''))
            } else if let Some(v) = quoted("invalid type: ").or_else(|| quoted("invalid value: ")) {
                value == v || value.trim_matches('"') == v
            } else {
                false
            };
            if hit && !key.starts_with('[') {
                found.push((line_of(text, offset), key.to_string()));
            }
        }
        offset += line.len();
    }
    if found.len() == 1 { found.pop() } else { None }
}
