use proptest::prelude::*;

use super::*;
use crate::operators::aggregate::parse_aggregate;
use crate::operators::tests::{Collect, Event};

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("k", DataType::Int),
        Field::new("v", DataType::Int),
        Field::new("f", DataType::Float),
        Field::new("s", DataType::String),
    ])
}

const AGGREGATES: [&str; 8] = [
    "count()", "count(v)", "sum(v)", "sum(f)", "min(v)", "max(f)", "avg(v)", "min(s)",
];

fn spec(assigner: WindowAssigner) -> WindowSpec {
    WindowSpec {
        assigner,
        key_fields: vec![0],
        aggregates: AGGREGATES
            .iter()
            .map(|a| parse_aggregate(a, &schema()).unwrap())
            .collect(),
    }
}

fn operator(assigner: WindowAssigner) -> WindowOperator {
    WindowOperator::new(spec(assigner), &schema()).unwrap()
}

/// One input of the operator.
#[derive(Debug, Clone)]
enum Input {
    Record {
        ts: Timestamp,
        k: i64,
        v: Option<i64>,
        f: Option<f64>,
    },
    Watermark(Timestamp),
}

fn record(ts: Timestamp, k: i64, v: Option<i64>, f: Option<f64>) -> Input {
    Input::Record { ts, k, v, f }
}

fn row_of(k: i64, v: Option<i64>, f: Option<f64>) -> Row {
    vec![
        Value::Int(k),
        v.map_or(Value::Null, Value::Int),
        f.map_or(Value::Null, Value::Float),
        v.map_or(Value::Null, |v| Value::Str(format!("s{v}").into())),
    ]
}

fn feed(op: &mut WindowOperator, inputs: &[Input], out: &mut Collect) {
    for input in inputs {
        match input {
            Input::Record { ts, k, v, f } => op
                .process(Record::new(*ts, row_of(*k, *v, *f)), out)
                .unwrap(),
            Input::Watermark(w) => op.watermark(*w, out).unwrap(),
        }
    }
}

fn run(assigner: WindowAssigner, inputs: &[Input]) -> (Collect, u64) {
    let mut op = operator(assigner);
    let mut out = Collect::default();
    feed(&mut op, inputs, &mut out);
    op.finish(&mut out).unwrap();
    (out, op.late_records())
}

/// The expected output, computed directly from the definition: every window `[start, end)`
/// with `start` a multiple of the slide contains the records with `start <= ts < end` that
/// arrived while the watermark was below `end - 1`. Returns the rows sorted by window end and
/// key (the order the operator emits them in), and the number of late records.
fn brute_force(assigner: WindowAssigner, inputs: &[Input]) -> (Vec<Record>, u64) {
    let (size, slide) = (assigner.size_ms(), assigner.slide_ms());
    let mut watermark = MIN_TIMESTAMP;
    let mut late = 0;
    // (end, key) -> accepted (v, f) in arrival order.
    type Accepted = Vec<(Option<i64>, Option<f64>)>;
    let mut groups: BTreeMap<(i64, i64), Accepted> = BTreeMap::new();
    for input in inputs {
        match *input {
            Input::Watermark(w) => watermark = watermark.max(w),
            Input::Record { ts, k, v, f } => {
                let mut dropped = false;
                let first = (ts - size).div_euclid(slide) * slide;
                let mut start = first;
                while start <= ts {
                    if start <= ts && ts < start + size {
                        if start + size - 1 <= watermark {
                            dropped = true;
                        } else {
                            groups.entry((start + size, k)).or_default().push((v, f));
                        }
                    }
                    start += slide;
                }
                if dropped {
                    late += 1;
                }
            }
        }
    }
    let rows = groups
        .into_iter()
        .map(|((end, k), rows)| {
            let vs: Vec<i64> = rows.iter().filter_map(|r| r.0).collect();
            let fs: Vec<f64> = rows.iter().filter_map(|r| r.1).collect();
            let sum_v = vs.iter().copied().reduce(i64::wrapping_add);
            let sum_f = fs.iter().copied().reduce(|a, b| a + b);
            let mut avg_sum = 0.0;
            for v in &vs {
                avg_sum += *v as f64;
            }
            let min_s = vs.iter().map(|v| format!("s{v}")).min();
            Record::new(
                end - 1,
                vec![
                    Value::Int(k),
                    Value::Time(end - size),
                    Value::Time(end),
                    Value::Int(rows.len() as i64),
                    Value::Int(vs.len() as i64),
                    sum_v.map_or(Value::Null, Value::Int),
                    sum_f.map_or(Value::Null, Value::Float),
                    vs.iter().copied().min().map_or(Value::Null, Value::Int),
                    fs.iter()
                        .copied()
                        .reduce(f64::max)
                        .map_or(Value::Null, Value::Float),
                    if vs.is_empty() {
                        Value::Null
                    } else {
                        Value::Float(avg_sum / vs.len() as f64)
                    },
                    min_s.map_or(Value::Null, |s: String| Value::Str(s.into())),
                ],
            )
        })
        .collect();
    (rows, late)
}

