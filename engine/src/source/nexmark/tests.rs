use std::collections::HashSet;
use std::time::Instant;

use super::*;
use crate::data::Value;
use crate::source::testing::{Collect, TestJob, drain};

fn bounded(events: EventKind, count: u64) -> NexmarkConfig {
    NexmarkConfig {
        events,
        count: Some(count),
        ..NexmarkConfig::default()
    }
}

fn run(job: &TestJob, config: &NexmarkConfig, subtask: usize, parallelism: usize) -> Vec<Record> {
    let mut source = NexmarkSource::new(config.clone()).unwrap();
    source.open(&job.ctx(subtask, parallelism)).unwrap();
    let mut out = Collect::default();
    drain(&mut source, &mut out, 97);
    out.records
}

/// What the whole stream holds: the records of one subtask of parallelism 1.
fn expected(config: &NexmarkConfig) -> Vec<Record> {
    run(&TestJob::new(), config, 0, 1)
}

fn key(record: &Record) -> String {
    format!("{record:?}")
}

#[test]
fn a_bid_source_emits_the_bids_of_the_full_stream() {
    let job = TestJob::new();
    let bids = run(&job, &bounded(EventKind::Bid, 100), 0, 1);
    // 100 events: 2 people, 6 auctions, 92 bids.
    assert_eq!(bids.len(), 92);
    let all = run(&job, &bounded(EventKind::All, 100), 0, 1);
    assert_eq!(all.len(), 100);
    let schema = schema_for(EventKind::All);
    let price = schema.index_of("bid_price").unwrap();
    let from_all: Vec<Value> = all
        .iter()
        .filter(|r| r.row[0] == Value::Int(model::EVENT_TYPE_BID))
        .map(|r| r.row[price].clone())
        .collect();
    let from_bids: Vec<Value> = bids.iter().map(|r| r.row[2].clone()).collect();
    assert_eq!(from_all, from_bids);
    // The record's time is the event's date_time.
    for record in &bids {
        assert_eq!(Value::Time(record.timestamp), record.row[5]);
    }
    assert_eq!(bids[0].timestamp, DEFAULT_FIRST_EVENT_TIME_MS);
}

#[test]
fn subtasks_partition_the_stream_whatever_the_parallelism() {
    for kind in [EventKind::All, EventKind::Bid, EventKind::Person] {
        let config = bounded(kind, 1234);
        let whole: Vec<String> = expected(&config).iter().map(key).collect();
        for parallelism in [2, 3, 7] {
            let job = TestJob::new();
            let mut union = Vec::new();
            for subtask in 0..parallelism {
                union.extend(run(&job, &config, subtask, parallelism).iter().map(key));
            }
            assert_eq!(union.len(), whole.len(), "{kind:?} p={parallelism}");
            let union: HashSet<String> = union.into_iter().collect();
            let whole_set: HashSet<String> = whole.iter().cloned().collect();
            assert_eq!(union, whole_set, "{kind:?} p={parallelism}");
        }
    }
}

#[test]
fn a_subtask_that_gets_no_event_of_its_kind_finishes() {
    let job = TestJob::new();
    // With 50 subtasks, subtask 0 gets every person and the others none.
    let config = bounded(EventKind::Person, 10_000);
    assert_eq!(run(&job, &config, 0, 50).len(), 200);
    assert!(run(&job, &config, 1, 50).is_empty());
    let mut unbounded = NexmarkSource::new(NexmarkConfig {
        events: EventKind::Person,
        ..NexmarkConfig::default()
    })
    .unwrap();
    unbounded.open(&job.ctx(1, 50)).unwrap();
    let status = unbounded.poll(&mut Collect::default(), 10).unwrap();
    assert!(matches!(status, SourceStatus::Idle(_)), "{status:?}");
}

#[test]
fn a_restored_source_resumes_exactly_after_its_position() {
    let job = TestJob::new();
    let config = bounded(EventKind::All, 2000);
    let ctx = job.ctx(1, 3);
    let mut first = NexmarkSource::new(config.clone()).unwrap();
    first.open(&ctx).unwrap();
    let mut before = Collect::default();
    for _ in 0..5 {
        assert_eq!(first.poll(&mut before, 37).unwrap(), SourceStatus::More);
    }
    let position = first.snapshot(1).unwrap();
    let mut rest = Collect::default();
    drain(&mut first, &mut rest, 50);

    let mut restored = NexmarkSource::new(config.clone()).unwrap();
    restored.restore(&ctx, &position).unwrap();
    restored.open(&ctx).unwrap();
    let mut replayed = Collect::default();
    drain(&mut restored, &mut replayed, 64);
    assert_eq!(replayed.records, rest.records);

    let mut all = before.records;
    all.extend(replayed.records);
    assert_eq!(all, run(&job, &config, 1, 3));
}

#[test]
fn positions_are_checked_when_restoring() {
    let job = TestJob::new();
    let mut source = NexmarkSource::new(bounded(EventKind::Bid, 100)).unwrap();
    source.open(&job.ctx(0, 2)).unwrap();
    let position = source.snapshot(1).unwrap();
    let mut other = NexmarkSource::new(bounded(EventKind::Bid, 100)).unwrap();
    let err = other.restore(&job.ctx(0, 3), &position).unwrap_err();
    assert!(err.to_string().contains("subtask 1 of 2"), "{err}");
    assert!(other.restore(&job.ctx(0, 2), &position[..5]).is_err());
    let mut bad = position.clone();
    bad[0] = 9;
    let err = other.restore(&job.ctx(0, 2), &bad).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    other.restore(&job.ctx(0, 2), &position).unwrap();
}

#[test]
fn configuration_is_validated() {
    let zero_rate = NexmarkConfig {
        rate: Some(0),
        ..NexmarkConfig::default()
    };
    assert!(NexmarkSource::new(zero_rate).is_err());
    let no_time = NexmarkConfig {
        events_per_second_of_event_time: 0,
        ..NexmarkConfig::default()
    };
    assert!(NexmarkSource::new(no_time).is_err());
}

#[test]
fn the_rate_limits_emission_and_idles_ahead_of_schedule() {
    let job = TestJob::new();
    let rate = 2000;
    let mut source = NexmarkSource::new(NexmarkConfig {
        events: EventKind::All,
        rate: Some(rate),
        ..NexmarkConfig::default()
    })
    .unwrap();
    // Two subtasks: this one may take 1,000 events a second.
    source.open(&job.ctx(0, 2)).unwrap();
    let start = Instant::now();
    let mut out = Collect::default();
    let first = source.poll(&mut out, 10_000).unwrap();
    assert!(matches!(first, SourceStatus::Idle(_)), "{first:?}");
    let mut idles = 0;
    while start.elapsed() < Duration::from_millis(300) {
        match source.poll(&mut out, 10_000).unwrap() {
            SourceStatus::Idle(d) => {
                assert!(d >= MIN_IDLE && d <= MAX_IDLE, "{d:?}");
                idles += 1;
                std::thread::sleep(d);
            }
            SourceStatus::More => {}
            SourceStatus::Finished => panic!("unbounded"),
        }
    }
    let allowed = (start.elapsed().as_secs_f64() * rate as f64 / 2.0).ceil() as usize;
    assert!(
        out.records.len() <= allowed,
        "{} > {allowed}",
        out.records.len()
    );
    assert!(out.records.len() >= 100, "{}", out.records.len());
    assert!(idles > 0);
}
