//! `map`/`project`: replaces each row with a list of named expressions over it.

use crate::data::{Field, Record, Schema};
use crate::error::EngineError;
use crate::expr::BoundExpr;
use crate::operator::{Operator, Output};

/// Emits, for each record, a row of exactly the listed expressions' values, with the record's
/// timestamp.
pub struct ProjectOperator {
    columns: Vec<BoundExpr>,
    schema: Schema,
}

impl ProjectOperator {
    /// `columns` are the output fields in order: a name and its expression. Fails on no
    /// columns or a repeated name.
    pub fn new(columns: Vec<(String, BoundExpr)>) -> Result<Self, EngineError> {
        if columns.is_empty() {
            return Err(EngineError::job("map", "no output fields are listed"));
        }
        let mut fields: Vec<Field> = Vec::with_capacity(columns.len());
        let mut exprs = Vec::with_capacity(columns.len());
        for (name, expr) in columns {
            if fields.iter().any(|f| f.name == name) {
                return Err(EngineError::Expr {
                    expr: expr.text().to_string(),
                    message: format!("the output field `{name}` is listed twice"),
                });
            }
            fields.push(Field::new(name, expr.data_type()));
            exprs.push(expr);
        }
        Ok(ProjectOperator {
            columns: exprs,
            schema: Schema::new(fields),
        })
    }

    /// The schema of the emitted rows: one field per listed expression, with its type.
    pub fn output_schema(&self) -> Schema {
        self.schema.clone()
    }
}

impl Operator for ProjectOperator {
    fn process(&mut self, record: Record, out: &mut dyn Output) -> Result<(), EngineError> {
        let row = self.columns.iter().map(|c| c.eval(&record.row)).collect();
        out.emit(Record::new(record.timestamp, row))
    }
}