/// Checks that no window is emitted after a watermark that covers it, and that every window a
/// watermark covers was emitted before the watermark was forwarded.
fn assert_fired_on_time(out: &Collect, expected: &[Record]) {
    let mut emitted = 0;
    let mut last_watermark = MIN_TIMESTAMP;
    for event in &out.events {
        match event {
            Event::Record(r) => {
                assert!(
                    r.timestamp > last_watermark,
                    "{r:?} after watermark {last_watermark}"
                );
                emitted += 1;
            }
            Event::Watermark(w) => {
                let due = expected.iter().filter(|r| r.timestamp <= *w).count();
                assert_eq!(emitted, due, "windows due at watermark {w}");
                last_watermark = *w;
            }
        }
    }
}

fn assigners() -> impl Strategy<Value = WindowAssigner> {
    prop_oneof![
        (1i64..40).prop_map(|size_ms| WindowAssigner::Tumbling { size_ms }),
        (1i64..15, 1i64..5).prop_map(|(slide_ms, n)| WindowAssigner::Sliding {
            size_ms: slide_ms * n,
            slide_ms
        }),
    ]
}

fn inputs() -> impl Strategy<Value = Vec<Input>> {
    let record = (
        -50i64..200,
        0i64..3,
        prop::option::weighted(0.8, -1000i64..1000),
        prop::option::weighted(0.8, -1000.0f64..1000.0),
    )
        .prop_map(|(ts, k, v, f)| Input::Record { ts, k, v, f });
    let watermark = (-50i64..220).prop_map(Input::Watermark);
    prop::collection::vec(prop_oneof![6 => record, 1 => watermark], 0..80)
}

