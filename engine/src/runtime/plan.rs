//! From the logical graph to tasks: operator chaining.
//!
//! A vertex joins its input's chain when the edge between them is forward, their
//! parallelism is equal, it has no other input, and its input is the last vertex of its chain
//! so far: of several such consumers of one vertex, the first (in the graph's order) joins
//! its chain, and the others start tasks of their own. A chain is a line: each vertex of it
//! may also feed other tasks, through exchanges from that vertex. Records pass between the
//! vertices of a chain by a plain function call. Every other edge becomes a network exchange
//! between tasks.

use crate::graph::{JobGraph, Partitioning};

/// A chain of vertices run as one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPlan {
    /// Vertex indices, head first.
    pub vertices: Vec<usize>,
    pub parallelism: usize,
}

/// A network edge between two tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEdge {
    pub from_task: usize,
    /// The vertex of `from_task`'s chain whose output this edge carries (not always the last).
    pub from_vertex: usize,
    pub to_task: usize,
    pub partitioning: Partitioning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPlan {
    pub tasks: Vec<TaskPlan>,
    pub edges: Vec<TaskEdge>,
}

impl ExecutionPlan {
    pub fn new(graph: &JobGraph) -> Self {
        let mut task_of: Vec<Option<usize>> = vec![None; graph.vertices.len()];
        let mut tasks: Vec<TaskPlan> = Vec::new();
        for (v, vertex) in graph.vertices.iter().enumerate() {
            let inputs: Vec<_> = graph.inputs_of(v).collect();
            let chained_to = match inputs.as_slice() {
                [edge]
                    if edge.partitioning == Partitioning::Forward
                        && graph.vertices[edge.from].parallelism == vertex.parallelism =>
                {
                    // Only at the end of the chain: a vertex already followed in its chain
                    // feeds this one through an exchange.
                    task_of[edge.from].filter(|t| tasks[*t].vertices.last() == Some(&edge.from))
                }
                _ => None,
            };
            match chained_to {
                Some(t) => {
                    tasks[t].vertices.push(v);
                    task_of[v] = Some(t);
                }
                None => {
                    task_of[v] = Some(tasks.len());
                    tasks.push(TaskPlan {
                        vertices: vec![v],
                        parallelism: vertex.parallelism,
                    });
                }
            }
        }
        let mut edges = Vec::new();
        for edge in &graph.edges {
            let (Some(from_task), Some(to_task)) = (task_of[edge.from], task_of[edge.to]) else {
                continue;
            };
            if from_task != to_task {
                edges.push(TaskEdge {
                    from_task,
                    from_vertex: edge.from,
                    to_task,
                    partitioning: edge.partitioning.clone(),
                });
            }
        }
        Self { tasks, edges }
    }

    /// "nexmark -> filter -> file sink", for logs.
    pub fn describe_task(&self, graph: &JobGraph, task: usize) -> String {
        self.tasks[task]
            .vertices
            .iter()
            .map(|v| graph.vertices[*v].id.as_str())
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}
