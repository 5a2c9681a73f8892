//! Aggregate functions of windows: their specs as job files write them (`total = sum(price)`),
//! their result types, and the accumulators that fold rows into results.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::data::{DataType, Schema, Value};
use crate::error::EngineError;
use crate::expr::{Tok, compare_values, error_at, tokenize};

use super::state::StateValue;

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateFunction {
    /// Rows (`count()`), or non-null values of a field (`count(field)`).
    Count,
    /// Sum of the non-null values; null when there are none.
    Sum,
    Min,
    Max,
    /// Mean of the non-null values, as a float; null when there are none.
    Avg,
}

impl AggregateFunction {
    pub fn name(self) -> &'static str {
        match self {
            AggregateFunction::Count => "count",
            AggregateFunction::Sum => "sum",
            AggregateFunction::Min => "min",
            AggregateFunction::Max => "max",
            AggregateFunction::Avg => "avg",
        }
    }

    /// The function called `name`, in any case.
    pub fn by_name(name: &str) -> Option<AggregateFunction> {
        [
            AggregateFunction::Count,
            AggregateFunction::Sum,
            AggregateFunction::Min,
            AggregateFunction::Max,
            AggregateFunction::Avg,
        ]
        .into_iter()
        .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// The type of the result for an input of type `input` (`None`: no input, `count()`).
    pub fn output_type(self, input: Option<DataType>) -> Result<DataType, String> {
        use DataType::*;
        match (self, input) {
            (AggregateFunction::Count, _) => Ok(Int),
            (_, None) => Err(format!("{}() needs a field", self.name())),
            (AggregateFunction::Sum, Some(t @ (Int | Float))) => Ok(t),
            (AggregateFunction::Avg, Some(Int | Float)) => Ok(Float),
            (AggregateFunction::Sum | AggregateFunction::Avg, Some(t)) => Err(format!(
                "{}() needs an int or float field, not a {t} one",
                self.name()
            )),
            (AggregateFunction::Min | AggregateFunction::Max, Some(t)) => Ok(t),
        }
    }
}

/// One aggregate of a window: its output field name, function and input field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSpec {
    pub name: String,
    pub function: AggregateFunction,
    /// Position of the input field in the window's input schema; `None` for `count()`.
    pub input: Option<usize>,
}

/// Parses a job file's aggregate entry: `name = function(field)`, `function(field)` (named
/// `function_field`, e.g. `max_price`), `count()` or `count(*)` (named `count`).
pub fn parse_aggregate(text: &str, schema: &Schema) -> Result<AggregateSpec, EngineError> {
    let tokens = tokenize(text).map_err(|e| error_at(text, e.offset, e.message))?;
    let error = |index: usize, message: String| {
        let offset = tokens.get(index).map_or(text.len(), |t| t.offset);
        error_at(text, offset, message)
    };
    let tok = |index: usize| tokens.get(index).map_or(&Tok::End, |t| &t.tok);
    let word = |index: usize| match tok(index) {
        Tok::Ident(w) | Tok::Quoted(w) => Some(w.clone()),
        _ => None,
    };

    // An explicit name is a word followed by `=`.
    let (name, at) = match (word(0), tok(1)) {
        (Some(name), Tok::Eq) => (Some(name), 2),
        _ => (None, 0),
    };
    let function_name = match tok(at) {
        Tok::Ident(w) => w.clone(),
        other => {
            return Err(error(
                at,
                format!(
                    "expected an aggregate function (count, sum, min, max, avg), found {other}"
                ),
            ));
        }
    };
    let function = AggregateFunction::by_name(&function_name).ok_or_else(|| {
        error(
            at,
            format!(
                "unknown aggregate function `{function_name}` (the functions are: count, sum, \
                 min, max, avg)"
            ),
        )
    })?;
    if *tok(at + 1) != Tok::LParen {
        return Err(error(
            at + 1,
            format!(
                "expected `(` after `{function_name}`, found {}",
                tok(at + 1)
            ),
        ));
    }
    let (input, close) = match tok(at + 2) {
        Tok::RParen => (None, at + 2),
        Tok::Star if function == AggregateFunction::Count => (None, at + 3),
        Tok::Ident(field) | Tok::Quoted(field) => (Some(field.clone()), at + 3),
        other => {
            return Err(error(
                at + 2,
                format!("expected a field name or `)`, found {other}"),
            ));
        }
    };
    if *tok(close) != Tok::RParen {
        return Err(error(
            close,
            format!(
                "expected `)`, found {} (an aggregate takes one field, not an expression)",
                tok(close)
            ),
        ));
    }
    if *tok(close + 1) != Tok::End {
        return Err(error(
            close + 1,
            format!(
                "expected the end of the aggregate, found {}",
                tok(close + 1)
            ),
        ));
    }

    let index = match &input {
        None => None,
        Some(field) => Some(schema.index_of(field).ok_or_else(|| EngineError::Expr {
            expr: text.to_string(),
            message: format!(
                "unknown field `{field}` (the fields are: {})",
                schema.names()
            ),
        })?),
    };
    function
        .output_type(index.map(|i| schema.field(i).data_type))
        .map_err(|message| EngineError::Expr {
            expr: text.to_string(),
            message,
        })?;
    let function_lower = function.name();
    let name = name.unwrap_or_else(|| match &input {
        Some(field) => format!("{function_lower}_{field}"),
        None => function_lower.to_string(),
    });
    Ok(AggregateSpec {
        name,
        function,
        input: index,
    })
}

