//! Operator chaining, as the executor builds tasks from the plan: which vertices share a task
//! (records pass by a function call) and which edges become network exchanges.

use std::time::{Duration, Instant};

use engine::graph::Partitioning;
use engine::job::{compile, parse};
use engine::runtime::plan::{ExecutionPlan, TaskEdge};
use engine::runtime::{JobEnvironment, JobState, MiniCluster};

/// The plan of a job file, as lists of vertex ids per task.
fn plan(text: &str) -> (Vec<Vec<String>>, Vec<TaskEdge>) {
    let graph = compile(&parse(text).unwrap(), "chaining-1").unwrap().graph;
    let plan = ExecutionPlan::new(&graph);
    let tasks = plan
        .tasks
        .iter()
        .map(|t| {
            t.vertices
                .iter()
                .map(|v| graph.vertices[*v].id.clone())
                .collect()
        })
        .collect();
    (tasks, plan.edges)
}

#[test]
fn forward_edges_at_equal_parallelism_run_in_one_task() {
    let (tasks, edges) = plan(
        r#"
name = "straight"
parallelism = 2

[[source]]
id = "bids"
kind = "nexmark"

[[operator]]
id = "big"
kind = "filter"
where = "price > 100"

[[operator]]
id = "narrow"
kind = "map"
fields = ["auction", "price"]

[[sink]]
id = "out"
kind = "discard"
"#,
    );
    assert_eq!(tasks, [["bids", "big", "narrow", "out"]]);
    assert!(edges.is_empty(), "an exchange inside a chain: {edges:?}");
}

/// A source feeding three stages: two filters over forward edges at its parallelism, and a
/// keyed window; each filter into a discard sink.
const FAN_OUT: &str = r#"
name = "fan-out"
parallelism = 2

[[source]]
id = "bids"
kind = "nexmark"
count = 20000

[[operator]]
id = "cheap"
kind = "filter"
where = "price <= 1000"

[[operator]]
id = "dear"
input = "bids"
kind = "filter"
where = "price > 1000"

[[operator]]
id = "per-auction"
input = "bids"
kind = "window"
key_by = ["auction"]
window = "tumbling"
size = "1s"
aggregates = ["n = count()"]

[[sink]]
id = "cheap-out"
input = "cheap"
kind = "discard"

[[sink]]
id = "dear-out"
input = "dear"
kind = "discard"

[[sink]]
id = "counts"
input = "per-auction"
kind = "discard"
parallelism = 1
"#;

#[test]
fn a_vertex_with_several_outputs_chains_the_first_forward_one_and_feeds_the_others_by_exchange() {
    // `cheap` joins the source's task (with its sink); `dear` could too, but a chain is a
    // line: it gets a task of its own, fed by a forward exchange from `bids`, which is not the
    // last vertex of its task. The window is hash-partitioned; `counts` has another
    // parallelism.
    let (tasks, edges) = plan(FAN_OUT);
    assert_eq!(
        tasks,
        [
            vec!["bids", "cheap", "cheap-out"],
            vec!["dear", "dear-out"],
            vec!["per-auction"],
            vec!["counts"]
        ]
    );
    let described: Vec<_> = edges
        .iter()
        .map(|e| {
            (
                e.from_task,
                e.from_vertex,
                e.to_task,
                e.partitioning.clone(),
            )
        })
        .collect();
    assert_eq!(described.len(), 3, "{edges:?}");
    // Vertex indices: sources, then operators, then sinks, each in file order.
    assert!(
        described.contains(&(0, 0, 1, Partitioning::Forward)),
        "{edges:?}"
    );
    assert!(
        described
            .iter()
            .any(|(f, v, t, p)| (*f, *v, *t) == (0, 0, 2) && matches!(p, Partitioning::Hash(_))),
        "{edges:?}"
    );
    assert!(
        described
            .iter()
            .any(|(f, v, t, p)| (*f, *v, *t) == (2, 3, 3) && *p != Partitioning::Forward),
        "{edges:?}"
    );
}

#[test]
fn every_output_of_a_chained_vertex_gets_every_record() {
    // Run FAN_OUT embedded: each record of `bids` reaches the chained filter in its task, the
    // other filter over the exchange, and the window over the other.
    let (runtime, env) = JobEnvironment::in_memory().unwrap();
    let graph = compile(&parse(FAN_OUT).unwrap(), "fan-out-1")
        .unwrap()
        .graph;
    let index = |id: &str| graph.vertices.iter().position(|v| v.id == id).unwrap();
    let (bids, cheap, dear, window, cheap_out, dear_out, counts) = (
        index("bids"),
        index("cheap"),
        index("dear"),
        index("per-auction"),
        index("cheap-out"),
        index("dear-out"),
        index("counts"),
    );
    let job = MiniCluster::new(env, 1, 2)
        .submit(graph, "fan-out-1")
        .unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    let m = job.metrics();
    let emitted = m.vertex(bids).records_out();
    assert!(emitted > 10_000, "{emitted}");
    assert_eq!(m.vertex(cheap).records_in(), emitted);
    assert_eq!(m.vertex(dear).records_in(), emitted);
    assert_eq!(m.vertex(window).records_in(), emitted);
    let (to_cheap, to_dear) = (
        m.vertex(cheap_out).records_in(),
        m.vertex(dear_out).records_in(),
    );
    assert!(to_cheap > 0 && to_dear > 0, "{to_cheap} {to_dear}");
    assert_eq!(
        to_cheap + to_dear,
        emitted,
        "each bid passes one of the two filters"
    );
    assert!(m.vertex(counts).records_in() > 0, "no window fired");
    drop(runtime);
}

