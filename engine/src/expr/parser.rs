//! A recursive-descent parser from tokens to [`Node`]s.
//!
//! Precedence, loosest first: `or`, `and`, `not`, comparisons (`=`, `<`, `is null`, `in`, which
//! do not chain), `+ -`, `* / %`, unary `-`. Binary operators of one level associate to the
//! left.

use crate::data::Value;
use crate::error::EngineError;

use super::ast::{BinaryOp, Function, Node};
use super::lexer::{LexError, Tok, Token, tokenize};

/// How deep an expression may nest (parentheses, operators, function calls). Far beyond what a
/// job file needs; it bounds the recursion of parsing, binding and evaluation so that no input
/// can overflow a task thread's stack.
pub const MAX_DEPTH: usize = 64;

/// Words that are never field names unless backticked.
const KEYWORDS: [&str; 8] = ["and", "or", "not", "in", "is", "null", "true", "false"];

/// Builds the error for `text` at byte `offset`, naming the column (1-based, in characters).
pub(crate) fn error_at(text: &str, offset: usize, message: impl Into<String>) -> EngineError {
    let column = text
        .get(..offset)
        .map_or(offset, |prefix| prefix.chars().count())
        + 1;
    EngineError::Expr {
        expr: text.to_string(),
        message: format!("at column {column}: {}", message.into()),
    }
}

/// Parses the whole of `text`.
pub(crate) fn parse(text: &str) -> Result<Node, EngineError> {
    let tokens = tokenize(text).map_err(|e| lex_error(text, e))?;
    let mut parser = Parser {
        text,
        tokens,
        pos: 0,
        nesting: 0,
    };
    let parsed = parser.expr()?;
    parser.expect_end()?;
    Ok(parsed.node)
}

/// Splits a job file's `name = expr` entry. A bare field (`price`) names itself. The name is
/// the entry's first word when a single `=` follows it, so `flag = a = b` names `flag` the
/// comparison `a = b`.
pub(crate) fn split_named(text: &str) -> Result<(String, &str), EngineError> {
    let tokens = tokenize(text).map_err(|e| lex_error(text, e))?;
    let name = match tokens.first().map(|t| &t.tok) {
        Some(Tok::Quoted(name)) => Some(name.clone()),
        Some(Tok::Ident(name)) if !is_keyword(name) => Some(name.clone()),
        _ => None,
    };
    if let (Some(name), Some(Token { tok: Tok::Eq, .. }), Some(rest)) =
        (name, tokens.get(1), tokens.get(2))
    {
        if rest.tok == Tok::End {
            return Err(error_at(
                text,
                rest.offset,
                "expected an expression after `=`",
            ));
        }
        return Ok((name, text.get(rest.offset..).unwrap_or("")));
    }
    match parse(text)? {
        Node::Field(name) => Ok((name, text)),
        _ => Err(EngineError::Expr {
            expr: text.to_string(),
            message: "the result needs a name: write `name = <expression>`".to_string(),
        }),
    }
}