proptest! {
    #[test]
    fn windows_match_a_brute_force_computation(
        assigner in assigners(),
        inputs in inputs(),
    ) {
        let (out, late) = run(assigner, &inputs);
        let (expected, expected_late) = brute_force(assigner, &inputs);
        prop_assert_eq!(out.records(), expected.clone());
        prop_assert_eq!(late, expected_late);
        assert_fired_on_time(&out, &expected);
    }

    #[test]
    fn restoring_a_snapshot_continues_the_same_run(
        assigner in assigners(),
        inputs in inputs(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (uninterrupted, late) = run(assigner, &inputs);
        let cut = cut.index(inputs.len() + 1);

        let mut first = operator(assigner);
        let mut out = Collect::default();
        feed(&mut first, &inputs[..cut], &mut out);
        let bytes = first.snapshot(1).unwrap().unwrap();
        // The same state encodes to the same bytes, whatever the hash maps' order.
        let mut twin = operator(assigner);
        feed(&mut twin, &inputs[..cut], &mut Collect::default());
        prop_assert_eq!(twin.snapshot_state().unwrap(), bytes.clone());
        drop(first);

        let mut second = operator(assigner);
        second.restore_state(&bytes).unwrap();
        prop_assert_eq!(second.snapshot_state().unwrap(), bytes);
        feed(&mut second, &inputs[cut..], &mut out);
        second.finish(&mut out).unwrap();
        prop_assert_eq!(out.events, uninterrupted.events);
        prop_assert_eq!(second.late_records(), late);
    }
}

#[test]
fn output_schema_lists_keys_bounds_and_aggregates() {
    let op = operator(WindowAssigner::Tumbling { size_ms: 10 });
    let names: Vec<(String, DataType)> = op
        .output_schema()
        .fields
        .into_iter()
        .map(|f| (f.name, f.data_type))
        .collect();
    let expected = [
        ("k", DataType::Int),
        ("window_start", DataType::Timestamp),
        ("window_end", DataType::Timestamp),
        ("count", DataType::Int),
        ("count_v", DataType::Int),
        ("sum_v", DataType::Int),
        ("sum_f", DataType::Float),
        ("min_v", DataType::Int),
        ("max_f", DataType::Float),
        ("avg_v", DataType::Float),
        ("min_s", DataType::String),
    ];
    let expected: Vec<(String, DataType)> =
        expected.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    assert_eq!(names, expected);
}

#[test]
fn tumbling_windows_fire_on_the_watermark_then_forward_it() {
    let mut op = operator(WindowAssigner::Tumbling { size_ms: 10 });
    let mut out = Collect::default();
    feed(
        &mut op,
        &[
            record(3, 1, Some(5), Some(1.5)),
            record(7, 1, None, None),
            record(9, 2, Some(-4), Some(0.25)),
            record(12, 1, Some(8), None),
            Input::Watermark(8),
        ],
        &mut out,
    );
    assert_eq!(
        out.events,
        vec![Event::Watermark(8)],
        "[0, 10) is not due before 9"
    );
    op.watermark(9, &mut out).unwrap();
    let rows: Vec<Row> = out.records().into_iter().map(|r| r.row).collect();
    assert_eq!(
        rows,
        vec![
            vec![
                Value::Int(1),
                Value::Time(0),
                Value::Time(10),
                Value::Int(2),
                Value::Int(1),
                Value::Int(5),
                Value::Float(1.5),
                Value::Int(5),
                Value::Float(1.5),
                Value::Float(5.0),
                Value::Str("s5".into()),
            ],
            vec![
                Value::Int(2),
                Value::Time(0),
                Value::Time(10),
                Value::Int(1),
                Value::Int(1),
                Value::Int(-4),
                Value::Float(0.25),
                Value::Int(-4),
                Value::Float(0.25),
                Value::Float(-4.0),
                Value::Str("s-4".into()),
            ],
        ]
    );
    assert!(out.records().iter().all(|r| r.timestamp == 9));
    assert_eq!(out.events.last(), Some(&Event::Watermark(9)));
    assert_eq!(op.open_groups(), 1);
}

#[test]
fn nulls_leave_sum_avg_min_max_null_and_count_zero() {
    let (out, _) = run(
        WindowAssigner::Tumbling { size_ms: 10 },
        &[record(1, 1, None, None), record(2, 1, None, None)],
    );
    assert_eq!(
        out.records()[0].row,
        vec![
            Value::Int(1),
            Value::Time(0),
            Value::Time(10),
            Value::Int(2),
            Value::Int(0),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ]
    );
}

#[test]
fn late_records_are_dropped_and_counted() {
    let (out, late) = run(
        WindowAssigner::Tumbling { size_ms: 10 },
        &[
            record(5, 1, Some(1), None),
            Input::Watermark(9),
            record(8, 1, Some(100), None),
            // Behind the watermark but its window [10, 20) has not fired: not late.
            record(10, 1, Some(2), None),
            Input::Watermark(15),
            record(11, 1, Some(3), None),
        ],
    );
    assert_eq!(late, 1);
    let sums: Vec<Value> = out
        .records()
        .into_iter()
        .map(|r| r.row[5].clone())
        .collect();
    assert_eq!(sums, vec![Value::Int(1), Value::Int(5)]);
}

#[test]
fn sliding_windows_hold_each_record_size_over_slide_times() {
    let (out, _) = run(
        WindowAssigner::Sliding {
            size_ms: 30,
            slide_ms: 10,
        },
        &[record(25, 1, Some(1), None)],
    );
    let bounds: Vec<(Value, Value)> = out
        .records()
        .into_iter()
        .map(|r| (r.row[1].clone(), r.row[2].clone()))
        .collect();
    assert_eq!(
        bounds,
        vec![
            (Value::Time(0), Value::Time(30)),
            (Value::Time(10), Value::Time(40)),
            (Value::Time(20), Value::Time(50)),
        ]
    );
}

#[test]
fn negative_and_extreme_timestamps_do_not_panic() {
    let (out, _) = run(
        WindowAssigner::Sliding {
            size_ms: 30,
            slide_ms: 10,
        },
        &[
            record(-5, 1, Some(1), None),
            record(i64::MIN, 1, Some(1), None),
            record(i64::MAX, 1, Some(1), None),
            Input::Watermark(i64::MAX),
        ],
    );
    let starts: Vec<Value> = out
        .records()
        .into_iter()
        .map(|r| r.row[1].clone())
        .collect();
    assert!(starts.contains(&Value::Time(-30)) && starts.contains(&Value::Time(-10)));
}

#[test]
fn a_global_window_without_keys_has_one_group() {
    let mut s = spec(WindowAssigner::Tumbling { size_ms: 100 });
    s.key_fields.clear();
    let mut op = WindowOperator::new(s, &schema()).unwrap();
    let mut out = Collect::default();
    feed(
        &mut op,
        &[record(1, 1, Some(1), None), record(2, 2, Some(2), None)],
        &mut out,
    );
    op.finish(&mut out).unwrap();
    let records = out.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].row[0], Value::Time(0));
    assert_eq!(records[0].row[2], Value::Int(2));
}

