//! The records that flow through a job: typed values in rows, described by a schema that is
//! fixed per edge when the job is planned.
//!
//! Rows carry no field names: operators resolve names to positions once, at plan time, against
//! the schema of their input edge, so the per-record work is indexing, never a name lookup.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::text::Text;

/// Event time in milliseconds since the Unix epoch.
pub type Timestamp = i64;

/// The smallest timestamp: the watermark before any event.
pub const MIN_TIMESTAMP: Timestamp = i64::MIN;
/// The largest timestamp: the watermark a finished input sends, which fires every window.
pub const MAX_TIMESTAMP: Timestamp = i64::MAX;

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    Int,
    Float,
    String,
    /// Milliseconds since the Unix epoch.
    Timestamp,
}

impl DataType {
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Int => "int",
            DataType::Float => "float",
            DataType::String => "string",
            DataType::Timestamp => "timestamp",
        }
    }

    /// Parses a type name as job files write it.
    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "bool" | "boolean" => DataType::Bool,
            "int" | "integer" | "long" | "i64" => DataType::Int,
            "float" | "double" | "f64" => DataType::Float,
            "string" | "str" | "text" => DataType::String,
            "timestamp" | "time" => DataType::Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value of a row. `Null` is allowed in any field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Shared, immutable text: copying a row (a broadcast, a window's state, a source that
    /// hands out the same channel name in many records) costs a reference count, not a copy.
    Str(Text),
    /// Milliseconds since the Unix epoch.
    Time(Timestamp),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a number for arithmetic and aggregates (ints and times widen to float).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) | Value::Time(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as an integer (times are their milliseconds).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) | Value::Time(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The type of a non-null value.
    pub fn data_type(&self) -> Option<DataType> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => DataType::Bool,
            Value::Int(_) => DataType::Int,
            Value::Float(_) => DataType::Float,
            Value::Str(_) => DataType::String,
            Value::Time(_) => DataType::Timestamp,
        })
    }

    /// A stable hash for partitioning by key: the same value hashes the same in every process
    /// and every build (unlike `std`'s randomly seeded hasher), so a restarted job sends a key
    /// to the same subtask as before.
    pub fn stable_hash(&self, mut h: u64) -> u64 {
        fn mix(h: u64, bytes: &[u8]) -> u64 {
            // FNV-1a: tiny, deterministic and good enough to spread keys over subtasks.
            let mut h = h;
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            h
        }
        match self {
            Value::Null => mix(h, &[0]),
            Value::Bool(b) => mix(h, &[1, u8::from(*b)]),
            // Ints and times of the same number are the same key.
            Value::Int(v) | Value::Time(v) => mix(mix(h, &[2]), &v.to_le_bytes()),
            Value::Float(v) => mix(mix(h, &[3]), &v.to_bits().to_le_bytes()),
            Value::Str(s) => {
                h = mix(h, &[4]);
                mix(h, s.as_bytes())
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int(v) | Value::Time(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Str(v) => f.write_str(v),
        }
    }
}

/// FNV-1a's offset basis: the starting value of [`Value::stable_hash`] chains.
pub const HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// A named, typed field of a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub data_type: DataType,
}

impl Field {
    pub fn new(name: impl Into<String>, data_type: DataType) -> Self {
        Self {
            name: name.into(),
            data_type,
        }
    }
}

/// The fields of the rows on one edge of the dataflow, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schema {
    pub fields: Vec<Field>,
}

/// Schemas are shared by every operator on an edge.
pub type SchemaRef = Arc<Schema>;

impl Schema {
    pub fn new(fields: Vec<Field>) -> Self {
        Self { fields }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Position of the field called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn field(&self, index: usize) -> &Field {
        &self.fields[index]
    }

    /// The field names, comma separated, for error messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
        names.join(", ")
    }
}

/// A row: one value per field of its edge's schema.
pub type Row = Vec<Value>;

/// A row with its event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub timestamp: Timestamp,
    pub row: Row,
}

impl Record {
    pub fn new(timestamp: Timestamp, row: Row) -> Self {
        Self { timestamp, row }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_stays_three_words() {
        // Rows are vectors of values: a bigger value is more memory traffic on every record.
        assert_eq!(std::mem::size_of::<Value>(), 24);
    }

    #[test]
    fn stable_hash_is_fixed_across_builds() {
        // Pinned: partitioning must not change between versions, or a restored job would send
        // keys to subtasks that do not hold their state.
        assert_eq!(
            Value::Str("a".into()).stable_hash(HASH_SEED),
            586_962_220_959_696_054
        );
        assert_eq!(
            Value::Int(7).stable_hash(HASH_SEED),
            Value::Time(7).stable_hash(HASH_SEED)
        );
        assert_ne!(
            Value::Int(1).stable_hash(HASH_SEED),
            Value::Int(2).stable_hash(HASH_SEED)
        );
    }

    #[test]
    fn schema_resolves_names() {
        let s = Schema::new(vec![
            Field::new("a", DataType::Int),
            Field::new("b", DataType::String),
        ]);
        assert_eq!(s.index_of("b"), Some(1));
        assert_eq!(s.index_of("c"), None);
        assert_eq!(s.names(), "a, b");
    }
}