/// The running state of one aggregate for one key in one window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Accumulator {
    Count(i64),
    /// Wraps on overflow, like integer arithmetic in expressions.
    SumInt(Option<i64>),
    SumFloat(Option<f64>),
    Min(Option<Value>),
    Max(Option<Value>),
    Avg {
        sum: f64,
        count: i64,
    },
}

impl Accumulator {
    /// A fresh accumulator for `function` over input of type `input`.
    pub(crate) fn new(function: AggregateFunction, input: Option<DataType>) -> Accumulator {
        match function {
            AggregateFunction::Count => Accumulator::Count(0),
            AggregateFunction::Sum if input == Some(DataType::Float) => Accumulator::SumFloat(None),
            AggregateFunction::Sum => Accumulator::SumInt(None),
            AggregateFunction::Min => Accumulator::Min(None),
            AggregateFunction::Max => Accumulator::Max(None),
            AggregateFunction::Avg => Accumulator::Avg { sum: 0.0, count: 0 },
        }
    }

    /// Folds in the input value of one row (`None` for `count()`, which counts rows).
    pub(crate) fn add(&mut self, value: Option<&Value>) {
        let value = match value {
            None => {
                if let Accumulator::Count(n) = self {
                    *n += 1;
                }
                return;
            }
            Some(Value::Null) => return,
            Some(value) => value,
        };
        match self {
            Accumulator::Count(n) => *n += 1,
            Accumulator::SumInt(sum) => {
                if let Some(v) = value.as_i64() {
                    *sum = Some(sum.unwrap_or(0).wrapping_add(v));
                }
            }
            Accumulator::SumFloat(sum) => {
                if let Some(v) = value.as_f64() {
                    *sum = Some(sum.unwrap_or(0.0) + v);
                }
            }
            Accumulator::Min(best) => keep_if(best, value, Ordering::Less),
            Accumulator::Max(best) => keep_if(best, value, Ordering::Greater),
            Accumulator::Avg { sum, count } => {
                if let Some(v) = value.as_f64() {
                    *sum += v;
                    *count += 1;
                }
            }
        }
    }

