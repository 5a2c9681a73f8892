//! Running jobs: chaining ([`plan`]), the subtask loops ([`task`]), the exchange between
//! them ([`exchange`], and [`network`] across processes), checkpoints ([`checkpoint`]), the
//! job master ([`master`]), the task executor of task managers ([`executor`]) and the
//! embedded mini-cluster ([`cluster`]).

pub mod chain;
pub mod checkpoint;
pub mod cluster;
pub mod codec;
pub mod element;
pub mod exchange;
pub mod executor;
pub mod master;
pub mod metrics;
pub mod network;
pub mod plan;
pub mod task;

pub use cluster::{JobHandle, MiniCluster};
pub use master::{JobEnvironment, JobState};