#[test]
fn watermarks_reach_an_exchange_from_the_middle_of_a_chain() {
    // FAN_OUT unbounded: windows fire only as watermarks pass their end (a bounded job's end
    // would fire them anyway), and the window's watermarks come from `bids`, which hands them
    // on to the window's exchange before passing them down its own chain.
    let text = FAN_OUT.replace("count = 20000", "rate = 20000");
    let (runtime, env) = JobEnvironment::in_memory().unwrap();
    let graph = compile(&parse(&text).unwrap(), "fan-out-2").unwrap().graph;
    let counts = graph
        .vertices
        .iter()
        .position(|v| v.id == "counts")
        .unwrap();
    let job = MiniCluster::new(env, 1, 2)
        .submit(graph, "fan-out-2")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while job.metrics().vertex(counts).records_in() == 0 {
        let state = job.state();
        assert!(
            matches!(state, JobState::Created | JobState::Running),
            "{state:?}"
        );
        assert!(Instant::now() < deadline, "no window fired in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    job.cancel();
    assert_eq!(job.wait(), JobState::Canceled);
    drop(runtime);
}

#[test]
fn a_keyed_consumer_and_a_parallelism_change_break_chains() {
    // bids feeds both `big` (forward: it joins the chain, with its sink) and the window (hash:
    // a task of its own). The sink after the window has another parallelism: its own task,
    // rebalanced.
    let (tasks, edges) = plan(
        r#"
name = "fan-out"
parallelism = 2

[[source]]
id = "bids"
kind = "nexmark"

[[operator]]
id = "big"
kind = "filter"
where = "price > 100"

[[sink]]
id = "big-out"
input = "big"
kind = "discard"

[[operator]]
id = "per-auction"
input = "bids"
kind = "window"
key_by = ["auction"]
window = "tumbling"
size = "1s"
aggregates = ["n = count()"]

[[sink]]
id = "counts"
input = "per-auction"
kind = "discard"
parallelism = 1
"#,
    );
    assert_eq!(
        tasks,
        [
            vec!["bids", "big", "big-out"],
            vec!["per-auction"],
            vec!["counts"]
        ]
    );
    let partitioning: Vec<_> = edges
        .iter()
        .map(|e| (e.from_task, e.to_task, e.partitioning.clone()))
        .collect();
    assert_eq!(partitioning.len(), 2, "{edges:?}");
    assert!(
        partitioning
            .iter()
            .any(|(f, t, p)| (*f, *t) == (0, 1) && matches!(p, Partitioning::Hash(_))),
        "{edges:?}"
    );
    assert!(
        partitioning
            .iter()
            .any(|(f, t, p)| (*f, *t) == (1, 2) && *p != Partitioning::Forward),
        "{edges:?}"
    );
}

/// Records out of an operator that passes them down its chain by a function call are counted
/// (`write-records` in the REST API, `out` in `rivulet status`): they were 0 for every
/// operator but the last of its chain, so a filter chained to a map looked like it dropped
/// everything. An operator that also feeds an exchange counts its records once.
#[test]
fn chained_operators_count_the_records_they_emit() {
    const JOB: &str = r#"
name = "counted"
parallelism = 2

[[source]]
id = "bids"
kind = "nexmark"
count = 20000

[[operator]]
id = "dear"
kind = "filter"
where = "price > 5000"

[[operator]]
id = "euros"
kind = "map"
fields = ["auction", "price_eur = price * 0.908"]

[[operator]]
id = "per-auction"
input = "dear"
kind = "window"
key_by = ["auction"]
window = "tumbling"
size = "1s"
aggregates = ["n = count()"]

[[sink]]
id = "euros-out"
input = "euros"
kind = "discard"

[[sink]]
id = "counts"
input = "per-auction"
kind = "discard"
"#;
    let (tasks, _) = plan(JOB);
    assert!(
        tasks.contains(&vec![
            "bids".to_string(),
            "dear".to_string(),
            "euros".to_string(),
            "euros-out".to_string()
        ]),
        "{tasks:?}"
    );
    let (runtime, env) = JobEnvironment::in_memory().unwrap();
    let graph = compile(&parse(JOB).unwrap(), "counted-1").unwrap().graph;
    let index = |id: &str| graph.vertices.iter().position(|v| v.id == id).unwrap();
    let (bids, dear, euros, window, euros_out, counts) = (
        index("bids"),
        index("dear"),
        index("euros"),
        index("per-auction"),
        index("euros-out"),
        index("counts"),
    );
    let job = MiniCluster::new(env, 1, 2)
        .submit(graph, "counted-1")
        .unwrap();
    assert_eq!(job.wait(), JobState::Finished);
    let m = job.metrics();
    let kept = m.vertex(euros).records_in();
    assert!(kept > 0 && kept < m.vertex(bids).records_out(), "{kept}");
    // `dear` feeds `euros` in its chain and the window over an exchange: each record once.
    assert_eq!(m.vertex(dear).records_out(), kept);
    assert_eq!(m.vertex(window).records_in(), kept);
    assert_eq!(m.vertex(euros).records_out(), kept);
    assert_eq!(m.vertex(euros_out).records_in(), kept);
    let fired = m.vertex(counts).records_in();
    assert!(fired > 0, "no window fired");
    assert_eq!(m.vertex(window).records_out(), fired);
    // Sinks emit nothing.
    assert_eq!(m.vertex(euros_out).records_out(), 0);
    assert_eq!(m.vertex(counts).records_out(), 0);
    drop(runtime);
}
