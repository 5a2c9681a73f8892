//! Binding: resolves field names to positions in a schema and checks types, once per job, so
//! that evaluation is indexing and matching on values.

use crate::data::{DataType, Schema, Value};
use crate::error::EngineError;

use super::ast::{BinaryOp, Function, Node};

/// A node of a bound expression: fields are positions, functions are checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bound {
    Literal(Value),
    Field(usize),
    Neg(Box<Bound>),
    Not(Box<Bound>),
    Binary {
        op: BinaryOp,
        left: Box<Bound>,
        right: Box<Bound>,
    },
    IsNull {
        expr: Box<Bound>,
        negated: bool,
    },
    InList {
        expr: Box<Bound>,
        list: Vec<Bound>,
        negated: bool,
    },
    Call {
        function: Function,
        args: Vec<Bound>,
    },
    /// Widens an int to a float where branches of `if`/`coalesce` mix the two, so that every
    /// value of the result has the result's type.
    ToFloat(Box<Bound>),
}

/// The static type of a subexpression; `None` for one that is always null (the `null`
/// literal), which fits anywhere.
pub(crate) type Ty = Option<DataType>;

/// Binds `node` (parsed from `text`) against `schema`.
pub(crate) fn bind(text: &str, node: &Node, schema: &Schema) -> Result<(Bound, Ty), EngineError> {
    Binder { text, schema }.bind(node)
}

struct Binder<'a> {
    text: &'a str,
    schema: &'a Schema,
}

/// The type with its article, for messages: "an int", "a string".
fn type_name(ty: Ty) -> &'static str {
    match ty {
        None => "null",
        Some(DataType::Bool) => "a bool",
        Some(DataType::Int) => "an int",
        Some(DataType::Float) => "a float",
        Some(DataType::String) => "a string",
        Some(DataType::Timestamp) => "a timestamp",
    }
}

fn is_numeric(ty: Ty) -> bool {
    matches!(ty, None | Some(DataType::Int | DataType::Float))
}