    /// The aggregate's result.
    pub(crate) fn finish(self) -> Value {
        match self {
            Accumulator::Count(n) => Value::Int(n),
            Accumulator::SumInt(sum) => sum.map_or(Value::Null, Value::Int),
            Accumulator::SumFloat(sum) => sum.map_or(Value::Null, Value::Float),
            Accumulator::Min(best) | Accumulator::Max(best) => best.unwrap_or(Value::Null),
            Accumulator::Avg { count: 0, .. } => Value::Null,
            Accumulator::Avg { sum, count } => Value::Float(sum / count as f64),
        }
    }

    /// Whether `other` is the same kind of accumulator (a restored state must fit the job).
    pub(crate) fn same_kind(&self, other: &Accumulator) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    pub(crate) fn to_state(&self) -> AccumulatorState {
        match self {
            Accumulator::Count(n) => AccumulatorState::Count(*n),
            Accumulator::SumInt(sum) => AccumulatorState::SumInt(*sum),
            Accumulator::SumFloat(sum) => AccumulatorState::SumFloat(sum.map(f64::to_bits)),
            Accumulator::Min(best) => AccumulatorState::Min(best.as_ref().map(StateValue::from)),
            Accumulator::Max(best) => AccumulatorState::Max(best.as_ref().map(StateValue::from)),
            Accumulator::Avg { sum, count } => AccumulatorState::Avg {
                sum: sum.to_bits(),
                count: *count,
            },
        }
    }

    pub(crate) fn from_state(state: AccumulatorState) -> Accumulator {
        match state {
            AccumulatorState::Count(n) => Accumulator::Count(n),
            AccumulatorState::SumInt(sum) => Accumulator::SumInt(sum),
            AccumulatorState::SumFloat(sum) => Accumulator::SumFloat(sum.map(f64::from_bits)),
            AccumulatorState::Min(best) => Accumulator::Min(best.map(Value::from)),
            AccumulatorState::Max(best) => Accumulator::Max(best.map(Value::from)),
            AccumulatorState::Avg { sum, count } => Accumulator::Avg {
                sum: f64::from_bits(sum),
                count,
            },
        }
    }
}

/// Replaces `best` with `value` when `value` orders `wanted` relative to it. Nulls and NaNs
/// are skipped, so the result does not depend on where they arrive.
fn keep_if(best: &mut Option<Value>, value: &Value, wanted: Ordering) {
    if value.is_null() || matches!(value, Value::Float(v) if v.is_nan()) {
        return;
    }
    let replace = match best {
        None => true,
        Some(current) => compare_values(value, current) == Some(wanted),
    };
    if replace {
        *best = Some(value.clone());
    }
}

