//! The DataStream-style API that builds a [`JobGraph`]: what job files compile to, and what
//! library users call to add their own sources and operators.
//!
//! ```
//! use std::sync::Arc;
//! use engine::builder::JobBuilder;
//! use engine::source::{EventKind, NexmarkConfig, NexmarkSource, schema_for};
//! # fn main() -> Result<(), engine::EngineError> {
//! let job = JobBuilder::new("bids");
//! let bids = job.source(
//!     "bids",
//!     Arc::new(|_| Ok(Box::new(NexmarkSource::new(NexmarkConfig::default())?) as _)),
//!     schema_for(EventKind::Bid),
//! )?;
//! bids.filter("price > 1000")?
//!     .key_by(&["auction"])?
//!     .discard("out")?;
//! let graph = job.build()?;
//! assert_eq!(graph.vertices.len(), 3);
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::data::SchemaRef;
use crate::error::EngineError;
use crate::graph::{
    CheckpointConfig, Edge, JobGraph, OperatorFactory, Partitioning, RestartStrategy,
    SourceFactory, Vertex, VertexKind,
};

struct Draft {
    name: String,
    default_parallelism: usize,
    vertices: Vec<Vertex>,
    edges: Vec<Edge>,
    checkpoint: CheckpointConfig,
    restart: RestartStrategy,
}

/// Builds one job graph.
pub struct JobBuilder {
    draft: Rc<RefCell<Draft>>,
}

/// The output of a stage, to which further stages attach.
#[derive(Clone)]
pub struct DataStream {
    draft: Rc<RefCell<Draft>>,
    vertex: usize,
    /// How the next stage reads it; `None` picks forward or rebalance by parallelism.
    partitioning: Option<Partitioning>,
}

/// How a stage is added: its id, what it is, its parallelism (`None`: the job's default).
pub struct StageOptions<'a> {
    pub id: &'a str,
    pub description: &'a str,
    pub parallelism: Option<usize>,
}

impl JobBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            draft: Rc::new(RefCell::new(Draft {
                name: name.to_string(),
                default_parallelism: 1,
                vertices: Vec::new(),
                edges: Vec::new(),
                checkpoint: CheckpointConfig::default(),
                restart: RestartStrategy::default(),
            })),
        }
    }

    /// The parallelism of stages that do not set their own.
    pub fn set_parallelism(&self, parallelism: usize) -> &Self {
        self.draft.borrow_mut().default_parallelism = parallelism;
        self
    }

    pub fn set_checkpointing(&self, config: CheckpointConfig) -> &Self {
        self.draft.borrow_mut().checkpoint = config;
        self
    }

    pub fn set_restart(&self, strategy: RestartStrategy) -> &Self {
        self.draft.borrow_mut().restart = strategy;
        self
    }

    /// Adds a source with the job's default parallelism and no watermark delay.
    pub fn source(
        &self,
        id: &str,
        factory: SourceFactory,
        schema: SchemaRef,
    ) -> Result<DataStream, EngineError> {
        self.source_with(
            StageOptions {
                id,
                description: id,
                parallelism: None,
            },
            Duration::ZERO,
            factory,
            schema,
        )
    }

    /// Adds a source. Watermarks trail its largest timestamp by `watermark_delay`.
    pub fn source_with(
        &self,
        options: StageOptions<'_>,
        watermark_delay: Duration,
        factory: SourceFactory,
        schema: SchemaRef,
    ) -> Result<DataStream, EngineError> {
        let vertex = add_vertex(
            &self.draft,
            options,
            VertexKind::Source {
                factory,
                watermark_delay,
            },
            schema,
        )?;
        Ok(DataStream {
            draft: self.draft.clone(),
            vertex,
            partitioning: None,
        })
    }

    /// The output of an earlier stage, by id (for job files, whose stages name their input).
    pub fn stream(&self, id: &str) -> Option<DataStream> {
        let vertex = self
            .draft
            .borrow()
            .vertices
            .iter()
            .position(|v| v.id == id)?;
        Some(DataStream {
            draft: self.draft.clone(),
            vertex,
            partitioning: None,
        })
    }

    /// The finished graph, validated.
    pub fn build(self) -> Result<JobGraph, EngineError> {
        let draft = self.draft.borrow();
        let graph = JobGraph {
            name: draft.name.clone(),
            vertices: draft.vertices.clone(),
            edges: draft.edges.clone(),
            checkpoint: draft.checkpoint.clone(),
            restart: draft.restart.clone(),
        };
        graph.validate()?;
        Ok(graph)
    }
}

