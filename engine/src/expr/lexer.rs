//! Splits expression text into tokens, each with the byte offset it starts at so that errors
//! can point at it.

use std::fmt;

/// One token of an expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Int(i64),
    Float(f64),
    /// A `'single quoted'` string, with `''` already turned into `'`.
    Str(String),
    /// A bare word: a field name, a function name or a keyword (keywords are matched later,
    /// case-insensitively, so that the lexer does not need to know them).
    Ident(String),
    /// A `` `backticked` `` field name: never a keyword or a function.
    Quoted(String),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    /// `=`: equality, and the separator of `name = expr` in job files.
    Eq,
    /// `==`
    EqEq,
    /// `!=` or `<>`
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    End,
}

impl fmt::Display for Tok {
    /// How errors name a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(v) => write!(f, "number `{v}`"),
            Tok::Float(v) => write!(f, "number `{v}`"),
            Tok::Str(s) => write!(f, "string '{s}'"),
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Quoted(s) => write!(f, "field `{s}`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Plus => f.write_str("`+`"),
            Tok::Minus => f.write_str("`-`"),
            Tok::Star => f.write_str("`*`"),
            Tok::Slash => f.write_str("`/`"),
            Tok::Percent => f.write_str("`%`"),
            Tok::Eq => f.write_str("`=`"),
            Tok::EqEq => f.write_str("`==`"),
            Tok::Ne => f.write_str("`!=`"),
            Tok::Lt => f.write_str("`<`"),
            Tok::Le => f.write_str("`<=`"),
            Tok::Gt => f.write_str("`>`"),
            Tok::Ge => f.write_str("`>=`"),
            Tok::End => f.write_str("the end of the expression"),
        }
    }
}

/// A token and the byte offset in the text where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub offset: usize,
}

/// A lexing error: what is wrong, and the byte offset where.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LexError {
    pub offset: usize,
    pub message: String,
}

/// Splits `text` into tokens, ending with [`Tok::End`].
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, LexError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(offset, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let error = |message: String| LexError { offset, message };
        let tok = if c.is_ascii_digit() {
            let end = number_end(text, offset);
            let literal = &text[offset..end];
            while chars.peek().is_some_and(|&(i, _)| i < end) {
                chars.next();
            }
            number(literal).map_err(error)?
        } else if c.is_alphabetic() || c == '_' {
            let mut end = text.len();
            while let Some(&(i, c)) = chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    chars.next();
                } else {
                    end = i;
                    break;
                }
            }
            Tok::Ident(text[offset..end].to_string())
        } else if c == '\'' {
            chars.next();
            Tok::Str(
                quoted(&mut chars, '\'').ok_or_else(|| {
                    error("the string is not closed: a `'` is missing".to_string())
                })?,
            )
        } else if c == '`' {
            chars.next();
            let name = quoted(&mut chars, '`').ok_or_else(|| {
                error("the field name is not closed: a backtick is missing".to_string())
            })?;
            if name.is_empty() {
                return Err(error("empty field name ``".to_string()));
            }
            Tok::Quoted(name)
        } else {
            chars.next();
            let next = chars.peek().map(|&(_, c)| c);
            let mut two = |tok: Tok| {
                chars.next();
                tok
            };
            match (c, next) {
                ('(', _) => Tok::LParen,
                (')', _) => Tok::RParen,
                (',', _) => Tok::Comma,
                ('+', _) => Tok::Plus,
                ('-', _) => Tok::Minus,
                ('*', _) => Tok::Star,
                ('/', _) => Tok::Slash,
                ('%', _) => Tok::Percent,
                ('=', Some('=')) => two(Tok::EqEq),
                ('=', _) => Tok::Eq,
                ('!', Some('=')) => two(Tok::Ne),
                ('<', Some('>')) => two(Tok::Ne),
                ('<', Some('=')) => two(Tok::Le),
                ('<', _) => Tok::Lt,
                ('>', Some('=')) => two(Tok::Ge),
                ('>', _) => Tok::Gt,
                ('"', _) => {
                    return Err(error(
                        "`\"` is not a quote here: write strings in 'single quotes' and odd \
                         field names in `backticks`"
                            .to_string(),
                    ));
                }
                ('!', _) => return Err(error("`!` is not an operator: write `not`".to_string())),
                ('&' | '|', _) => {
                    return Err(error(format!(
                        "`{c}` is not an operator: write `and` / `or`"
                    )));
                }
                _ => return Err(error(format!("unexpected character `{c}`"))),
            }
        };
        tokens.push(Token { tok, offset });
    }
    tokens.push(Token {
        tok: Tok::End,
        offset: text.len(),
    });
    Ok(tokens)
}

/// Where the number starting at `start` ends: digits, an optional fraction, an optional
/// exponent.
fn number_end(text: &str, start: usize) -> usize {
    let bytes = text.as_bytes();
    let digits = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut end = digits(start);
    if end < bytes.len() && bytes[end] == b'.' {
        end = digits(end + 1);
    }
    if end < bytes.len() && matches!(bytes[end], b'e' | b'E') {
        let mut exp = end + 1;
        if exp < bytes.len() && matches!(bytes[exp], b'+' | b'-') {
            exp += 1;
        }
        // Only an exponent with digits belongs to the number (`2e` is `2` then a name).
        if exp < bytes.len() && bytes[exp].is_ascii_digit() {
            end = digits(exp);
        }
    }
    end
}

fn number(literal: &str) -> Result<Tok, String> {
    if literal.bytes().all(|b| b.is_ascii_digit()) {
        literal.parse::<i64>().map(Tok::Int).map_err(|_| {
            format!(
                "the integer {literal} is too large (the limit is {})",
                i64::MAX
            )
        })
    } else {
        literal
            .parse::<f64>()
            .map(Tok::Float)
            .map_err(|_| format!("`{literal}` is not a number"))
    }
}

/// Reads up to the closing `quote` (the opening one is consumed); a doubled quote stands for
/// itself. `None` when the text ends first.
fn quoted(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    quote: char,
) -> Option<String> {
    let mut value = String::new();
    while let Some((_, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|&(_, next)| next == quote) {
                chars.next();
                value.push(quote);
            } else {
                return Some(value);
            }
        } else {
            value.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        tokenize(text).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn splits_operators_numbers_and_names() {
        assert_eq!(
            toks("a<>1.5e3 and `odd name`<='it''s'"),
            vec![
                Tok::Ident("a".into()),
                Tok::Ne,
                Tok::Float(1500.0),
                Tok::Ident("and".into()),
                Tok::Quoted("odd name".into()),
                Tok::Le,
                Tok::Str("it's".into()),
                Tok::End,
            ]
        );
        assert_eq!(
            toks("x==2e"),
            vec![
                Tok::Ident("x".into()),
                Tok::EqEq,
                Tok::Int(2),
                Tok::Ident("e".into()),
                Tok::End
            ]
        );
    }

    #[test]
    fn errors_point_at_the_offset() {
        let err = tokenize("a = 'open").unwrap_err();
        assert_eq!(err.offset, 4);
        assert!(err.message.contains("not closed"), "{}", err.message);
        let err = tokenize("a = \"x\"").unwrap_err();
        assert!(err.message.contains("single quotes"), "{}", err.message);
        let err = tokenize("99999999999999999999").unwrap_err();
        assert!(err.message.contains("too large"), "{}", err.message);
        let err = tokenize("a && b").unwrap_err();
        assert_eq!(err.offset, 2);
    }
}
