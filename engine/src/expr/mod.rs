//! Field expressions over one row, as job files write them: `price > 1000 and auction % 123 =
//! 0`, `price * 0.908`, `lower(channel) = 'google'`.
//!
//! An expression is parsed once ([`Expr::parse`]), bound once to the schema of its input edge
//! ([`Expr::bind`], which resolves names and checks types), and then evaluated per row
//! ([`BoundExpr::eval`]) with no name lookups and no failure modes: nulls propagate as in SQL,
//! division by zero is null and integer overflow wraps.
//!
//! Grammar, loosest binding first:
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | comparison
//! comparison := additive [ cmp additive | "is" ["not"] "null" | ["not"] "in" "(" list ")" ]
//! cmp        := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
//! additive   := multiplicative (("+" | "-") multiplicative)*
//! multiplicative := unary (("*" | "/" | "%") unary)*
//! unary      := "-" unary | primary
//! primary    := int | float | 'string' | true | false | null | field | `odd field`
//!             | function "(" list ")" | "(" expr ")"
//! ```
//!
//! Keywords and function names are case-insensitive. Functions: `lower`, `upper`, `length`,
//! `concat` (skips nulls), `abs`, `floor`, `ceil`, `round(x[, digits])`, `coalesce`,
//! `if(cond, then, else)`.

mod ast;
mod bind;
mod eval;
mod lexer;
mod parser;

use std::fmt;

use crate::data::{DataType, Row, Schema, Value};
use crate::error::EngineError;

pub use ast::{BinaryOp, Function, Node};
pub use parser::MAX_DEPTH;

// The window operator reads `name = function(field)` aggregate entries with the same tokens
// and error positions as expressions.
pub(crate) use lexer::{Tok, tokenize};
pub(crate) use parser::error_at;

/// How expressions order two values (ints with floats, timestamps with ints; `None` for null,
/// NaN or types that do not compare); min/max aggregates order the same way.
pub(crate) use eval::compare as compare_values;

use bind::Bound;

/// A parsed expression, not yet tied to a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    text: String,
    root: Node,
}

impl Expr {
    /// Parses `text`. Errors name the column and the token at fault.
    pub fn parse(text: &str) -> Result<Expr, EngineError> {
        Ok(Expr {
            text: text.trim().to_string(),
            root: parser::parse(text)?,
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed tree.
    pub fn node(&self) -> &Node {
        &self.root
    }

    /// The field name when the expression is a bare field.
    pub fn field_name(&self) -> Option<&str> {
        match &self.root {
            Node::Field(name) => Some(name),
            _ => None,
        }
    }

    /// Resolves the expression's fields against `schema` and checks its types.
    ///
    /// Fails on an unknown field (listing the schema's fields), on operands or arguments of
    /// the wrong type, and on an expression that is always null (it would have no type; write
    /// `if(false, '', null)` for a null string).
    pub fn bind(&self, schema: &Schema) -> Result<BoundExpr, EngineError> {
        let (root, ty) = bind::bind(&self.text, &self.root, schema)?;
        let data_type = ty.ok_or_else(|| EngineError::Expr {
            expr: self.text.clone(),
            message: "the expression is always null, so it has no type (write e.g. \
                      `if(false, '', null)` for a null string)"
                .to_string(),
        })?;
        Ok(BoundExpr {
            text: self.text.clone(),
            root,
            data_type,
        })
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a job file's map entry: `"name = expr"`, or a bare field `"price"` that keeps its
/// name. A single `=` right after a leading name separates it (`big = price > 10` names the
/// comparison `big`); any other expression without a name is an error.
pub fn parse_named(text: &str) -> Result<(String, Expr), EngineError> {
    let (name, rest) = parser::split_named(text)?;
    Ok((name, Expr::parse(rest)?))
}

/// An expression bound to a schema, ready to evaluate against its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundExpr {
    text: String,
    root: Bound,
    data_type: DataType,
}

impl BoundExpr {
    /// The value of the expression for `row` (a row of the schema it was bound to).
    pub fn eval(&self, row: &Row) -> Value {
        eval::eval(&self.root, row).into_owned()
    }

    /// Whether a predicate holds for `row`: null (unknown) and non-bool results are false.
    pub fn eval_bool(&self, row: &Row) -> bool {
        matches!(*eval::eval(&self.root, row), Value::Bool(true))
    }

    /// The type of every non-null value [`BoundExpr::eval`] returns.
    pub fn data_type(&self) -> DataType {
        self.data_type
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The input field's position when the expression is a bare field.
    pub fn field_index(&self) -> Option<usize> {
        match self.root {
            Bound::Field(index) => Some(index),
            _ => None,
        }
    }
}

impl fmt::Display for BoundExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests;
