//! The binary form of batches on the wire between task managers.
//!
//! ```text
//! batch   := count u32 | element*
//! element := 0 u8 | timestamp i64 | fields u16 | value*      (record)
//!          | 1 u8 | watermark i64
//!          | 2 u8 | checkpoint id u64 | is_final u8          (barrier)
//! value   := 0 (null) | 1 b u8 | 2 i64 | 3 f64 bits u64 | 4 len u32 utf8 | 5 i64 (time)
//! ```
//!
//! All integers little-endian. Decoding checks every length against what is left, so a
//! corrupt or hostile frame is an error, never a panic or an unbounded allocation.

use crate::data::{Record, Value};
use crate::error::EngineError;

use super::element::{Barrier, Batch, Element};

pub fn encode_batch(batch: &Batch, out: &mut Vec<u8>) {
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for element in batch {
        match element {
            Element::Record(r) => {
                out.push(0);
                out.extend_from_slice(&r.timestamp.to_le_bytes());
                out.extend_from_slice(&(r.row.len() as u16).to_le_bytes());
                for v in &r.row {
                    encode_value(v, out);
                }
            }
            Element::Watermark(w) => {
                out.push(1);
                out.extend_from_slice(&w.to_le_bytes());
            }
            Element::Barrier(b) => {
                out.push(2);
                out.extend_from_slice(&b.checkpoint_id.to_le_bytes());
                out.push(u8::from(b.is_final));
            }
        }
    }
}

fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(b) => {
            out.push(1);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(3);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Str(s) => {
            out.push(4);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Time(t) => {
            out.push(5);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

fn corrupt(what: &str) -> EngineError {
    EngineError::state("a network batch", format!("corrupt frame: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EngineError> {
        if self.bytes.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, EngineError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, EngineError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, EngineError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, EngineError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, EngineError> {
        Ok(self.u64()? as i64)
    }
}

pub fn decode_batch(bytes: &[u8]) -> Result<Batch, EngineError> {
    let mut r = Reader { bytes };
    let count = r.u32()? as usize;
    // Every element takes at least 9 bytes: a count beyond that is corrupt.
    if count > bytes.len() / 9 + 1 {
        return Err(corrupt("element count larger than the frame"));
    }
    let mut batch = Vec::with_capacity(count);
    for _ in 0..count {
        let element = match r.u8()? {
            0 => {
                let timestamp = r.i64()?;
                let fields = r.u16()? as usize;
                let mut row = Vec::with_capacity(fields.min(r.bytes.len()));
                for _ in 0..fields {
                    row.push(decode_value(&mut r)?);
                }
                Element::Record(Record { timestamp, row })
            }
            1 => Element::Watermark(r.i64()?),
            2 => Element::Barrier(Barrier {
                checkpoint_id: r.u64()?,
                is_final: r.u8()? != 0,
            }),
            tag => return Err(corrupt(&format!("unknown element tag {tag}"))),
        };
        batch.push(element);
    }
    if !r.bytes.is_empty() {
        return Err(corrupt("bytes after the last element"));
    }
    Ok(batch)
}

fn decode_value(r: &mut Reader<'_>) -> Result<Value, EngineError> {
    Ok(match r.u8()? {
        0 => Value::Null,
        1 => Value::Bool(r.u8()? != 0),
        2 => Value::Int(r.i64()?),
        3 => Value::Float(f64::from_bits(r.u64()?)),
        4 => {
            let len = r.u32()? as usize;
            let bytes = r.take(len)?;
            Value::Str(
                std::str::from_utf8(bytes)
                    .map_err(|_| corrupt("a string is not UTF-8"))?
                    .into(),
            )
        }
        5 => Value::Time(r.i64()?),
        tag => return Err(corrupt(&format!("unknown value tag {tag}"))),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::Float),
            ".{0,20}".prop_map(|s: String| Value::Str(s.into())),
            any::<i64>().prop_map(Value::Time),
        ]
    }

    fn element() -> impl Strategy<Value = Element> {
        prop_oneof![
            (any::<i64>(), proptest::collection::vec(value(), 0..8))
                .prop_map(|(t, row)| Element::Record(Record::new(t, row))),
            any::<i64>().prop_map(Element::Watermark),
            (any::<u64>(), any::<bool>()).prop_map(|(id, f)| Element::Barrier(Barrier {
                checkpoint_id: id,
                is_final: f
            })),
        ]
    }

    proptest! {
        #[test]
        fn batches_round_trip(batch in proptest::collection::vec(element(), 0..20)) {
            let mut bytes = Vec::new();
            encode_batch(&batch, &mut bytes);
            prop_assert_eq!(decode_batch(&bytes).unwrap(), batch);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&bytes);
        }
    }
}
