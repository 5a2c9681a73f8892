//! Helpers for keyed operator state: grouping keys (hashing, equality, a total order for
//! deterministic output and snapshots) and values as checkpoints store them.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::data::{HASH_SEED, Row, Value};

const NULL: Value = Value::Null;

/// The value of field `index` of `row`; null when the row is shorter than its schema (which
/// decoders never produce, but no row may make a task panic).
pub(crate) fn field(row: &Row, index: usize) -> &Value {
    row.get(index).unwrap_or(&NULL)
}

/// The hash of the key fields of `row`, the same as [`key_hash`] of the extracted key.
pub(crate) fn row_key_hash(row: &Row, key_fields: &[usize]) -> u64 {
    key_fields
        .iter()
        .fold(HASH_SEED, |h, &i| field(row, i).stable_hash(h))
}

pub(crate) fn key_hash(key: &[Value]) -> u64 {
    key.iter().fold(HASH_SEED, |h, v| v.stable_hash(h))
}

/// Whether the key fields of `row` are `key`. Floats are equal by their bits, so that NaN keys
/// group together, consistent with [`Value::stable_hash`].
pub(crate) fn row_has_key(row: &Row, key_fields: &[usize], key: &[Value]) -> bool {
    key_fields
        .iter()
        .zip(key)
        .all(|(&i, k)| same_key_value(field(row, i), k))
}

fn same_key_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        _ => a == b,
    }
}

/// A total order over values: by kind (null, bool, int, timestamp, float, string), then by
/// value, floats by `total_cmp`. Used to sort keys so that output and snapshots do not depend
/// on hash map order.
pub(crate) fn total_order(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Time(_) => 3,
            Value::Float(_) => 4,
            Value::Str(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Int(a), Value::Int(b)) | (Value::Time(a), Value::Time(b)) => a.cmp(b),
        (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
        (Value::Str(a), Value::Str(b)) => a.cmp(b),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Orders keys field by field with [`total_order`].
pub(crate) fn key_order(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(a, b)| total_order(a, b))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// A value as checkpoints store it: like [`Value`], but a float is its bits, so that it
/// restores exactly whatever the JSON float parser does, and NaN and infinities survive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StateValue {
    Null,
    Bool(bool),
    Int(i64),
    FloatBits(u64),
    Str(String),
    Time(i64),
}

impl From<&Value> for StateValue {
    fn from(value: &Value) -> Self {
        match value {
            Value::Null => StateValue::Null,
            Value::Bool(v) => StateValue::Bool(*v),
            Value::Int(v) => StateValue::Int(*v),
            Value::Float(v) => StateValue::FloatBits(v.to_bits()),
            Value::Str(v) => StateValue::Str(v.to_string()),
            Value::Time(v) => StateValue::Time(*v),
        }
    }
}

impl From<StateValue> for Value {
    fn from(value: StateValue) -> Self {
        match value {
            StateValue::Null => Value::Null,
            StateValue::Bool(v) => Value::Bool(v),
            StateValue::Int(v) => Value::Int(v),
            StateValue::FloatBits(v) => Value::Float(f64::from_bits(v)),
            StateValue::Str(v) => Value::Str(v.into()),
            StateValue::Time(v) => Value::Time(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_and_compare_like_their_rows() {
        let row = vec![
            Value::Str("a".into()),
            Value::Float(f64::NAN),
            Value::Int(1),
        ];
        let key = vec![Value::Int(1), Value::Float(f64::NAN)];
        assert_eq!(row_key_hash(&row, &[2, 1]), key_hash(&key));
        assert!(row_has_key(&row, &[2, 1], &key));
        assert!(!row_has_key(&row, &[2, 0], &key));
        assert!(
            row_has_key(&vec![], &[0], &[Value::Null]),
            "short rows read null"
        );
    }

    #[test]
    fn total_order_sorts_every_value() {
        let mut values = [
            Value::Str("b".into()),
            Value::Float(f64::NAN),
            Value::Int(2),
            Value::Null,
            Value::Float(-1.0),
            Value::Str("a".into()),
            Value::Bool(true),
            Value::Int(-5),
        ];
        values.sort_by(total_order);
        assert_eq!(values[0], Value::Null);
        assert_eq!(values[2], Value::Int(-5));
        assert_eq!(values[4], Value::Float(-1.0));
        assert_eq!(values[6], Value::Str("a".into()));
        assert_eq!(
            key_order(
                &[Value::Int(1), Value::Int(2)],
                &[Value::Int(1), Value::Int(3)]
            ),
            Ordering::Less
        );
    }

    #[test]
    fn state_values_keep_float_bits() {
        for v in [
            0.1 + 0.2,
            f64::NAN,
            f64::NEG_INFINITY,
            -0.0,
            f64::MIN_POSITIVE,
        ] {
            let json = serde_json::to_string(&StateValue::from(&Value::Float(v))).unwrap();
            let back: StateValue = serde_json::from_str(&json).unwrap();
            match Value::from(back) {
                Value::Float(b) => assert_eq!(b.to_bits(), v.to_bits()),
                other => panic!("{other:?}"),
            }
        }
    }
}
