//! Bad job files: each kind of mistake is an error that says where it is (the line, or the
//! stage and field) and what is wrong, found when the job is parsed and compiled, before
//! anything runs. And the files source's `on_error`: malformed lines skipped or fatal.

use std::time::{Duration, Instant};

use engine::job::{compile, parse};
use engine::runtime::{JobEnvironment, JobState, MiniCluster};
use fs_core::store::{ObjectStoreExt, PutOptions};

/// A valid job to break: one nexmark source, a filter, a window and a file sink.
const GOOD: &str = r#"
name = "good"

[[source]]
id = "bids"
kind = "nexmark"
count = 1000

[[operator]]
id = "big"
kind = "filter"
where = "price > 100"

[[operator]]
id = "per-auction"
kind = "window"
key_by = ["auction"]
window = "tumbling"
size = "1s"
aggregates = ["n = count()"]

[[sink]]
id = "out"
kind = "file"
path = "out/counts"
format = "json"
"#;

/// Parses and compiles `text`, returning the error's message (panicking if there is none).
fn error_of(text: &str) -> String {
    let result = parse(text).and_then(|spec| compile(&spec, "job-0123456789abcdef").map(|_| ()));
    match result {
        Ok(()) => panic!("this job file was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(text: &str, needles: &[&str]) {
    let error = error_of(text);
    for needle in needles {
        assert!(
            error.contains(needle),
            "the error `{error}` does not mention `{needle}`; job file:\n{text}"
        );
    }
    // One line: it is printed as the whole of `rivulet run`'s complaint.
    assert!(!error.contains('\n'), "a multi-line error: {error}");
}

#[test]
fn the_good_job_compiles() {
    let spec = parse(GOOD).unwrap();
    let job = compile(&spec, "job-0123456789abcdef").unwrap();
    assert_eq!(job.graph.vertices.len(), 4);
}

#[test]
fn tolerable_checkpoint_failures_default_to_no_limit_and_can_be_set() {
    let job = compile(&parse(GOOD).unwrap(), "job-0123456789abcdef").unwrap();
    assert_eq!(job.graph.checkpoint.tolerable_failures, None);
    let text = format!("{GOOD}\n[checkpoint]\ntolerable_failures = 2\n");
    let job = compile(&parse(&text).unwrap(), "job-0123456789abcdef").unwrap();
    assert_eq!(job.graph.checkpoint.tolerable_failures, Some(2));
    let text = format!("{GOOD}\n[checkpoint]\ntolerable_failures = -1\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("tolerable_failures"))
        .unwrap()
        + 1;
    assert_mentions(&text, &[&format!("line {line}"), "-1"]);
}

/// The example jobs shipped in `jobs/` (the README's and docs' commands run them).
#[test]
fn the_shipped_job_files_compile() {
    // The package's directory as cargo gives it to the running test, not as it was when the
    // binary was built: a shared target dir can hold a binary built in another checkout.
    let package = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    );
    let dir = package.join("../jobs");
    let mut compiled = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the jobs/ directory") {
        let path = entry.expect("an entry of jobs/").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a job file");
        if let Err(e) = parse(&text).and_then(|spec| compile(&spec, "job-0123456789abcdef")) {
            panic!("{} does not compile: {e}", path.display());
        }
        compiled.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    compiled.sort();
    assert_eq!(
        compiled,
        ["nexmark-q0.toml", "nexmark-q10.toml", "quickstart.toml"]
    );
}

#[test]
fn an_unknown_key_names_its_line() {
    // `prise` on line 9 of this text (the leading newline is line 1).
    let text = GOOD.replace(
        "where = \"price > 100\"",
        "where = \"price > 100\"\nprise = 3",
    );
    let line = text.lines().position(|l| l.starts_with("prise")).unwrap() + 1;
    assert_mentions(&text, &[&format!("line {line}, prise"), "unknown field"]);

    // At the top level too (a misspelt `parallelism`).
    let text = format!("paralelism = 2\n{GOOD}");
    assert_mentions(&text, &["line 1", "paralelism"]);

    // An unknown section.
    let text = format!("{GOOD}\n[checkpoints]\ninterval = \"1s\"\n");
    let line = text.lines().position(|l| l == "[checkpoints]").unwrap() + 1;
    assert_mentions(&text, &[&format!("line {line}"), "checkpoints"]);
}

#[test]
fn an_unknown_field_in_an_expression_lists_the_available_ones() {
    let text = GOOD.replace("price > 100", "prise > 100");
    assert_mentions(
        &text,
        &[
            "operator big.where",
            "prise",
            "auction",
            "bidder",
            "price",
            "date_time",
        ],
    );

    let text = GOOD.replace("key_by = [\"auction\"]", "key_by = [\"auktion\"]");
    assert_mentions(&text, &["per-auction", "key_by", "auktion", "auction"]);

    let text = GOOD.replace("n = count()", "top = max(prize)");
    assert_mentions(&text, &["per-auction", "aggregates", "prize", "price"]);
}

#[test]
fn a_bad_type_in_a_schema_names_the_field() {
    let text = r#"
name = "typed"
[[source]]
id = "clicks"
kind = "files"
prefix = "in/"
format = "csv"
schema = ["user:int", "url:strng"]
[[sink]]
kind = "discard"
"#;
    assert_mentions(text, &["source clicks.schema[1]", "strng", "string"]);

    let text = text.replace("\"url:strng\"", "\"url\"");
    assert_mentions(&text, &["source clicks.schema[1]", "name:type"]);
}

#[test]
fn bad_durations_name_their_field() {
    let text = GOOD.replace("size = \"1s\"", "size = \"1 fortnite\"");
    assert_mentions(&text, &["per-auction.size", "1 fortnite", "duration"]);

    let text = format!("{GOOD}\n[checkpoint]\ninterval = \"soon\"\n");
    assert_mentions(&text, &["checkpoint.interval", "soon"]);

    let text = format!("{GOOD}\n[restart]\ndelay = \"-1s\"\n");
    assert_mentions(&text, &["restart.delay", "-1s"]);

    // A number where a duration string belongs is a type error with its line.
    let text = format!("{GOOD}\n[checkpoint]\ninterval = 10\n");
    let line = text.lines().position(|l| l == "interval = 10").unwrap() + 1;
    assert_mentions(&text, &[&format!("line {line}")]);
}

#[test]
fn a_sliding_window_needs_a_slide() {
    let text = GOOD.replace("window = \"tumbling\"", "window = \"sliding\"");
    assert_mentions(&text, &["per-auction.slide", "slide"]);
}

#[test]
fn an_input_must_name_an_earlier_stage() {
    let text = GOOD.replace("id = \"out\"", "id = \"out\"\ninput = \"per-auktion\"");
    assert_mentions(&text, &["sink out.input", "per-auktion"]);

    // Stages are compiled sources, operators, sinks: an operator cannot read a later one.
    let text = GOOD.replace("id = \"big\"", "id = \"big\"\ninput = \"per-auction\"");
    assert_mentions(&text, &["operator big.input", "per-auction"]);
}

#[test]
fn ids_are_unique() {
    let text = GOOD.replace("id = \"per-auction\"", "id = \"big\"");
    assert_mentions(&text, &["big", "unique"]);

    let text = GOOD.replace("id = \"out\"", "id = \"bids\"");
    assert_mentions(&text, &["bids", "unique"]);
}

#[test]
fn a_sink_needs_an_input_that_has_output() {
    // No sink at all.
    let text = GOOD.split("[[sink]]").next().unwrap().to_string();
    assert_mentions(&text, &["sink", "no [[sink]]"]);

    // A sink reading another sink: a sink has no output, so it would receive nothing.
    let text = format!("{GOOD}\n[[sink]]\nid = \"again\"\ninput = \"out\"\nkind = \"discard\"\n");
    assert_mentions(&text, &["again", "`out` is a sink"]);

    // A sink with an input that is not a string.
    let text = GOOD.replace("id = \"out\"", "id = \"out\"\ninput = 3");
    let line = text.lines().position(|l| l == "input = 3").unwrap() + 1;
    assert_mentions(&text, &[&format!("line {line}, input"), "string"]);
}

#[test]
fn a_source_that_nothing_reads_is_an_error() {
    let text = GOOD.replace(
        "[[operator]]\nid = \"big\"",
        "[[source]]\nid = \"lost\"\nkind = \"nexmark\"\ncount = 10\n\n[[operator]]\nid = \"big\"\ninput = \"bids\"",
    );
    assert_mentions(&text, &["lost", "goes nowhere"]);
}

fn environment() -> (tokio::runtime::Runtime, JobEnvironment) {
    JobEnvironment::in_memory().unwrap()
}

/// Input with malformed lines: line 2 of a.csv has a word for an int, line 3 of b.csv too
/// few fields; every other line is good.
const A_CSV: &str = "1,one\nx,two\n3,three\n";
const B_CSV: &str = "4,four\n5,five\n6\n7,seven\n";

fn files_job(on_error: &str) -> String {
    format!(
        r#"
name = "malformed-{on_error}"
[restart]
strategy = "none"
[[source]]
id = "in"
kind = "files"
prefix = "input/"
format = "csv"
schema = ["n:int", "word:string"]
on_error = "{on_error}"
[[sink]]
id = "out"
kind = "file"
path = "out"
format = "csv"
bucket_field = "word"
"#
    )
}

/// Runs `job` over a memory store holding the two input files; returns the end state and
/// the rows of the finished output files, sorted.
fn run_files_job(job: &str) -> (JobState, Vec<String>) {
    let (runtime, env) = environment();
    let store = env.store.clone();
    runtime.block_on(async {
        for (key, body) in [("input/a.csv", A_CSV), ("input/b.csv", B_CSV)] {
            store
                .put(key, body.as_bytes().to_vec().into(), PutOptions::default())
                .await
                .unwrap();
        }
    });
    let spec = parse(job).unwrap();
    let compiled = compile(&spec, "job-00000000000000000000000000000001").unwrap();
    let cluster = MiniCluster::new(env, 1, 1);
    let handle = cluster.submit(compiled.graph, "files-1").unwrap();
    // A bounded job over two small files: if it has not ended in a minute, it never will.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handle.state().is_terminal() {
        assert!(Instant::now() < deadline, "the files job did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = handle.wait();
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for object in store.list_all("out/").await.unwrap() {
            let body = store.get(&object.key, None).await.unwrap().body;
            rows.extend(
                String::from_utf8(body.to_vec())
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
        rows
    });
    let mut rows = rows;
    rows.sort();
    (state, rows)
}

#[test]
fn malformed_records_are_skipped_with_on_error_skip() {
    let (state, rows) = run_files_job(&files_job("skip"));
    assert_eq!(state, JobState::Finished);
    assert_eq!(
        rows,
        vec!["1,one", "3,three", "4,four", "5,five", "7,seven"],
        "only the good records, each once"
    );
}

#[test]
fn a_malformed_record_fails_the_job_naming_the_key_and_line() {
    let (state, rows) = run_files_job(&files_job("fail"));
    assert!(rows.is_empty(), "a failed job published {rows:?}");
    match state {
        // Files are read in key order: a.csv's line 2 is the first bad one.
        JobState::Failed(reason) => assert!(reason.contains("input/a.csv:2"), "{reason}"),
        other => panic!("expected the job to fail, got {other:?}"),
    }
}

#[test]
fn a_discard_sink_takes_a_positive_rate() {
    let file_sink = "kind = \"file\"\npath = \"out/counts\"\nformat = \"json\"\n";
    assert!(GOOD.contains(file_sink));
    let throttled = GOOD.replace(file_sink, "kind = \"discard\"\nrate = 500\n");
    compile(&parse(&throttled).unwrap(), "job-0123456789abcdef").unwrap();
    let text = GOOD.replace(file_sink, "kind = \"discard\"\nrate = 0\n");
    assert_mentions(&text, &["sink out.rate", "at least 1"]);
}

/// A file sink's `path` stays under the store's root and out of the names the store and the
/// engine keep for themselves: `_jobs/` (job records), `_checkpoints/`, `.rivulet-store/`
/// (the local store's state). Written there, part files went among the job records (and the
/// run summary, which skips such names, reported none); under `.rivulet-store/` the job
/// restarted three times and failed at its first checkpoint instead of being refused.
#[test]
fn a_sink_path_must_be_plain_names_under_the_root() {
    let path = "path = \"out/counts\"";
    assert!(GOOD.contains(path));
    let with = |p: &str| GOOD.replace(path, &format!("path = {p}"));
    for (bad, needles) in [
        (
            "\"_jobs\"",
            &["sink out.path", "`_jobs` starts with `_`"][..],
        ),
        ("\"_checkpoints/x\"", &["sink out.path", "_checkpoints"][..]),
        (
            "\"out/_tmp\"",
            &["sink out.path", "`_tmp` starts with `_`"][..],
        ),
        (
            "\".rivulet-store/x\"",
            &["sink out.path", "`.rivulet-store` starts with `.`"][..],
        ),
        ("\"out/.hidden\"", &["sink out.path", "`.hidden`"][..]),
        (
            "\"out/../../x\"",
            &["sink out.path", "`..` is not a name"][..],
        ),
        ("'out\\..\\..\\x'", &["sink out.path", "backslash"][..]),
        ("\"out/a\\tb\"", &["sink out.path", "control character"][..]),
        ("\"/\"", &["sink out.path", "empty"][..]),
    ] {
        assert_mentions(&with(bad), needles);
    }
    // Leading and trailing slashes are trimmed; names with dots and underscores inside are fine.
    for good in ["\"/out/counts/\"", "\"out/v1.2/my_counts\""] {
        compile(&parse(&with(good)).unwrap(), "job-0123456789abcdef").unwrap();
    }
}

/// A files source's prefix with `.` or `..` segments (or a leading `/`) matches no key of any
/// store: the job used to finish at once having read nothing, without a word.
#[test]
fn a_files_prefix_that_no_key_can_match_is_an_error() {
    let job = |prefix: &str| {
        format!(
            "name = \"f\"\n[[source]]\nid = \"in\"\nkind = \"files\"\nprefix = \"{prefix}\"\n\
             format = \"csv\"\nschema = [\"n:int\"]\n[[sink]]\nkind = \"discard\"\n"
        )
    };
    for bad in ["../../etc/", "input/./x", "/input/", "input//x"] {
        assert_mentions(&job(bad), &["source in.prefix", "not a key prefix"]);
    }
    for good in ["input/", "input/clicks-2024", ""] {
        compile(&parse(&job(good)).unwrap(), "job-0123456789abcdef").unwrap();
    }
}

/// `checkpoint.timeout = "0s"` declined every checkpoint the moment it was triggered: the job
/// restarted until it failed, having published nothing.
#[test]
fn a_zero_checkpoint_timeout_is_an_error() {
    let text = GOOD.replace(
        "name = \"good\"\n",
        "name = \"good\"\n[checkpoint]\ntimeout = \"0s\"\n",
    );
    assert_mentions(&text, &["checkpoint.timeout", "`0s`"]);
}

/// A window shorter than a millisecond (the windows' resolution) is refused naming the field
/// and the text given, not as "size 0 ms".
#[test]
fn a_window_shorter_than_a_millisecond_names_its_field() {
    let text = GOOD.replace("size = \"1s\"", "size = \"1ns\"");
    assert_mentions(
        &text,
        &["operator per-auction.size", "`1ns`", "millisecond"],
    );
}

/// Errors from the checks of a sink or source name the stage and the job file's key, as every
/// other job file error does (they said `sink.rolling.max_part_size` or `nexmark.rate`,
/// which names neither the stage nor a key of the file).
#[test]
fn errors_of_a_sinks_and_a_sources_own_checks_name_the_stage() {
    let sink = "format = \"json\"\n";
    for (extra, needle) in [
        ("max_part_size = 0\n", "sink out.max_part_size"),
        ("rollover_interval = \"0s\"\n", "sink out.rollover_interval"),
        (
            "inactivity_interval = \"0s\"\n",
            "sink out.inactivity_interval",
        ),
    ] {
        let text = GOOD.replace(sink, &format!("{sink}{extra}"));
        assert_mentions(&text, &[needle]);
    }
    let text = GOOD.replace("count = 1000\n", "count = 1000\nrate = 0\n");
    assert_mentions(&text, &["source bids.rate", "at least 1 event per second"]);
}

#[test]
fn a_string_where_a_number_or_a_flag_is_due_names_its_line_and_field() {
    // In a source, a sink and an operator: serde shows string values unlike other values, and
    // these tables lose their keys' positions (see `job::key_in`).
    for (from, to, field) in [
        ("count = 1000", "count = \"1000\"", "count"),
        (
            "format = \"json\"",
            "format = \"json\"\nroll_on_checkpoint = \"yes\"",
            "roll_on_checkpoint",
        ),
        ("count = 1000", "count = 1000\nrate = \"fast\"", "rate"),
    ] {
        let text = GOOD.replace(from, to);
        let wrong = to.lines().last().unwrap();
        let line = text.lines().position(|l| l == wrong).unwrap() + 1;
        assert_mentions(&text, &[&format!("line {line}, {field}"), "invalid type"]);
    }
}
