//! Evaluation of a bound expression against one row.
//!
//! Values are borrowed from the row or the expression where possible (a field compared with a
//! literal allocates nothing). Every operation is total: a value of an unexpected type (which
//! binding rules out for rows that match their schema), a division by zero or a NaN
//! comparison gives null, and integer overflow wraps, so no row can make a task panic.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::data::{Row, Value};
use crate::format::format_timestamp;

use super::ast::{BinaryOp, Function};
use super::bind::Bound;

const NULL: Value = Value::Null;

pub(crate) fn eval<'a>(node: &'a Bound, row: &'a Row) -> Cow<'a, Value> {
    match node {
        Bound::Literal(value) => Cow::Borrowed(value),
        Bound::Field(index) => Cow::Borrowed(row.get(*index).unwrap_or(&NULL)),
        Bound::Neg(inner) => Cow::Owned(match eval(inner, row).as_ref() {
            Value::Int(v) => Value::Int(v.wrapping_neg()),
            Value::Float(v) => Value::Float(-v),
            _ => Value::Null,
        }),
        Bound::Not(inner) => Cow::Owned(match eval(inner, row).as_ref() {
            Value::Bool(v) => Value::Bool(!v),
            _ => Value::Null,
        }),
        Bound::Binary { op, left, right } => Cow::Owned(binary(*op, left, right, row)),
        Bound::IsNull { expr, negated } => {
            Cow::Owned(Value::Bool(eval(expr, row).is_null() != *negated))
        }
        Bound::InList {
            expr,
            list,
            negated,
        } => Cow::Owned(in_list(expr, list, *negated, row)),
        Bound::Call { function, args } => call(*function, args, row),
        Bound::ToFloat(inner) => {
            let value = eval(inner, row);
            if let Value::Int(v) = *value {
                return Cow::Owned(Value::Float(v as f64));
            }
            value
        }
    }
}

/// SQL's three-valued logic as `Option<bool>`: `None` is unknown (null).
fn truth(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(v) => Some(*v),
        _ => None,
    }
}

fn binary(op: BinaryOp, left: &Bound, right: &Bound, row: &Row) -> Value {
    match op {
        // `and`/`or` skip the right side when the left decides the result.
        BinaryOp::And => {
            let l = truth(&eval(left, row));
            if l == Some(false) {
                return Value::Bool(false);
            }
            match (l, truth(&eval(right, row))) {
                (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Null,
            }
        }
        BinaryOp::Or => {
            let l = truth(&eval(left, row));
            if l == Some(true) {
                return Value::Bool(true);
            }
            match (l, truth(&eval(right, row))) {
                (_, Some(true)) => Value::Bool(true),
                (Some(false), Some(false)) => Value::Bool(false),
                _ => Value::Null,
            }
        }
        _ => {
            let l = eval(left, row);
            let r = eval(right, row);
            if op.is_comparison() {
                compare_with(op, &l, &r)
            } else {
                arithmetic(op, &l, &r)
            }
        }
    }
}

/// Orders two values of comparable types; `None` when either is null, the types do not
/// compare, or a float is NaN. Ints and timestamps compare as integers; ints with floats as
/// floats.
pub(crate) fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::Int(l) | Value::Time(l), Value::Int(r) | Value::Time(r)) => Some(l.cmp(r)),
        (Value::Float(l), Value::Float(r)) => l.partial_cmp(r),
        (Value::Int(l), Value::Float(r)) => (*l as f64).partial_cmp(r),
        (Value::Float(l), Value::Int(r)) => l.partial_cmp(&(*r as f64)),
        (Value::Str(l), Value::Str(r)) => Some(l.cmp(r)),
        (Value::Bool(l), Value::Bool(r)) => Some(l.cmp(r)),
        _ => None,
    }
}

fn compare_with(op: BinaryOp, left: &Value, right: &Value) -> Value {
    let Some(ordering) = compare(left, right) else {
        return Value::Null;
    };
    Value::Bool(match op {
        BinaryOp::Eq => ordering == Ordering::Equal,
        BinaryOp::Ne => ordering != Ordering::Equal,
        BinaryOp::Lt => ordering == Ordering::Less,
        BinaryOp::Le => ordering != Ordering::Greater,
        BinaryOp::Gt => ordering == Ordering::Greater,
        BinaryOp::Ge => ordering != Ordering::Less,
        _ => return Value::Null,
    })
}

fn arithmetic(op: BinaryOp, left: &Value, right: &Value) -> Value {
    match (left, right) {
        (Value::Int(l), Value::Int(r)) => {
            int_arithmetic(op, *l, *r).map_or(Value::Null, Value::Int)
        }
        (Value::Time(l), Value::Int(r)) => match op {
            BinaryOp::Add => Value::Time(l.wrapping_add(*r)),
            BinaryOp::Sub => Value::Time(l.wrapping_sub(*r)),
            _ => Value::Null,
        },
        (Value::Int(l), Value::Time(r)) if op == BinaryOp::Add => Value::Time(l.wrapping_add(*r)),
        (Value::Time(l), Value::Time(r)) if op == BinaryOp::Sub => Value::Int(l.wrapping_sub(*r)),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            match (left.as_f64(), right.as_f64()) {
                (Some(l), Some(r)) => float_arithmetic(op, l, r).map_or(Value::Null, Value::Float),
                _ => Value::Null,
            }
        }
        _ => Value::Null,
    }
}