/// An accumulator as checkpoints store it: floats as their bits, so that they restore exactly
/// (and NaN and infinities survive JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AccumulatorState {
    Count(i64),
    SumInt(Option<i64>),
    SumFloat(Option<u64>),
    Min(Option<StateValue>),
    Max(Option<StateValue>),
    Avg { sum: u64, count: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("auction", DataType::Int),
            Field::new("price", DataType::Float),
            Field::new("channel", DataType::String),
        ])
    }

    fn error(text: &str) -> String {
        parse_aggregate(text, &schema()).unwrap_err().to_string()
    }

    #[test]
    fn parses_named_and_default_named_entries() {
        let spec = |text| parse_aggregate(text, &schema()).unwrap();
        assert_eq!(
            spec("bids = count()"),
            AggregateSpec {
                name: "bids".into(),
                function: AggregateFunction::Count,
                input: None
            }
        );
        assert_eq!(
            spec("max(price)"),
            AggregateSpec {
                name: "max_price".into(),
                function: AggregateFunction::Max,
                input: Some(1)
            }
        );
        assert_eq!(spec("total = SUM(price)").name, "total");
        assert_eq!(spec("total = SUM(price)").function, AggregateFunction::Sum);
        assert_eq!(spec("count(*)").name, "count");
        assert_eq!(spec("count(channel)").name, "count_channel");
        assert_eq!(spec("`odd name` = avg(auction)").name, "odd name");
        assert_eq!(spec("min(channel)").input, Some(2));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = error("median(price)");
        assert!(e.contains("unknown aggregate function `median`"), "{e}");
        let e = error("sum(prce)");
        assert!(
            e.contains("unknown field `prce`") && e.contains("auction, price"),
            "{e}"
        );
        let e = error("sum(channel)");
        assert!(
            e.contains("sum() needs an int or float field, not a string"),
            "{e}"
        );
        let e = error("avg()");
        assert!(e.contains("avg() needs a field"), "{e}");
        let e = error("sum(price * 2)");
        assert!(
            e.contains("column 11") && e.contains("not an expression"),
            "{e}"
        );
        let e = error("sum price");
        assert!(e.contains("expected `(`"), "{e}");
        let e = error("sum(*)");
        assert!(e.contains("expected a field name"), "{e}");
        let e = error("x = max(price) + 1");
        assert!(e.contains("expected the end"), "{e}");
        let e = error("= max(price)");
        assert!(e.contains("expected an aggregate function"), "{e}");
    }

    #[test]
    fn accumulators_skip_nulls() {
        let fold = |function, ty, values: &[Value]| {
            let mut acc = Accumulator::new(function, Some(ty));
            for v in values {
                acc.add(Some(v));
            }
            acc.finish()
        };
        let ints = [Value::Int(3), Value::Null, Value::Int(-1), Value::Int(5)];
        assert_eq!(
            fold(AggregateFunction::Count, DataType::Int, &ints),
            Value::Int(3)
        );
        assert_eq!(
            fold(AggregateFunction::Sum, DataType::Int, &ints),
            Value::Int(7)
        );
        assert_eq!(
            fold(AggregateFunction::Min, DataType::Int, &ints),
            Value::Int(-1)
        );
        assert_eq!(
            fold(AggregateFunction::Max, DataType::Int, &ints),
            Value::Int(5)
        );
        assert_eq!(
            fold(AggregateFunction::Avg, DataType::Int, &ints),
            Value::Float(7.0 / 3.0)
        );
        let nulls = [Value::Null, Value::Null];
        assert_eq!(
            fold(AggregateFunction::Count, DataType::Int, &nulls),
            Value::Int(0)
        );
        assert_eq!(
            fold(AggregateFunction::Sum, DataType::Float, &nulls),
            Value::Null
        );
        assert_eq!(
            fold(AggregateFunction::Avg, DataType::Int, &nulls),
            Value::Null
        );
        assert_eq!(
            fold(AggregateFunction::Min, DataType::Int, &nulls),
            Value::Null
        );
        let floats = [
            Value::Float(f64::NAN),
            Value::Float(2.5),
            Value::Float(-0.5),
        ];
        assert_eq!(
            fold(AggregateFunction::Max, DataType::Float, &floats),
            Value::Float(2.5)
        );
        assert_eq!(
            fold(AggregateFunction::Min, DataType::Float, &floats),
            Value::Float(-0.5)
        );
        let strings = [Value::Str("b".into()), Value::Str("a".into())];
        assert_eq!(
            fold(AggregateFunction::Min, DataType::String, &strings),
            Value::Str("a".into())
        );

        let mut rows = Accumulator::new(AggregateFunction::Count, None);
        rows.add(None);
        rows.add(None);
        assert_eq!(rows.finish(), Value::Int(2));
    }

    #[test]
    fn state_round_trips_floats_exactly() {
        for acc in [
            Accumulator::SumFloat(Some(0.1 + 0.2)),
            Accumulator::Avg {
                sum: f64::NAN,
                count: 2,
            },
            Accumulator::Max(Some(Value::Float(f64::INFINITY))),
            Accumulator::Min(Some(Value::Str("x".into()))),
            Accumulator::SumInt(None),
            Accumulator::Count(9),
        ] {
            let json = serde_json::to_string(&acc.to_state()).unwrap();
            let back = Accumulator::from_state(serde_json::from_str(&json).unwrap());
            assert_eq!(format!("{back:?}"), format!("{acc:?}"), "{json}");
        }
    }
}
