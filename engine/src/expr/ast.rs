//! The parsed form of an expression, before it is bound to a schema.

use std::fmt;

use crate::data::Value;

/// A node of a parsed expression. Field names are still names here; binding resolves them to
/// positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Literal(Value),
    Field(String),
    /// Unary minus.
    Neg(Box<Node>),
    Not(Box<Node>),
    Binary {
        op: BinaryOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    /// `expr is null`, or `expr is not null` when `negated`.
    IsNull {
        expr: Box<Node>,
        negated: bool,
    },
    /// `expr in (list)`, or `expr not in (list)` when `negated`.
    InList {
        expr: Box<Node>,
        list: Vec<Node>,
        negated: bool,
    },
    Call {
        function: Function,
        args: Vec<Node>,
    },
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Eq => "=",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }

    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem
        )
    }
}

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Lower,
    Upper,
    Length,
    Concat,
    Abs,
    Floor,
    Ceil,
    Round,
    Coalesce,
    If,
}

impl Function {
    pub const ALL: [Function; 10] = [
        Function::Lower,
        Function::Upper,
        Function::Length,
        Function::Concat,
        Function::Abs,
        Function::Floor,
        Function::Ceil,
        Function::Round,
        Function::Coalesce,
        Function::If,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Function::Lower => "lower",
            Function::Upper => "upper",
            Function::Length => "length",
            Function::Concat => "concat",
            Function::Abs => "abs",
            Function::Floor => "floor",
            Function::Ceil => "ceil",
            Function::Round => "round",
            Function::Coalesce => "coalesce",
            Function::If => "if",
        }
    }

    /// The function called `name`, in any case.
    pub fn by_name(name: &str) -> Option<Function> {
        Function::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// The names of all functions, comma separated, for error messages.
    pub fn names() -> String {
        let names: Vec<&str> = Function::ALL.iter().map(|f| f.name()).collect();
        names.join(", ")
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