fn int_arithmetic(op: BinaryOp, l: i64, r: i64) -> Option<i64> {
    Some(match op {
        BinaryOp::Add => l.wrapping_add(r),
        BinaryOp::Sub => l.wrapping_sub(r),
        BinaryOp::Mul => l.wrapping_mul(r),
        // Division by zero is null; `i64::MIN / -1` wraps instead of trapping.
        BinaryOp::Div if r == 0 => return None,
        BinaryOp::Div => l.wrapping_div(r),
        BinaryOp::Rem if r == 0 => return None,
        BinaryOp::Rem => l.wrapping_rem(r),
        _ => return None,
    })
}

fn float_arithmetic(op: BinaryOp, l: f64, r: f64) -> Option<f64> {
    Some(match op {
        BinaryOp::Add => l + r,
        BinaryOp::Sub => l - r,
        BinaryOp::Mul => l * r,
        BinaryOp::Div | BinaryOp::Rem if r == 0.0 => return None,
        BinaryOp::Div => l / r,
        BinaryOp::Rem => l % r,
        _ => return None,
    })
}

fn in_list(expr: &Bound, list: &[Bound], negated: bool, row: &Row) -> Value {
    let value = eval(expr, row);
    if value.is_null() {
        return Value::Null;
    }
    // SQL: true if any item equals; otherwise unknown if any item is null; otherwise false.
    let mut unknown = false;
    for item in list {
        match compare(&value, &eval(item, row)) {
            Some(Ordering::Equal) => return Value::Bool(!negated),
            Some(_) => {}
            None => unknown = true,
        }
    }
    if unknown {
        Value::Null
    } else {
        Value::Bool(negated)
    }
}

fn call<'a>(function: Function, args: &'a [Bound], row: &'a Row) -> Cow<'a, Value> {
    let arg = |i: usize| args.get(i).map_or(Cow::Borrowed(&NULL), |a| eval(a, row));
    let owned = Cow::Owned;
    match function {
        Function::Lower => owned(match arg(0).as_ref() {
            Value::Str(s) => Value::Str(s.to_lowercase().into()),
            _ => Value::Null,
        }),
        Function::Upper => owned(match arg(0).as_ref() {
            Value::Str(s) => Value::Str(s.to_uppercase().into()),
            _ => Value::Null,
        }),
        Function::Length => owned(match arg(0).as_ref() {
            Value::Str(s) => Value::Int(i64::try_from(s.chars().count()).unwrap_or(i64::MAX)),
            _ => Value::Null,
        }),
        Function::Concat => {
            // Like PostgreSQL's concat: nulls are skipped rather than nulling the result.
            let mut text = String::new();
            for a in args {
                append_text(&eval(a, row), &mut text);
            }
            owned(Value::Str(text.into()))
        }
        Function::Abs => owned(match arg(0).as_ref() {
            Value::Int(v) => Value::Int(v.wrapping_abs()),
            Value::Float(v) => Value::Float(v.abs()),
            _ => Value::Null,
        }),
        Function::Floor | Function::Ceil => {
            let value = arg(0);
            match *value {
                Value::Float(v) if function == Function::Floor => owned(Value::Float(v.floor())),
                Value::Float(v) => owned(Value::Float(v.ceil())),
                // Ints are whole already.
                Value::Int(_) => value,
                _ => owned(Value::Null),
            }
        }
        Function::Round => {
            let digits = if args.len() > 1 {
                match arg(1).as_ref() {
                    Value::Int(d) => *d,
                    _ => return owned(Value::Null),
                }
            } else {
                0
            };
            owned(round(arg(0).as_ref(), digits))
        }
        Function::Coalesce => args
            .iter()
            .map(|a| eval(a, row))
            .find(|v| !v.is_null())
            .unwrap_or(Cow::Borrowed(&NULL)),
        Function::If => {
            if truth(&arg(0)) == Some(true) {
                arg(1)
            } else {
                arg(2)
            }
        }
    }
}

/// Rounds half away from zero to `digits` decimal places (negative: to tens, hundreds, ...).
fn round(value: &Value, digits: i64) -> Value {
    match value {
        Value::Float(v) => {
            // Beyond ±308 digits the scale is not a finite float; rounding there is a no-op
            // (or rounds everything to zero), which the clamp preserves.
            let scale = 10f64.powi(digits.clamp(-308, 308) as i32);
            let rounded = (v * scale).round() / scale;
            Value::Float(if rounded.is_finite() { rounded } else { *v })
        }
        Value::Int(v) if digits >= 0 => Value::Int(*v),
        Value::Int(v) => {
            let Some(scale) = u32::try_from(-digits)
                .ok()
                .and_then(|d| 10i64.checked_pow(d))
            else {
                // Rounding to more digits than an int has gives zero.
                return Value::Int(0);
            };
            let half = scale / 2;
            let rem = v % scale;
            let down = v - rem;
            Value::Int(if rem >= half {
                down.wrapping_add(scale)
            } else if rem <= -half {
                down.wrapping_sub(scale)
            } else {
                down
            })
        }
        _ => Value::Null,
    }
}

fn append_text(value: &Value, out: &mut String) {
    use std::fmt::Write as _;
    match value {
        Value::Null => {}
        Value::Str(s) => out.push_str(s),
        // As the file formats write them.
        Value::Time(t) => out.push_str(&format_timestamp(*t)),
        other => {
            let _ = write!(out, "{other}");
        }
    }
}
