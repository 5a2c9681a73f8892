//! `filter`: keeps the records for which a predicate is true.

use crate::data::{DataType, Record};
use crate::error::EngineError;
use crate::expr::BoundExpr;
use crate::operator::{Operator, Output};

/// Passes on the records whose row makes the predicate true; null (unknown) drops the record,
/// as SQL's `WHERE` does.
pub struct FilterOperator {
    predicate: BoundExpr,
}

impl FilterOperator {
    /// Fails when `predicate` is not a bool expression.
    pub fn new(predicate: BoundExpr) -> Result<Self, EngineError> {
        if predicate.data_type() != DataType::Bool {
            return Err(EngineError::Expr {
                expr: predicate.text().to_string(),
                message: format!(
                    "a filter needs a true/false condition, but this is a {}",
                    predicate.data_type()
                ),
            });
        }
        Ok(FilterOperator { predicate })
    }
}

impl Operator for FilterOperator {
    fn process(&mut self, record: Record, out: &mut dyn Output) -> Result<(), EngineError> {
        if self.predicate.eval_bool(&record.row) {
            out.emit(record)?;
        }
        Ok(())
    }
}