impl Binder<'_> {
    fn error(&self, message: impl Into<String>) -> EngineError {
        EngineError::Expr {
            expr: self.text.to_string(),
            message: message.into(),
        }
    }

    fn bind(&self, node: &Node) -> Result<(Bound, Ty), EngineError> {
        Ok(match node {
            Node::Literal(value) => (Bound::Literal(value.clone()), value.data_type()),
            Node::Field(name) => {
                let index = self.schema.index_of(name).ok_or_else(|| {
                    self.error(format!(
                        "unknown field `{name}` (the fields are: {})",
                        self.schema.names()
                    ))
                })?;
                (
                    Bound::Field(index),
                    Some(self.schema.field(index).data_type),
                )
            }
            Node::Neg(inner) => {
                let (inner, ty) = self.bind(inner)?;
                if !is_numeric(ty) {
                    return Err(self.error(format!("cannot negate {}", type_name(ty))));
                }
                (Bound::Neg(Box::new(inner)), ty)
            }
            Node::Not(inner) => {
                let (inner, ty) = self.bind(inner)?;
                self.expect_bool(ty, "`not`")?;
                (Bound::Not(Box::new(inner)), Some(DataType::Bool))
            }
            Node::Binary { op, left, right } => {
                let (left, lt) = self.bind(left)?;
                let (right, rt) = self.bind(right)?;
                let ty = self.binary_type(*op, lt, rt)?;
                (
                    Bound::Binary {
                        op: *op,
                        left: Box::new(left),
                        right: Box::new(right),
                    },
                    ty,
                )
            }
            Node::IsNull { expr, negated } => {
                let (expr, _) = self.bind(expr)?;
                (
                    Bound::IsNull {
                        expr: Box::new(expr),
                        negated: *negated,
                    },
                    Some(DataType::Bool),
                )
            }
            Node::InList {
                expr,
                list,
                negated,
            } => {
                let (expr, ty) = self.bind(expr)?;
                let mut bound = Vec::with_capacity(list.len());
                for item in list {
                    let (item, item_ty) = self.bind(item)?;
                    self.comparable(ty, item_ty, "`in`")?;
                    bound.push(item);
                }
                (
                    Bound::InList {
                        expr: Box::new(expr),
                        list: bound,
                        negated: *negated,
                    },
                    Some(DataType::Bool),
                )
            }
            Node::Call { function, args } => self.call(*function, args)?,
        })
    }

    fn expect_bool(&self, ty: Ty, what: &str) -> Result<(), EngineError> {
        match ty {
            None | Some(DataType::Bool) => Ok(()),
            Some(other) => Err(self.error(format!(
                "{what} needs a bool, not {}",
                type_name(Some(other))
            ))),
        }
    }

    fn comparable(&self, left: Ty, right: Ty, what: &str) -> Result<(), EngineError> {
        use DataType::*;
        let ok = match (left, right) {
            (None, _) | (_, None) => true,
            (Some(l), Some(r)) => {
                l == r
                    || matches!(
                        (l, r),
                        (Int, Float) | (Float, Int) | (Int, Timestamp) | (Timestamp, Int)
                    )
            }
        };
        if ok {
            Ok(())
        } else {
            Err(self.error(format!(
                "{what} cannot compare {} with {}",
                type_name(left),
                type_name(right)
            )))
        }
    }

    fn binary_type(&self, op: BinaryOp, left: Ty, right: Ty) -> Result<Ty, EngineError> {
        use DataType::*;
        let symbol = op.symbol();
        if op.is_comparison() {
            self.comparable(left, right, &format!("`{symbol}`"))?;
            return Ok(Some(Bool));
        }
        if matches!(op, BinaryOp::And | BinaryOp::Or) {
            self.expect_bool(left, &format!("`{symbol}`"))?;
            self.expect_bool(right, &format!("`{symbol}`"))?;
            return Ok(Some(Bool));
        }
        let add_or_sub = matches!(op, BinaryOp::Add | BinaryOp::Sub);
        let ty = match (left, right) {
            (None, None) => None,
            (None, Some(t)) | (Some(t), None)
                if matches!(t, Int | Float) || (add_or_sub && t == Timestamp) =>
            {
                Some(t)
            }
            (Some(Int), Some(Int)) => Some(Int),
            (Some(Int | Float), Some(Int | Float)) => Some(Float),
            (Some(Timestamp), Some(Int)) if add_or_sub => Some(Timestamp),
            (Some(Int), Some(Timestamp)) if op == BinaryOp::Add => Some(Timestamp),
            (Some(Timestamp), Some(Timestamp)) if op == BinaryOp::Sub => Some(Int),
            _ => {
                let hint = if left == Some(String) || right == Some(String) {
                    " (join strings with concat())"
                } else {
                    ""
                };
                return Err(self.error(format!(
                    "cannot apply `{symbol}` to {} and {}{hint}",
                    type_name(left),
                    type_name(right)
                )));
            }
        };
        Ok(ty)
    }

    fn arity(&self, function: Function, args: &[Node]) -> Result<(), EngineError> {
        let (min, max) = match function {
            Function::Lower
            | Function::Upper
            | Function::Length
            | Function::Abs
            | Function::Floor
            | Function::Ceil => (1, 1),
            Function::Round => (1, 2),
            Function::Concat | Function::Coalesce => (1, usize::MAX),
            Function::If => (3, 3),
        };
        if (min..=max).contains(&args.len()) {
            return Ok(());
        }
        let wanted = match (min, max) {
            (1, 1) => "1 argument".to_string(),
            (min, max) if min == max => format!("{min} arguments"),
            (min, usize::MAX) => format!("at least {min} argument"),
            (min, max) => format!("{min} or {max} arguments"),
        };
        Err(self.error(format!("{function}() takes {wanted}, not {}", args.len())))
    }

    fn call(&self, function: Function, args: &[Node]) -> Result<(Bound, Ty), EngineError> {
        use DataType::*;
        self.arity(function, args)?;
        let mut bound = Vec::with_capacity(args.len());
        let mut types = Vec::with_capacity(args.len());
        for arg in args {
            let (arg, ty) = self.bind(arg)?;
            bound.push(arg);
            types.push(ty);
        }
        let wrong = |index: usize, wanted: &str| {
            self.error(format!(
                "{function}() needs {wanted} as argument {}, not {}",
                index + 1,
                type_name(types[index])
            ))
        };
        let ty = match function {
            Function::Lower | Function::Upper | Function::Length => {
                if !matches!(types[0], None | Some(String)) {
                    return Err(wrong(0, "a string"));
                }
                Some(if function == Function::Length {
                    Int
                } else {
                    String
                })
            }
            Function::Concat => Some(String),
            Function::Abs | Function::Floor | Function::Ceil | Function::Round => {
                if !is_numeric(types[0]) {
                    return Err(wrong(0, "a number"));
                }
                if types.len() == 2 && !matches!(types[1], None | Some(Int)) {
                    return Err(wrong(1, "an int (the digits to keep)"));
                }
                types[0]
            }
            Function::Coalesce => self.unify(function, &mut bound, &types)?,
            Function::If => {
                if !matches!(types[0], None | Some(Bool)) {
                    return Err(wrong(0, "a bool"));
                }
                self.unify(function, &mut bound[1..], &types[1..])?
            }
        };
        Ok((
            Bound::Call {
                function,
                args: bound,
            },
            ty,
        ))
    }

    /// The common type of alternative results (`if` branches, `coalesce` arguments): all the
    /// same, except that ints mix with floats (and are widened) and null fits anything.
    fn unify(
        &self,
        function: Function,
        args: &mut [Bound],
        types: &[Ty],
    ) -> Result<Ty, EngineError> {
        let mut common: Ty = None;
        for ty in types.iter().flatten() {
            common = match (common, *ty) {
                (None, t) => Some(t),
                (Some(c), t) if c == t => Some(c),
                (Some(DataType::Int), DataType::Float) | (Some(DataType::Float), DataType::Int) => {
                    Some(DataType::Float)
                }
                (Some(c), t) => {
                    return Err(self.error(format!(
                        "the results of {function}() have different types: {c} and {t}"
                    )));
                }
            };
        }
        if common == Some(DataType::Float) {
            for (arg, ty) in args.iter_mut().zip(types) {
                if *ty == Some(DataType::Int) {
                    let inner = std::mem::replace(arg, Bound::Literal(Value::Null));
                    *arg = Bound::ToFloat(Box::new(inner));
                }
            }
        }
        Ok(common)
    }
}
