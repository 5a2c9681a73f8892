//! `key_by` as a stage of its own: a job file's `[[operator]] kind = "key_by"` (and the
//! builder's `DataStream::key_by` followed by `DataStream::window`) hash-partitions a stream
//! by its fields for the stage that reads it, and a window reading it needs no `key_by` of
//! its own. The old form, `key_by` on the window, keeps working and gives the same output.

use std::time::{Duration, Instant};

use engine::builder::{JobBuilder, StageOptions};
use engine::graph::Partitioning;
use engine::job::{compile, parse};
use engine::operators::WindowAssigner;
use engine::runtime::{JobEnvironment, JobState, MiniCluster};
use engine::source::{EventKind, schema_for};
use fs_core::store::ObjectStoreExt;

const JOB_ID: &str = "job-0123456789abcdef0123456789abcdef";

/// Bids, a filter, then a keyed tumbling-window count over two subtasks into JSON files:
/// `keying` is the text between the filter and the window's `[[operator]]` lines, and
/// `window_key` the window's own `key_by` line (or nothing).
fn job(keying: &str, window_key: &str) -> String {
    format!(
        r#"
name = "keyed"
parallelism = 2

[restart]
strategy = "none"

[[source]]
id = "bids"
kind = "nexmark"
count = 20000

[[operator]]
id = "big"
kind = "filter"
where = "price > 1000"
{keying}
[[operator]]
id = "per-auction"
kind = "window"
{window_key}
window = "tumbling"
size = "1s"
aggregates = ["n = count()", "top = max(price)"]

[[sink]]
id = "out"
kind = "file"
path = "out"
format = "json"
bucket_time = "event"
"#
    )
}

const KEY_BY_STAGE: &str =
    "\n[[operator]]\nid = \"by-auction\"\nkind = \"key_by\"\nfields = [\"auction\"]\n";
const WINDOW_KEY: &str = "key_by = [\"auction\"]";

/// Parses and compiles `text`, returning the error's message (panicking if there is none).
fn error_of(text: &str) -> String {
    match parse(text).and_then(|spec| compile(&spec, JOB_ID).map(|_| ())) {
        Ok(()) => panic!("this job file was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(error: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            error.contains(needle),
            "the error `{error}` does not mention `{needle}`"
        );
    }
    assert!(!error.contains('\n'), "a multi-line error: {error}");
}

