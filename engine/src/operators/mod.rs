//! The built-in record operators: `filter`, `map` (projection) and keyed event-time windows.

mod aggregate;
mod filter;
mod project;
mod state;
mod window;

pub use aggregate::{AggregateFunction, AggregateSpec, parse_aggregate};
pub use filter::FilterOperator;
pub use project::ProjectOperator;
pub use window::{MAX_WINDOWS_PER_RECORD, WindowAssigner, WindowOperator, WindowSpec};

#[cfg(test)]
mod tests;