fn add_vertex(
    draft: &Rc<RefCell<Draft>>,
    options: StageOptions<'_>,
    kind: VertexKind,
    schema: SchemaRef,
) -> Result<usize, EngineError> {
    let mut d = draft.borrow_mut();
    if d.vertices.iter().any(|v| v.id == options.id) {
        return Err(EngineError::job(
            options.id,
            "two stages have this id; ids must be unique",
        ));
    }
    let parallelism = options.parallelism.unwrap_or(d.default_parallelism);
    if parallelism == 0 {
        return Err(EngineError::job(
            format!("{}.parallelism", options.id),
            "must be at least 1",
        ));
    }
    d.vertices.push(Vertex {
        id: options.id.to_string(),
        description: options.description.to_string(),
        parallelism,
        kind,
        schema,
    });
    Ok(d.vertices.len() - 1)
}

impl DataStream {
    /// The schema of the rows on this stream.
    pub fn schema(&self) -> SchemaRef {
        self.draft.borrow().vertices[self.vertex].schema.clone()
    }

    pub fn id(&self) -> String {
        self.draft.borrow().vertices[self.vertex].id.clone()
    }

    pub fn parallelism(&self) -> usize {
        self.draft.borrow().vertices[self.vertex].parallelism
    }

    /// Partitions the stream by these fields for the next stage: every record of one key
    /// goes to the same subtask (across task managers).
    pub fn key_by(&self, fields: &[&str]) -> Result<DataStream, EngineError> {
        let schema = self.schema();
        let indices = fields
            .iter()
            .map(|f| {
                schema.index_of(f).ok_or_else(|| {
                    EngineError::job(
                        format!("{}.key_by", self.id()),
                        format!("no field `{f}`; the stream has {}", schema.names()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if indices.is_empty() {
            return Err(EngineError::job(
                format!("{}.key_by", self.id()),
                "needs at least one field",
            ));
        }
        Ok(DataStream {
            partitioning: Some(Partitioning::Hash(indices)),
            ..self.clone()
        })
    }

    /// The fields this stream is keyed by (after [`DataStream::key_by`]), for the keyed
    /// operator that reads it; `None` for a stream that is not keyed.
    pub fn key_fields(&self) -> Option<Vec<String>> {
        let Some(Partitioning::Hash(indices)) = &self.partitioning else {
            return None;
        };
        let schema = self.schema();
        Some(
            indices
                .iter()
                .map(|&i| schema.fields[i].name.clone())
                .collect(),
        )
    }

    /// A keyed window over this stream, which must come from [`DataStream::key_by`]: one row
    /// per key and window (the key fields, `window_start`, `window_end`, the aggregates such
    /// as `"bids = count()"` or `"max(price)"`), emitted when the watermark passes the
    /// window's end.
    pub fn window(
        &self,
        options: StageOptions<'_>,
        assigner: crate::operators::WindowAssigner,
        aggregates: &[&str],
    ) -> Result<DataStream, EngineError> {
        let Some(Partitioning::Hash(key_fields)) = self.partitioning.clone() else {
            return Err(EngineError::job(
                options.id,
                "a window needs a keyed input: call key_by on the stream first",
            ));
        };
        let schema = self.schema();
        let aggregates = aggregates
            .iter()
            .enumerate()
            .map(|(n, text)| {
                crate::operators::parse_aggregate(text, &schema).map_err(|e| {
                    EngineError::job(format!("{}.aggregates[{n}]", options.id), e.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = crate::operators::WindowSpec {
            assigner,
            key_fields,
            aggregates,
        };
        let operator = crate::operators::WindowOperator::new(spec.clone(), &schema)?;
        let output = Arc::new(operator.output_schema());
        self.transform(
            options,
            output,
            Arc::new(move |_| {
                Ok(Box::new(crate::operators::WindowOperator::new(
                    spec.clone(),
                    &schema,
                )?) as Box<dyn crate::operator::Operator>)
            }),
        )
    }

    /// Spreads records round-robin over the next stage's subtasks.
    pub fn rebalance(&self) -> DataStream {
        DataStream {
            partitioning: Some(Partitioning::Rebalance),
            ..self.clone()
        }
    }

    fn connect(&self, to: usize) {
        let mut d = self.draft.borrow_mut();
        let same = d.vertices[self.vertex].parallelism == d.vertices[to].parallelism;
        let partitioning = match &self.partitioning {
            Some(p) => p.clone(),
            None if same => Partitioning::Forward,
            None => Partitioning::Rebalance,
        };
        d.edges.push(Edge {
            from: self.vertex,
            to,
            partitioning,
        });
    }

    /// Adds an operator reading this stream and emitting rows of `schema`.
    pub fn transform(
        &self,
        options: StageOptions<'_>,
        schema: SchemaRef,
        factory: OperatorFactory,
    ) -> Result<DataStream, EngineError> {
        let vertex = add_vertex(
            &self.draft,
            options,
            VertexKind::Operator {
                factory,
                is_sink: false,
            },
            schema,
        )?;
        self.connect(vertex);
        Ok(DataStream {
            draft: self.draft.clone(),
            vertex,
            partitioning: None,
        })
    }

    /// Adds a sink reading this stream.
    pub fn sink(
        &self,
        options: StageOptions<'_>,
        factory: OperatorFactory,
    ) -> Result<(), EngineError> {
        let vertex = add_vertex(
            &self.draft,
            options,
            VertexKind::Operator {
                factory,
                is_sink: true,
            },
            self.schema(),
        )?;
        self.connect(vertex);
        Ok(())
    }

    /// Keeps the rows where `predicate` (an expression over this stream's fields) is true.
    pub fn filter(&self, predicate: &str) -> Result<DataStream, EngineError> {
        let id = format!("filter-{}", self.draft.borrow().vertices.len() + 1);
        let bound = crate::expr::Expr::parse(predicate)?.bind(&self.schema())?;
        crate::operators::FilterOperator::new(bound.clone())?;
        self.transform(
            StageOptions {
                id: &id,
                description: "filter",
                parallelism: Some(self.parallelism()),
            },
            self.schema(),
            Arc::new(move |_| {
                Ok(
                    Box::new(crate::operators::FilterOperator::new(bound.clone())?)
                        as Box<dyn crate::operator::Operator>,
                )
            }),
        )
    }

    /// Rows of the named expressions: `"price_eur = price * 0.908"`, or a bare field name.
    pub fn map(&self, fields: &[&str]) -> Result<DataStream, EngineError> {
        let id = format!("map-{}", self.draft.borrow().vertices.len() + 1);
        let schema = self.schema();
        let columns = fields
            .iter()
            .map(|f| {
                let (name, expr) = crate::expr::parse_named(f)?;
                Ok((name, expr.bind(&schema)?))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let output =
            Arc::new(crate::operators::ProjectOperator::new(columns.clone())?.output_schema());
        self.transform(
            StageOptions {
                id: &id,
                description: "map",
                parallelism: Some(self.parallelism()),
            },
            output,
            Arc::new(move |_| {
                Ok(
                    Box::new(crate::operators::ProjectOperator::new(columns.clone())?)
                        as Box<dyn crate::operator::Operator>,
                )
            }),
        )
    }

    /// Drops every record (for benchmarks and tests).
    pub fn discard(&self, id: &str) -> Result<(), EngineError> {
        self.sink(
            StageOptions {
                id,
                description: "discard",
                parallelism: Some(self.parallelism()),
            },
            Arc::new(|_| {
                Ok(Box::new(crate::sink::DiscardSink::new()) as Box<dyn crate::operator::Operator>)
            }),
        )
    }

    /// Also feeds this stream into an existing stage (a union of its inputs).
    pub fn also_into(&self, stage: &DataStream) {
        self.connect(stage.vertex);
    }
}
