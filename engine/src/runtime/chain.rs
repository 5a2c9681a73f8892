//! A chain of operators run by one task: each operator's output is a direct call into the
//! next one (no serialization, no thread hand-off), and the last one's goes to the network.

use std::time::{Duration, Instant};

use super::exchange::NetworkOutput;
use crate::data::{Record, Timestamp};
use crate::error::EngineError;
use crate::operator::{Operator, Output, TaskContext};

/// One operator of a chain, with its counters.
pub struct ChainedOperator {
    /// The vertex id: names the operator's state in checkpoints.
    pub vertex_id: String,
    pub vertex: usize,
    pub operator: Box<dyn Operator>,
    pub ctx: TaskContext,
    pub records_in: u64,
}

/// One operator's state in a checkpoint (`None`: stateless).
pub struct OperatorSnapshot {
    pub vertex_id: String,
    pub state: Option<Vec<u8>>,
}

/// The operators of one task after its source (if any), in order.
#[derive(Default)]
pub struct Chain {
    /// The source vertex heading the chain, if the task runs one: its records go to the
    /// first operator and to the exchanges that carry its output.
    pub source_vertex: Option<usize>,
    pub operators: Vec<ChainedOperator>,
}

/// The `Output` handed to an operator (or the source): the exchanges that carry this
/// vertex's output, and the rest of the chain.
struct Link<'a> {
    /// The vertex whose output this is (`None`: the task's input, which feeds only the chain).
    from: Option<usize>,
    rest: &'a mut [ChainedOperator],
    out: &'a mut NetworkOutput,
}

impl Output for Link<'_> {
    fn emit(&mut self, record: Record) -> Result<(), EngineError> {
        match self.rest.split_first_mut() {
            // The end of the chain: everything goes to the network (and is counted there).
            None => match self.from {
                Some(vertex) => self.out.emit_from(vertex, record),
                None => Ok(()),
            },
            Some((next, rest)) => {
                if let Some(vertex) = self.from
                    && self.out.has_edges_from(vertex)
                {
                    self.out.emit_from(vertex, record.clone())?;
                }
                next.records_in += 1;
                next.operator
                    .process(
                        record,
                        &mut Link {
                            from: Some(next.vertex),
                            rest,
                            out: self.out,
                        },
                    )
                    .map_err(|e| in_operator(&next.ctx, e))
            }
        }
    }

    fn watermark(&mut self, watermark: Timestamp) -> Result<(), EngineError> {
        if let Some(vertex) = self.from {
            self.out.watermark_from(vertex, watermark)?;
        }
        match self.rest.split_first_mut() {
            None => Ok(()),
            Some((next, rest)) => next
                .operator
                .watermark(
                    watermark,
                    &mut Link {
                        from: Some(next.vertex),
                        rest,
                        out: self.out,
                    },
                )
                .map_err(|e| in_operator(&next.ctx, e)),
        }
    }
}

/// Names the subtask in an operator's error, once.
fn in_operator(ctx: &TaskContext, error: EngineError) -> EngineError {
    match error {
        EngineError::Cancelled | EngineError::Task { .. } => error,
        other => EngineError::Task {
            task: ctx.describe(),
            message: other.to_string(),
        },
    }
}

impl Chain {
    /// An `Output` for the task's input: the source's records (to its exchanges and the
    /// first operator), or those read from the input channels (to the first operator).
    pub fn input<'a>(&'a mut self, out: &'a mut NetworkOutput) -> impl Output + 'a {
        Link {
            from: self.source_vertex,
            rest: &mut self.operators,
            out,
        }
    }

    pub fn process(&mut self, record: Record, out: &mut NetworkOutput) -> Result<(), EngineError> {
        self.input(out).emit(record)
    }

    pub fn watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut NetworkOutput,
    ) -> Result<(), EngineError> {
        self.input(out).watermark(watermark)
    }

    /// Restores each operator's state (`states[i]` for operator i) and opens it.
    pub fn restore_and_open(&mut self, states: &[Option<Vec<u8>>]) -> Result<(), EngineError> {
        for (i, op) in self.operators.iter_mut().enumerate() {
            if let Some(Some(state)) = states.get(i) {
                op.operator
                    .restore(&op.ctx, state)
                    .map_err(|e| in_operator(&op.ctx, e))?;
            }
            op.operator
                .open(&op.ctx)
                .map_err(|e| in_operator(&op.ctx, e))?;
        }
        Ok(())
    }

    /// The longest pause any operator of the chain asks for (see `Operator::input_pause`).
    pub fn input_pause(&mut self) -> Option<Duration> {
        self.operators
            .iter_mut()
            .filter_map(|op| op.operator.input_pause())
            .max()
    }

    pub fn tick(&mut self, now: Timestamp, out: &mut NetworkOutput) -> Result<(), EngineError> {
        for i in 0..self.operators.len() {
            let Some((head, rest)) = self.operators[i..].split_first_mut() else {
                break;
            };
            head.operator
                .tick(
                    now,
                    &mut Link {
                        from: Some(head.vertex),
                        rest,
                        out: &mut *out,
                    },
                )
                .map_err(|e| in_operator(&head.ctx, e))?;
        }
        Ok(())
    }

    /// Every input has ended: finishes the operators front to back, so what one emits while
    /// finishing reaches the next before that one finishes in turn.
    pub fn finish(&mut self, out: &mut NetworkOutput) -> Result<(), EngineError> {
        for i in 0..self.operators.len() {
            let Some((head, rest)) = self.operators[i..].split_first_mut() else {
                break;
            };
            head.operator
                .finish(&mut Link {
                    from: Some(head.vertex),
                    rest,
                    out: &mut *out,
                })
                .map_err(|e| in_operator(&head.ctx, e))?;
        }
        Ok(())
    }

    /// Each operator's state for the checkpoint, with its vertex id.
    pub fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<OperatorSnapshot>, EngineError> {
        self.operators
            .iter_mut()
            .map(|op| {
                let state = op
                    .operator
                    .snapshot(checkpoint_id)
                    .map_err(|e| in_operator(&op.ctx, e))?;
                Ok(OperatorSnapshot {
                    vertex_id: op.vertex_id.clone(),
                    state,
                })
            })
            .collect()
    }

    pub fn checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), EngineError> {
        for op in &mut self.operators {
            op.operator
                .checkpoint_complete(checkpoint_id)
                .map_err(|e| in_operator(&op.ctx, e))?;
        }
        Ok(())
    }

    /// The user cancelled the job and the subtask has stopped: every operator abandons the
    /// run (see `Operator::abandon`).
    pub fn abandon(&mut self, completed: Option<u64>, deadline: Instant) {
        for op in &mut self.operators {
            op.operator.abandon(&op.ctx, completed, deadline);
        }
    }
}