fn lex_error(text: &str, e: LexError) -> EngineError {
    error_at(text, e.offset, e.message)
}

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// A parsed subtree and how deep it is.
struct Parsed {
    node: Node,
    depth: usize,
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    /// How many nested calls of [`Parser::expr`] / prefix operators are active.
    nesting: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        // The token list always ends with `End`, and `advance` never moves past it.
        self.tokens.get(self.pos).map_or(&Tok::End, |t| &t.tok)
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        self.tokens
            .get(self.pos + ahead)
            .map_or(&Tok::End, |t| &t.tok)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map_or(self.text.len(), |t| t.offset)
    }

    fn advance(&mut self) -> Tok {
        let tok = self.peek().clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        tok
    }

    fn error(&self, message: impl Into<String>) -> EngineError {
        error_at(self.text, self.offset(), message)
    }

    fn unexpected(&self, wanted: &str) -> EngineError {
        self.error(format!("expected {wanted}, found {}", self.peek()))
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(w) if w.eq_ignore_ascii_case(word))
    }

    fn is_word_at(&self, ahead: usize, word: &str) -> bool {
        matches!(self.peek_at(ahead), Tok::Ident(w) if w.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, tok: Tok, wanted: &str) -> Result<(), EngineError> {
        if *self.peek() == tok {
            self.advance();
            Ok(())
        } else {
            Err(self.unexpected(wanted))
        }
    }

    fn expect_end(&mut self) -> Result<(), EngineError> {
        match self.peek() {
            Tok::End => Ok(()),
            Tok::RParen => Err(self.error("`)` without a matching `(`")),
            _ => Err(self.unexpected("an operator or the end of the expression")),
        }
    }

    /// Enters one level of nesting, failing when the expression is too deep.
    fn enter(&mut self) -> Result<(), EngineError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.too_deep());
        }
        Ok(())
    }

    /// The depth of a node one level above a subtree of `depth`, if within the limit.
    fn above(&self, depth: usize) -> Result<usize, EngineError> {
        if depth >= MAX_DEPTH {
            return Err(self.too_deep());
        }
        Ok(depth + 1)
    }

    fn too_deep(&self) -> EngineError {
        self.error(format!(
            "nested too deeply (the limit is {MAX_DEPTH} levels)"
        ))
    }

    /// Combines two subtrees under a binary operator, checking the depth of the result.
    fn binary(&self, op: BinaryOp, left: Parsed, right: Parsed) -> Result<Parsed, EngineError> {
        let depth = self.above(left.depth.max(right.depth))?;
        Ok(Parsed {
            node: Node::Binary {
                op,
                left: Box::new(left.node),
                right: Box::new(right.node),
            },
            depth,
        })
    }

    fn expr(&mut self) -> Result<Parsed, EngineError> {
        self.enter()?;
        let parsed = self.or();
        self.nesting -= 1;
        parsed
    }

    fn or(&mut self) -> Result<Parsed, EngineError> {
        let mut left = self.and()?;
        while self.is_word("or") {
            self.advance();
            let right = self.and()?;
            left = self.binary(BinaryOp::Or, left, right)?;
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Parsed, EngineError> {
        let mut left = self.not()?;
        while self.is_word("and") {
            self.advance();
            let right = self.not()?;
            left = self.binary(BinaryOp::And, left, right)?;
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Parsed, EngineError> {
        if !self.is_word("not") {
            return self.comparison();
        }
        self.advance();
        self.enter()?;
        let inner = self.not();
        self.nesting -= 1;
        let inner = inner?;
        Ok(Parsed {
            node: Node::Not(Box::new(inner.node)),
            depth: self.above(inner.depth)?,
        })
    }

    fn comparison_op(&self) -> Option<BinaryOp> {
        Some(match self.peek() {
            Tok::Eq | Tok::EqEq => BinaryOp::Eq,
            Tok::Ne => BinaryOp::Ne,
            Tok::Lt => BinaryOp::Lt,
            Tok::Le => BinaryOp::Le,
            Tok::Gt => BinaryOp::Gt,
            Tok::Ge => BinaryOp::Ge,
            _ => return None,
        })
    }

    fn comparison(&mut self) -> Result<Parsed, EngineError> {
        let left = self.additive()?;
        let parsed = if let Some(op) = self.comparison_op() {
            self.advance();
            let right = self.additive()?;
            self.binary(op, left, right)?
        } else if self.is_word("is") {
            self.advance();
            let negated = self.is_word("not");
            if negated {
                self.advance();
            }
            if !self.is_word("null") {
                return Err(self.unexpected("`null` after `is`"));
            }
            self.advance();
            Parsed {
                node: Node::IsNull {
                    expr: Box::new(left.node),
                    negated,
                },
                depth: self.above(left.depth)?,
            }
        } else if self.is_word("in") || (self.is_word("not") && self.is_word_at(1, "in")) {
            let negated = self.is_word("not");
            if negated {
                self.advance();
            }
            self.advance();
            self.in_list(left, negated)?
        } else {
            return Ok(left);
        };
        if self.comparison_op().is_some() || self.is_word("is") || self.is_word("in") {
            return Err(self.error(format!(
                "comparisons do not chain: {} cannot follow a comparison; join them with `and`",
                self.peek()
            )));
        }
        Ok(parsed)
    }

    fn in_list(&mut self, left: Parsed, negated: bool) -> Result<Parsed, EngineError> {
        self.expect(Tok::LParen, "`(` after `in`")?;
        let (list, depth) = self.list("a value of the `in` list")?;
        let depth = self.above(depth.max(left.depth))?;
        Ok(Parsed {
            node: Node::InList {
                expr: Box::new(left.node),
                list,
                negated,
            },
            depth,
        })
    }

    /// Parses `a, b, c)` (the `(` already consumed); an empty list is `)` alone.
    fn list(&mut self, what: &str) -> Result<(Vec<Node>, usize), EngineError> {
        let mut items = Vec::new();
        let mut depth = 0;
        if *self.peek() == Tok::RParen {
            self.advance();
            return Ok((items, depth));
        }
        loop {
            if matches!(self.peek(), Tok::RParen | Tok::Comma | Tok::End) {
                return Err(self.unexpected(what));
            }
            let item = self.expr()?;
            depth = depth.max(item.depth);
            items.push(item.node);
            match self.peek() {
                Tok::Comma => self.advance(),
                Tok::RParen => {
                    self.advance();
                    return Ok((items, depth));
                }
                _ => return Err(self.unexpected("`,` or `)`")),
            };
        }
    }

    fn additive(&mut self) -> Result<Parsed, EngineError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinaryOp::Add,
                Tok::Minus => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.multiplicative()?;
            left = self.binary(op, left, right)?;
        }
    }

    fn multiplicative(&mut self) -> Result<Parsed, EngineError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinaryOp::Mul,
                Tok::Slash => BinaryOp::Div,
                Tok::Percent => BinaryOp::Rem,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.unary()?;
            left = self.binary(op, left, right)?;
        }
    }

    fn unary(&mut self) -> Result<Parsed, EngineError> {
        if *self.peek() != Tok::Minus {
            return self.primary();
        }
        self.advance();
        self.enter()?;
        let inner = self.unary();
        self.nesting -= 1;
        let inner = inner?;
        let node = match inner.node {
            // Fold negative literals so that they are plain values.
            Node::Literal(Value::Int(v)) => Node::Literal(Value::Int(v.wrapping_neg())),
            Node::Literal(Value::Float(v)) => Node::Literal(Value::Float(-v)),
            other => Node::Neg(Box::new(other)),
        };
        Ok(Parsed {
            node,
            depth: self.above(inner.depth)?,
        })
    }

    fn primary(&mut self) -> Result<Parsed, EngineError> {
        let offset = self.offset();
        let node = match self.peek().clone() {
            Tok::Int(v) => Node::Literal(Value::Int(v)),
            Tok::Float(v) => Node::Literal(Value::Float(v)),
            Tok::Str(s) => Node::Literal(Value::Str(s.into())),
            Tok::Quoted(name) => Node::Field(name),
            Tok::LParen => {
                self.advance();
                let inner = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                return Ok(inner);
            }
            Tok::Ident(word) => {
                self.advance();
                if *self.peek() == Tok::LParen {
                    self.advance();
                    return self.call(&word, offset);
                }
                return self.word(word, offset);
            }
            _ => return Err(self.unexpected("a value, a field or `(`")),
        };
        self.advance();
        Ok(Parsed { node, depth: 1 })
    }

    /// A bare word in value position: a literal keyword or a field name.
    fn word(&self, word: String, offset: usize) -> Result<Parsed, EngineError> {
        let node = match word.to_ascii_lowercase().as_str() {
            "true" => Node::Literal(Value::Bool(true)),
            "false" => Node::Literal(Value::Bool(false)),
            "null" => Node::Literal(Value::Null),
            _ if is_keyword(&word) => {
                return Err(error_at(
                    self.text,
                    offset,
                    format!(
                        "expected a value, found the keyword `{word}` (a field of that name \
                         must be written in backticks)"
                    ),
                ));
            }
            _ => Node::Field(word),
        };
        Ok(Parsed { node, depth: 1 })
    }

    fn call(&mut self, name: &str, offset: usize) -> Result<Parsed, EngineError> {
        let Some(function) = Function::by_name(name) else {
            return Err(error_at(
                self.text,
                offset,
                format!(
                    "unknown function `{name}` (the functions are: {})",
                    Function::names()
                ),
            ));
        };
        self.enter()?;
        let args = self.list(&format!("an argument of `{function}`"));
        self.nesting -= 1;
        let (args, depth) = args?;
        Ok(Parsed {
            node: Node::Call { function, args },
            depth: self.above(depth)?,
        })
    }
}