#[test]
fn invalid_specs_are_rejected_with_the_reason() {
    let error = |spec: WindowSpec| {
        WindowOperator::new(spec, &schema())
            .err()
            .unwrap()
            .to_string()
    };
    let e = error(spec(WindowAssigner::Sliding {
        size_ms: 25,
        slide_ms: 10,
    }));
    assert!(
        e.contains("multiple of its slide") && e.contains("25"),
        "{e}"
    );
    let e = error(spec(WindowAssigner::Sliding {
        size_ms: 86_400_000,
        slide_ms: 1,
    }));
    assert!(e.contains("86400000 windows") && e.contains("10000"), "{e}");
    let e = error(spec(WindowAssigner::Tumbling { size_ms: 0 }));
    assert!(e.contains("must be positive"), "{e}");
    let mut s = spec(WindowAssigner::Tumbling { size_ms: 10 });
    s.key_fields = vec![7];
    let e = error(s);
    assert!(e.contains("field #7") && e.contains("k, v, f, s"), "{e}");
    let mut s = spec(WindowAssigner::Tumbling { size_ms: 10 });
    s.aggregates[0].name = "window_end".into();
    let e = error(s);
    assert!(e.contains("`window_end` appears twice"), "{e}");
    let mut s = spec(WindowAssigner::Tumbling { size_ms: 10 });
    s.aggregates[2].input = Some(3);
    let e = error(s);
    assert!(e.contains("sum_v") && e.contains("int or float"), "{e}");
}

#[test]
fn restore_rejects_state_of_another_job_or_garbage() {
    let mut op = operator(WindowAssigner::Tumbling { size_ms: 10 });
    op.process(
        Record::new(1, row_of(1, Some(1), None)),
        &mut Collect::default(),
    )
    .unwrap();
    let bytes = op.snapshot_state().unwrap();

    let mut other_spec = spec(WindowAssigner::Tumbling { size_ms: 10 });
    other_spec.aggregates.pop();
    let mut other = WindowOperator::new(other_spec, &schema()).unwrap();
    let e = other.restore_state(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("window operator") && e.contains("aggregates"),
        "{e}"
    );

    let corrupt = String::from_utf8(bytes)
        .unwrap()
        .replace("\"end\":10", &format!("\"end\":{}", i64::MIN));
    let e = op
        .restore_state(corrupt.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot end a window"), "{e}");

    let e = op.restore_state(b"{not json").unwrap_err().to_string();
    assert!(e.contains("state of window operator"), "{e}");
}
