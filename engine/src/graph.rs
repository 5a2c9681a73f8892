//! The logical dataflow of a job: vertices (sources and operators, each with a parallelism and
//! an output schema) and the edges between them, with how records are partitioned on each.
//!
//! A [`JobGraph`] is what the job file and the [`crate::builder`] API both produce; the runtime
//! turns it into chained tasks ([`crate::runtime::plan`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::data::SchemaRef;
use crate::error::EngineError;
use crate::operator::{Operator, Source};

/// Builds a fresh operator for one subtask (a restarted job builds new ones).
pub type OperatorFactory =
    Arc<dyn Fn(usize) -> Result<Box<dyn Operator>, EngineError> + Send + Sync>;
/// Builds a fresh source for one subtask.
pub type SourceFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Source>, EngineError> + Send + Sync>;

/// How records travel along an edge from the upstream subtasks to the downstream ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// Subtask i feeds subtask i (equal parallelism); such edges are chained.
    Forward,
    /// By a stable hash of these fields of the upstream schema: one key, one subtask.
    Hash(Vec<usize>),
    /// Round-robin over the downstream subtasks.
    Rebalance,
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioning::Forward => f.write_str("FORWARD"),
            Partitioning::Hash(_) => f.write_str("HASH"),
            Partitioning::Rebalance => f.write_str("REBALANCE"),
        }
    }
}

/// What a vertex runs.
#[derive(Clone)]
pub enum VertexKind {
    Source {
        factory: SourceFactory,
        /// Bounded out-of-orderness: the watermark trails the largest timestamp seen by this.
        watermark_delay: Duration,
    },
    Operator {
        factory: OperatorFactory,
        /// Sinks have no outputs and count as the job's output in the progress report.
        is_sink: bool,
    },
}

/// One operator of the dataflow.
#[derive(Clone)]
pub struct Vertex {
    /// Unique in the job; names its state in checkpoints, so it must stay stable across
    /// versions of a job that restore each other's checkpoints.
    pub id: String,
    /// What it is, for humans: `nexmark`, `filter`, `window`, `file sink`.
    pub description: String,
    pub parallelism: usize,
    pub kind: VertexKind,
    /// The schema of the rows it emits (for sinks, the schema of what they receive).
    pub schema: SchemaRef,
}

impl Vertex {
    pub fn is_source(&self) -> bool {
        matches!(self.kind, VertexKind::Source { .. })
    }

    pub fn is_sink(&self) -> bool {
        matches!(self.kind, VertexKind::Operator { is_sink: true, .. })
    }
}

/// An edge between two vertices, by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub partitioning: Partitioning,
}

/// Checkpointing of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Time between the start of one checkpoint and the next; `None` takes no periodic
    /// checkpoints (bounded jobs still take the final one that commits their output).
    pub interval: Option<Duration>,
    /// A checkpoint not complete after this long is declined.
    pub timeout: Duration,
    /// Completed checkpoints kept in the store (older ones are deleted).
    pub retained: usize,
    /// Declined checkpoints in a row tolerated (Flink's tolerable checkpoint failures): one
    /// more fails the attempt, which then restarts per the restart strategy. `None`: no limit,
    /// a declined checkpoint only delays publishing until the next one completes.
    pub tolerable_failures: Option<u32>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(10)),
            timeout: Duration::from_secs(60),
            retained: 3,
            tolerable_failures: None,
        }
    }
}

/// What the job master does when a task fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartStrategy {
    /// Fail the job at the first task failure.
    None,
    /// Restart from the latest completed checkpoint after `delay`, at most `attempts` times.
    FixedDelay { attempts: u32, delay: Duration },
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::FixedDelay {
            attempts: 3,
            delay: Duration::from_secs(1),
        }
    }
}

/// A whole job: the dataflow and how it is checkpointed and restarted.
#[derive(Clone)]
pub struct JobGraph {
    pub name: String,
    pub vertices: Vec<Vertex>,
    pub edges: Vec<Edge>,
    pub checkpoint: CheckpointConfig,
    pub restart: RestartStrategy,
}

/// The widest a vertex may run (Flink's bound too): beyond it, a job is a typo, not a plan.
pub const MAX_PARALLELISM: usize = 32_768;

impl JobGraph {
    /// The slots the job needs: with slot sharing, one per subtask of its widest vertex.
    pub fn slots_needed(&self) -> usize {
        self.vertices
            .iter()
            .map(|v| v.parallelism)
            .max()
            .unwrap_or(0)
    }

    pub fn inputs_of(&self, vertex: usize) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.to == vertex)
    }

    pub fn outputs_of(&self, vertex: usize) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.from == vertex)
    }

    /// Checks what the runtime relies on: unique ids, edges between existing vertices in
    /// topological order (the builder only ever adds a vertex after its inputs), sources
    /// without inputs, every operator with one, forward edges with equal parallelism, and
    /// union inputs of one schema.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.vertices.is_empty() {
            return Err(EngineError::job("job", "the job has no sources"));
        }
        for (i, v) in self.vertices.iter().enumerate() {
            if v.parallelism == 0 {
                return Err(EngineError::job(
                    format!("{}.parallelism", v.id),
                    "must be at least 1",
                ));
            }
            if v.parallelism > MAX_PARALLELISM {
                return Err(EngineError::job(
                    format!("{}.parallelism", v.id),
                    format!(
                        "{} is more than {MAX_PARALLELISM}, the most a stage may run",
                        v.parallelism
                    ),
                ));
            }
            if self.vertices[..i].iter().any(|o| o.id == v.id) {
                return Err(EngineError::job(
                    format!("{}.id", v.id),
                    "two stages have this id; ids must be unique",
                ));
            }
            let inputs: Vec<&Edge> = self.inputs_of(i).collect();
            if v.is_source() && !inputs.is_empty() {
                return Err(EngineError::job(&v.id, "a source cannot have an input"));
            }
            if !v.is_source() && inputs.is_empty() {
                return Err(EngineError::job(&v.id, "this stage has no input"));
            }
            for edge in &inputs {
                let from = &self.vertices[edge.from];
                // A sink emits nothing: a stage reading one would wait for input forever.
                if from.is_sink() {
                    return Err(EngineError::job(
                        &v.id,
                        format!("its input `{}` is a sink, which has no output", from.id),
                    ));
                }
                if edge.from >= i {
                    return Err(EngineError::job(
                        &v.id,
                        format!("its input `{}` must be defined before it", from.id),
                    ));
                }
                if edge.partitioning == Partitioning::Forward && from.parallelism != v.parallelism {
                    return Err(EngineError::job(
                        &v.id,
                        format!(
                            "a forward edge from `{}` needs equal parallelism ({} vs {})",
                            from.id, from.parallelism, v.parallelism
                        ),
                    ));
                }
                if from.schema != self.vertices[inputs[0].from].schema {
                    return Err(EngineError::job(
                        &v.id,
                        "its inputs have different schemas; a union needs one schema",
                    ));
                }
            }
            // Sources too: a source nothing reads would still run (and hold a slot) for
            // nothing, which is always a mistake in the job (a misspelt `input`).
            if !v.is_sink() && self.outputs_of(i).next().is_none() {
                return Err(EngineError::job(
                    &v.id,
                    "its output goes nowhere; add a sink (kind = \"discard\" to drop it)",
                ));
            }
        }
        Ok(())
    }
}
