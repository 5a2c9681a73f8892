//! Rivulet's stream processor: Flink's runtime concepts in Rust, with exactly-once bucketed
//! file output through fs-core's recoverable writer. See `docs/engine.md`.

pub mod builder;
pub mod clock;
pub mod cluster;
pub mod data;
pub mod error;
pub mod expr;
pub mod format;
pub mod graph;
pub mod job;
pub mod operator;
pub mod operators;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod text;

pub use data::{DataType, Field, Record, Row, Schema, SchemaRef, Timestamp, Value};
pub use error::EngineError;
pub use operator::{Operator, Output, Source, SourceStatus, TaskContext};