/// Runs a job file on an embedded cluster (two slots) over a memory store; returns how it
/// ended and the lines of its finished output files, sorted.
fn run(text: &str) -> (JobState, Vec<String>) {
    let (runtime, env) = JobEnvironment::in_memory().unwrap();
    let store = env.store.clone();
    let compiled = compile(&parse(text).unwrap(), JOB_ID).unwrap();
    let handle = MiniCluster::new(env, 1, 2)
        .submit(compiled.graph, "keyed-1")
        .unwrap();
    // 20,000 bids: if it has not ended in two minutes, it never will.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !handle.state().is_terminal() {
        assert!(Instant::now() < deadline, "the job did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = handle.wait();
    let mut lines = runtime.block_on(async {
        let mut lines = Vec::new();
        for object in store.list_all("out/").await.unwrap() {
            let body = store.get(&object.key, None).await.unwrap().body;
            lines.extend(
                String::from_utf8(body.to_vec())
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
        lines
    });
    lines.sort();
    (state, lines)
}

#[test]
fn a_key_by_stage_hash_partitions_the_edge_into_the_next_stage_and_adds_no_vertex() {
    let compiled = compile(&parse(&job(KEY_BY_STAGE, "")).unwrap(), JOB_ID).unwrap();
    let graph = &compiled.graph;
    let ids: Vec<&str> = graph.vertices.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["bids", "big", "per-auction", "out"]);
    let into_window = graph
        .edges
        .iter()
        .find(|e| graph.vertices[e.to].id == "per-auction")
        .expect("an edge into the window");
    assert_eq!(graph.vertices[into_window.from].id, "big");
    let auction = schema_for(EventKind::Bid).index_of("auction").unwrap();
    assert_eq!(into_window.partitioning, Partitioning::Hash(vec![auction]));

    // The same edge as the window's own key_by makes.
    let old = compile(&parse(&job("", WINDOW_KEY)).unwrap(), JOB_ID).unwrap();
    let old_edge = old
        .graph
        .edges
        .iter()
        .find(|e| old.graph.vertices[e.to].id == "per-auction")
        .unwrap();
    assert_eq!(old_edge.partitioning, into_window.partitioning);

    // A stage reading the key_by stage by name, and a key_by stage with the same fields as the
    // window's key_by, compile too.
    let named = job(KEY_BY_STAGE, "input = \"by-auction\"");
    compile(&parse(&named).unwrap(), JOB_ID).unwrap();
    compile(&parse(&job(KEY_BY_STAGE, WINDOW_KEY)).unwrap(), JOB_ID).unwrap();
}

#[test]
fn a_window_after_a_key_by_stage_gives_what_the_windows_own_key_by_gives() {
    let (state, old) = run(&job("", WINDOW_KEY));
    assert_eq!(state, JobState::Finished);
    assert!(
        old.len() > 100,
        "too little output to compare: {}",
        old.len()
    );
    let (state, new) = run(&job(KEY_BY_STAGE, ""));
    assert_eq!(state, JobState::Finished);
    assert_eq!(
        new, old,
        "the key_by stage's output differs from the old form's"
    );
    // Every key's records meet in one window subtask: were they spread over both (no hash
    // partitioning), a key would get a partial count from each, two rows for one window.
    let mut windows = std::collections::HashSet::new();
    for line in &new {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let window = (row["auction"].to_string(), row["window_start"].to_string());
        assert!(
            windows.insert(window),
            "two rows for one key and window: {line}"
        );
    }
}

#[test]
fn a_window_on_a_stream_that_is_not_keyed_needs_key_by() {
    let error = error_of(&job("", ""));
    assert_mentions(&error, &["per-auction", "key_by", "big", "not keyed"]);
    // A filter after the key_by stage ends the keyed stream, as in Flink.
    let after_filter = job(
        &format!(
            "{KEY_BY_STAGE}\n[[operator]]\nid = \"bigger\"\nkind = \"filter\"\nwhere = \"price > 2000\"\n"
        ),
        "",
    );
    let error = error_of(&after_filter);
    assert_mentions(&error, &["per-auction", "key_by", "bigger"]);
}

#[test]
fn a_key_by_stage_on_an_unknown_field_names_the_field_and_the_line() {
    let text = job(&KEY_BY_STAGE.replace("[\"auction\"]", "[\"auktion\"]"), "");
    let line = text
        .lines()
        .position(|l| l.starts_with("fields = [\"auktion\"]"))
        .unwrap()
        + 1;
    let error = error_of(&text);
    assert_mentions(
        &error,
        &[
            "by-auction",
            "fields",
            &format!("line {line}"),
            "auktion",
            "auction",
        ],
    );

    let text = job(&KEY_BY_STAGE.replace("[\"auction\"]", "[]"), "");
    assert_mentions(&error_of(&text), &["by-auction", "fields", "no field"]);
    // An unknown key of the stage is a parse error with its line.
    let text = job(&KEY_BY_STAGE.replace("fields", "feilds"), "");
    assert_mentions(&error_of(&text), &["feilds", "unknown field"]);
}

#[test]
fn a_window_keyed_differently_from_its_key_by_stage_is_refused() {
    let text = job(KEY_BY_STAGE, "key_by = [\"bidder\"]");
    assert_mentions(
        &error_of(&text),
        &["per-auction", "key_by", "auction", "bidder"],
    );
}

#[test]
fn a_key_by_stage_id_must_be_unique() {
    let text = job(&KEY_BY_STAGE.replace("by-auction", "big"), "");
    assert_mentions(&error_of(&text), &["big", "unique"]);
}

#[test]
fn the_builder_keys_a_stream_for_a_window() {
    let job = JobBuilder::new("built");
    job.set_parallelism(2);
    let bids = job
        .source(
            "bids",
            std::sync::Arc::new(|_| {
                Ok(Box::new(engine::source::NexmarkSource::new(
                    engine::source::NexmarkConfig::default(),
                )?) as _)
            }),
            schema_for(EventKind::Bid),
        )
        .unwrap();
    let options = |id| StageOptions {
        id,
        description: "window",
        parallelism: None,
    };
    let tumbling = WindowAssigner::Tumbling { size_ms: 1000 };
    // Not keyed: refused, saying what to do.
    let error = bids
        .window(options("unkeyed"), tumbling, &["n = count()"])
        .err()
        .expect("a window on a stream that is not keyed");
    assert!(error.to_string().contains("key_by"), "{error}");
    let keyed = bids.key_by(&["auction"]).unwrap();
    assert_eq!(keyed.key_fields(), Some(vec!["auction".to_string()]));
    assert_eq!(bids.key_fields(), None);
    let counts = keyed
        .window(options("counts"), tumbling, &["n = count()"])
        .unwrap();
    let names = counts.schema().names();
    assert_eq!(names, "auction, window_start, window_end, n");
    counts.discard("out").unwrap();
    let graph = job.build().unwrap();
    let auction = schema_for(EventKind::Bid).index_of("auction").unwrap();
    assert!(
        graph
            .edges
            .iter()
            .any(|e| e.partitioning == Partitioning::Hash(vec![auction])),
        "no hash edge: {:?}",
        graph
            .edges
            .iter()
            .map(|e| &e.partitioning)
            .collect::<Vec<_>>()
    );
}
