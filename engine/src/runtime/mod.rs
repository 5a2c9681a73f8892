//! Running jobs: chaining ([`plan`]), the subtask loops ([`task`]), the exchange between
//! them ([`exchange`]), checkpoints ([`checkpoint`]), the job master ([`master`]) and the
//! embedded mini-cluster ([`cluster`]).

pub mod chain;
pub mod checkpoint;
pub mod cluster;
pub mod element;
pub mod exchange;
pub mod master;
pub mod metrics;
pub mod plan;
pub mod task;

pub use cluster::{JobHandle, MiniCluster};
pub use master::{JobEnvironment, JobState};
