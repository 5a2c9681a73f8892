use std::collections::BTreeSet;

use super::*;
use crate::data::Field;
use crate::source::testing::{Collect, TestJob, drain};

fn schema() -> SchemaRef {
    std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int),
        Field::new("name", DataType::String),
        Field::new("at", DataType::Timestamp),
    ]))
}

fn config(prefix: &str, format: Format) -> FilesConfig {
    FilesConfig {
        timestamp_field: Some("at".into()),
        ..FilesConfig::new(prefix, format, schema())
    }
}

fn open(job: &TestJob, config: FilesConfig, subtask: usize, parallelism: usize) -> FilesSource {
    let mut source = FilesSource::new(config).unwrap();
    source.open(&job.ctx(subtask, parallelism)).unwrap();
    source
}

fn read_all(job: &TestJob, config: FilesConfig) -> Vec<Record> {
    let mut source = open(job, config, 0, 1);
    let mut out = Collect::default();
    drain(&mut source, &mut out, 100);
    out.records
}

fn ids(records: &[Record]) -> Vec<i64> {
    records.iter().map(|r| r.row[0].as_i64().unwrap()).collect()
}

#[test]
fn json_lines_become_records_with_their_event_time() {
    let job = TestJob::new();
    // A blank line, CRLF, and a last line without newline.
    job.put(
        "in/a.jsonl",
        concat!(
            "{\"id\":1,\"name\":\"x\",\"at\":5}\n\n  \r\n",
            "{\"id\":2,\"at\":\"1970-01-01T00:00:00.007Z\"}\r\n",
            "{\"id\":3,\"at\":9}",
        )
        .as_bytes(),
    );
    let records = read_all(&job, config("in/", Format::Json));
    assert_eq!(ids(&records), [1, 2, 3]);
    let times: Vec<i64> = records.iter().map(|r| r.timestamp).collect();
    assert_eq!(times, [5, 7, 9]);
    assert_eq!(records[0].row[1], Value::Str("x".into()));
    assert!(records[1].row[1].is_null());
}

#[test]
fn without_a_timestamp_field_records_get_the_time_they_are_read() {
    let job = TestJob::new();
    job.put("in/a.csv", b"1,x,5\n");
    let before = now_ms();
    let records = read_all(&job, FilesConfig::new("in/", Format::Csv, schema()));
    assert_eq!(records.len(), 1);
    assert!(records[0].timestamp >= before && records[0].timestamp <= now_ms());
}

#[test]
fn csv_records_may_hold_quoted_newlines() {
    let job = TestJob::new();
    job.put(
        "in/a.csv",
        b"1,\"two\nlines\",5\n\n2,\"say \"\"hi\"\"\",6\n3,\"a,b\",7",
    );
    for chunk_size in [CHUNK_SIZE, 1, 3, 8] {
        let mut source = open(&job, config("in/", Format::Csv), 0, 1);
        source.chunk_size = chunk_size;
        let mut out = Collect::default();
        drain(&mut source, &mut out, 100);
        let names: Vec<&str> = out
            .records
            .iter()
            .map(|r| r.row[1].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["two\nlines", "say \"hi\"", "a,b"],
            "chunk {chunk_size}"
        );
        assert_eq!(ids(&out.records), [1, 2, 3]);
    }
}

