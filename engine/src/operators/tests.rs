//! Tests of filter and project, and the output that every operator test collects into.

use crate::data::{DataType, Field, Record, Schema, Timestamp, Value};
use crate::error::EngineError;
use crate::expr::{Expr, parse_named};
use crate::operator::{Operator, Output};

use super::{FilterOperator, ProjectOperator};

/// What an operator passed downstream, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    Record(Record),
    Watermark(Timestamp),
}

#[derive(Default)]
pub(crate) struct Collect {
    pub events: Vec<Event>,
}

impl Collect {
    pub fn records(&self) -> Vec<Record> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Record(r) => Some(r.clone()),
                Event::Watermark(_) => None,
            })
            .collect()
    }
}

impl Output for Collect {
    fn emit(&mut self, record: Record) -> Result<(), EngineError> {
        self.events.push(Event::Record(record));
        Ok(())
    }

    fn watermark(&mut self, watermark: Timestamp) -> Result<(), EngineError> {
        self.events.push(Event::Watermark(watermark));
        Ok(())
    }
}

fn bids() -> Schema {
    Schema::new(vec![
        Field::new("auction", DataType::Int),
        Field::new("price", DataType::Float),
        Field::new("channel", DataType::String),
    ])
}

fn bid(ts: Timestamp, auction: i64, price: Option<f64>, channel: &str) -> Record {
    Record::new(
        ts,
        vec![
            Value::Int(auction),
            price.map_or(Value::Null, Value::Float),
            Value::Str(channel.into()),
        ],
    )
}

#[test]
fn filter_keeps_only_true_rows() {
    let predicate = Expr::parse("price > 10 and lower(channel) = 'google'")
        .unwrap()
        .bind(&bids())
        .unwrap();
    let mut filter = FilterOperator::new(predicate).unwrap();
    let mut out = Collect::default();
    let input = [
        bid(1, 1, Some(20.0), "Google"),
        bid(2, 2, Some(5.0), "google"),
        bid(3, 3, None, "google"),
        bid(4, 4, Some(30.0), "bing"),
        bid(5, 5, Some(11.0), "GOOGLE"),
    ];
    for record in input.iter().cloned() {
        filter.process(record, &mut out).unwrap();
    }
    filter.watermark(9, &mut out).unwrap();
    assert_eq!(
        out.events,
        vec![
            Event::Record(input[0].clone()),
            Event::Record(input[4].clone()),
            Event::Watermark(9),
        ]
    );
}

#[test]
fn filter_rejects_non_bool_predicates() {
    let predicate = Expr::parse("price * 2").unwrap().bind(&bids()).unwrap();
    let err = FilterOperator::new(predicate).err().unwrap().to_string();
    assert!(err.contains("price * 2") && err.contains("float"), "{err}");
}

#[test]
fn project_emits_exactly_the_listed_fields() {
    let columns: Vec<(String, _)> = [
        "channel",
        "euros = price * 0.908",
        "auction_mod = auction % 10",
    ]
    .iter()
    .map(|text| {
        let (name, expr) = parse_named(text).unwrap();
        (name, expr.bind(&bids()).unwrap())
    })
    .collect();
    let mut project = ProjectOperator::new(columns).unwrap();
    assert_eq!(
        project.output_schema(),
        Schema::new(vec![
            Field::new("channel", DataType::String),
            Field::new("euros", DataType::Float),
            Field::new("auction_mod", DataType::Int),
        ])
    );
    let mut out = Collect::default();
    project
        .process(bid(42, 123, Some(100.0), "x"), &mut out)
        .unwrap();
    project.process(bid(43, 7, None, "y"), &mut out).unwrap();
    assert_eq!(
        out.records(),
        vec![
            Record::new(
                42,
                vec![
                    Value::Str("x".into()),
                    Value::Float(100.0 * 0.908),
                    Value::Int(3)
                ]
            ),
            Record::new(43, vec![Value::Str("y".into()), Value::Null, Value::Int(7)]),
        ]
    );
}

#[test]
fn project_rejects_repeated_names_and_empty_lists() {
    let expr = |text: &str| Expr::parse(text).unwrap().bind(&bids()).unwrap();
    let err = ProjectOperator::new(vec![
        ("a".into(), expr("price")),
        ("a".into(), expr("auction")),
    ])
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("`a` is listed twice"), "{err}");
    let err = ProjectOperator::new(Vec::new()).err().unwrap().to_string();
    assert!(err.contains("no output fields"), "{err}");
}