#[test]
fn malformed_records_are_skipped_or_fail_with_their_key_and_line() {
    let job = TestJob::new();
    // Line 4 is bad (a quoted newline makes the record on line 1 span two lines).
    job.put("in/a.csv", b"1,\"a\nb\",5\n2,c,6\nx,d,7\n3,e,8\n");
    job.put(
        "in/b.jsonl",
        b"{\"id\":1,\"at\":1}\nnot json\n{\"id\":2}\n{\"id\":3,\"at\":3}\n",
    );

    let skip = |prefix: &str, format| FilesConfig {
        on_error: OnError::Skip,
        ..config(prefix, format)
    };
    let mut source = open(&job, skip("in/a", Format::Csv), 0, 1);
    let mut out = Collect::default();
    drain(&mut source, &mut out, 10);
    assert_eq!(ids(&out.records), [1, 2, 3]);
    assert_eq!(source.malformed_records(), 1);

    // A null event time is malformed too.
    let mut source = open(&job, skip("in/b", Format::Json), 0, 1);
    let mut out = Collect::default();
    drain(&mut source, &mut out, 10);
    assert_eq!(ids(&out.records), [1, 3]);
    assert_eq!(source.malformed_records(), 2);

    let mut source = open(&job, config("in/a", Format::Csv), 0, 1);
    let mut out = Collect::default();
    let err = loop {
        match source.poll(&mut out, 10) {
            Ok(SourceStatus::Finished) => panic!("no error"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    match err {
        EngineError::Record { at, message } => {
            assert_eq!(at, "in/a.csv:4");
            assert!(message.contains("field `id`"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(ids(&out.records), [1, 2]);

    let mut source = open(&job, config("in/b", Format::Json), 0, 1);
    let err = source.poll(&mut Collect::default(), 10).unwrap_err();
    assert!(err.to_string().contains("in/b.jsonl:2"), "{err}");
}

/// Every snapshot taken between polls, restored into a fresh source, yields exactly the
/// records the original emitted after it.
#[test]
fn a_restored_source_emits_exactly_the_records_after_its_position() {
    let job = TestJob::new();
    let mut id = 0;
    for file in ["in/a.csv", "in/b.csv", "in/c/d.csv"] {
        let mut body = Vec::new();
        for _ in 0..25 {
            id += 1;
            let name = if id % 4 == 0 {
                "\"multi\nline\""
            } else {
                "plain"
            };
            body.extend_from_slice(format!("{id},{name},{id}\n").as_bytes());
        }
        job.put(file, &body);
    }
    let mut source = open(&job, config("in/", Format::Csv), 0, 1);
    source.chunk_size = 37;
    let mut emitted = Collect::default();
    let mut snapshots = vec![(0, source.snapshot(0).unwrap())];
    loop {
        let status = source.poll(&mut emitted, 7).unwrap();
        snapshots.push((emitted.records.len(), source.snapshot(1).unwrap()));
        if status == SourceStatus::Finished {
            break;
        }
    }
    assert_eq!(ids(&emitted.records), (1..=75).collect::<Vec<_>>());
    for (count, position) in snapshots {
        let ctx = job.ctx(0, 1);
        let mut restored = FilesSource::new(config("in/", Format::Csv)).unwrap();
        restored.chunk_size = 11;
        restored.restore(&ctx, &position).unwrap();
        restored.open(&ctx).unwrap();
        let mut rest = Collect::default();
        drain(&mut restored, &mut rest, 5);
        assert_eq!(
            rest.records,
            emitted.records[count..],
            "after {count} records"
        );
    }
}

#[test]
fn a_restored_bounded_source_reads_only_the_files_of_its_first_listing() {
    let job = TestJob::new();
    job.put("in/a.jsonl", b"{\"id\":1,\"at\":1}\n{\"id\":2,\"at\":2}\n");
    job.put("in/b.jsonl", b"{\"id\":3,\"at\":3}\n");
    let mut source = open(&job, config("in/", Format::Json), 0, 1);
    let mut out = Collect::default();
    assert_eq!(source.poll(&mut out, 1).unwrap(), SourceStatus::More);
    let position = source.snapshot(1).unwrap();
    job.put("in/c.jsonl", b"{\"id\":4,\"at\":4}\n");
    let ctx = job.ctx(0, 1);
    let mut restored = FilesSource::new(config("in/", Format::Json)).unwrap();
    restored.restore(&ctx, &position).unwrap();
    restored.open(&ctx).unwrap();
    let mut rest = Collect::default();
    drain(&mut restored, &mut rest, 10);
    assert_eq!(ids(&rest.records), [2, 3]);
}

#[test]
fn an_unbounded_source_discovers_new_files() {
    let job = TestJob::new();
    job.put("in/a.jsonl", b"{\"id\":1,\"at\":1}\n");
    let mut source = open(
        &job,
        FilesConfig {
            bounded: false,
            discover_interval: Duration::from_millis(20),
            ..config("in/", Format::Json)
        },
        0,
        1,
    );
    let mut out = Collect::default();
    assert_eq!(source.poll(&mut out, 10).unwrap(), SourceStatus::More);
    let status = source.poll(&mut out, 10).unwrap();
    let SourceStatus::Idle(wait) = status else {
        panic!("{status:?}")
    };
    assert!(wait <= Duration::from_millis(20), "{wait:?}");
    // Appending to a finished file is not picked up; a new file is.
    job.put("in/a.jsonl", b"{\"id\":1,\"at\":1}\n{\"id\":9,\"at\":9}\n");
    job.put("in/b.jsonl", b"{\"id\":2,\"at\":2}\n");
    let start = Instant::now();
    while out.records.len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "no discovery");
        if let SourceStatus::Idle(wait) = source.poll(&mut out, 10).unwrap() {
            std::thread::sleep(wait);
        }
    }
    std::thread::sleep(Duration::from_millis(30));
    assert!(matches!(
        source.poll(&mut out, 10).unwrap(),
        SourceStatus::Idle(_)
    ));
    assert_eq!(ids(&out.records), [1, 2]);

    // The position carries the finished files: a restored source does not read them again.
    let position = source.snapshot(1).unwrap();
    let ctx = job.ctx(0, 1);
    let mut restored = FilesSource::new(FilesConfig {
        bounded: false,
        ..config("in/", Format::Json)
    })
    .unwrap();
    restored.restore(&ctx, &position).unwrap();
    restored.open(&ctx).unwrap();
    let mut rest = Collect::default();
    assert!(matches!(
        restored.poll(&mut rest, 10).unwrap(),
        SourceStatus::Idle(_)
    ));
    assert!(rest.records.is_empty());
}

#[test]
fn subtasks_split_the_files_disjointly_and_completely() {
    let job = TestJob::new();
    for i in 0..30 {
        job.put(
            &format!("in/f{i:02}.csv"),
            format!("{i},x,{i}\n").as_bytes(),
        );
    }
    for parallelism in [1, 2, 3, 5] {
        let mut seen = BTreeSet::new();
        let mut total = 0;
        for subtask in 0..parallelism {
            let mut source = open(&job, config("in/", Format::Csv), subtask, parallelism);
            let mut out = Collect::default();
            drain(&mut source, &mut out, 4);
            total += out.records.len();
            seen.extend(ids(&out.records));
        }
        assert_eq!(total, 30, "p={parallelism}");
        assert_eq!(seen, (0..30).collect(), "p={parallelism}");
    }
}

#[test]
fn hidden_keys_and_directory_markers_are_skipped() {
    let job = TestJob::new();
    job.put("in/a.csv", b"1,x,1\n");
    for hidden in ["in/_tmp/b.csv", "in/.c.csv", "in/d/_SUCCESS", "in/e/"] {
        job.put(hidden, b"not,a,record,at all\n");
    }
    // A prefix that is not a directory: segments are checked below its directory.
    job.put("_in/f.csv", b"2,y,2\n");
    assert_eq!(ids(&read_all(&job, config("in/", Format::Csv))), [1]);
    assert_eq!(ids(&read_all(&job, config("_in/f", Format::Csv))), [2]);
    assert!(is_hidden("in/", "in/x/.y"));
    assert!(!is_hidden("a_b/", "a_b/c.csv"));
}

#[test]
fn configuration_and_positions_are_validated() {
    let bad_type = FilesConfig {
        timestamp_field: Some("name".into()),
        ..config("in/", Format::Csv)
    };
    let err = FilesSource::new(bad_type).err().unwrap();
    assert!(err.to_string().contains("is a string"), "{err}");
    let missing = FilesConfig {
        timestamp_field: Some("when".into()),
        ..config("in/", Format::Csv)
    };
    let err = FilesSource::new(missing).err().unwrap();
    assert!(err.to_string().contains("no field `when`"), "{err}");
    let mut int_time = config("in/", Format::Csv);
    int_time.schema = std::sync::Arc::new(Schema::new(vec![Field::new("at", DataType::Int)]));
    assert!(FilesSource::new(int_time).is_ok());

    let job = TestJob::new();
    let mut source = open(&job, config("in/", Format::Csv), 1, 2);
    let position = source.snapshot(1).unwrap();
    let mut other = FilesSource::new(config("in/", Format::Csv)).unwrap();
    let err = other.restore(&job.ctx(1, 3), &position).unwrap_err();
    assert!(err.to_string().contains("subtask 2 of 2"), "{err}");
    assert!(other.restore(&job.ctx(1, 2), b"garbage").is_err());
    other.restore(&job.ctx(1, 2), &position).unwrap();

    let unopened = FilesSource::new(config("in/", Format::Csv))
        .unwrap()
        .poll(&mut Collect::default(), 1);
    assert!(unopened.is_err());
}

#[test]
fn a_poll_reads_a_bounded_amount_before_returning() {
    let job = TestJob::new();
    let mut body = vec![b'\n'; 100];
    body.extend_from_slice(b"{\"id\":1,\"at\":1}\n");
    job.put("in/a.jsonl", &body);
    let mut source = open(&job, config("in/", Format::Json), 0, 1);
    source.chunk_size = 10;
    let mut out = Collect::default();
    // Ten chunks of blank lines: the first poll returns after a few, having emitted nothing.
    assert_eq!(source.poll(&mut out, 10).unwrap(), SourceStatus::More);
    assert!(out.records.is_empty());
    drain(&mut source, &mut out, 10);
    assert_eq!(ids(&out.records), [1]);
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_record() {
    let job = TestJob::new();
    job.put("in/a.csv", b"\xef\xbb\xbf1,x,5\n2,y,6\n");
    job.put("in/b.jsonl", b"\xef\xbb\xbf{\"id\":3,\"at\":7}\n");
    assert_eq!(ids(&read_all(&job, config("in/a", Format::Csv))), [1, 2]);
    assert_eq!(ids(&read_all(&job, config("in/b", Format::Json))), [3]);
}

#[test]
fn long_discovery_intervals_keep_polls_responsive() {
    let job = TestJob::new();
    for interval in [Duration::from_secs(3600), Duration::MAX] {
        let mut source = open(
            &job,
            FilesConfig {
                bounded: false,
                discover_interval: interval,
                ..config("in/", Format::Json)
            },
            0,
            1,
        );
        let status = source.poll(&mut Collect::default(), 10).unwrap();
        assert!(
            matches!(status, SourceStatus::Idle(d) if d <= MAX_IDLE),
            "{status:?}"
        );
    }
}
