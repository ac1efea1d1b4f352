//! The `read` expression: its syntax tree and a hand-written
//! recursive-descent parser.
//!
//! Grammar (keywords `AND`, `OR`, `IN`, `true`, `false`, `auth` are
//! case-insensitive):
//!
//! ```text
//! expr    := and ( OR and )*
//! and     := primary ( AND primary )*
//! primary := '(' expr ')' | true | atom
//! atom    := column '=' value | column IN claim
//! value   := claim | 'string' | number | true | false
//! claim   := auth '.' name ( '.' name )*
//! column  := name | "quoted name"
//! ```
//!
//! An unquoted column name is folded to lower case (as SQL does); a
//! double-quoted one is taken as is. A string literal is single-quoted with
//! `''` for a quote. Invariant: every error carries the 1-based character
//! offset (within the expression) of where parsing failed.

use std::fmt;

/// The right-hand side of `=`, or of `IN` (always a claim).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// `auth.a.b` → `["a", "b"]`.
    Claim(Vec<String>),
    /// A literal, already in its text form (the column's text output it
    /// equals): a string as is, a number in its JSON form, `t`/`f`.
    Literal(String),
}

/// A parsed `read` expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    True,
    Eq { column: String, value: Value },
    In { column: String, claim: Vec<String> },
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    /// Column names the expression compares, in first-use order, without
    /// duplicates.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.walk(&mut |e| {
            let c = match e {
                Expr::Eq { column, .. } | Expr::In { column, .. } => column.as_str(),
                _ => return,
            };
            if !out.contains(&c) {
                out.push(c);
            }
        });
        out
    }

    /// Claim paths the expression uses.
    pub fn claims(&self) -> Vec<&[String]> {
        let mut out: Vec<&[String]> = Vec::new();
        self.walk(&mut |e| {
            let p = match e {
                Expr::Eq {
                    value: Value::Claim(p),
                    ..
                } => p.as_slice(),
                Expr::In { claim, .. } => claim.as_slice(),
                _ => return,
            };
            if !out.contains(&p) {
                out.push(p);
            }
        });
        out
    }

    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        f(self);
        if let Expr::And(v) | Expr::Or(v) = self {
            for e in v {
                e.walk(f);
            }
        }
    }
}

fn fmt_ident(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c == '_' || c == '$' || c.is_ascii_lowercase() || c.is_ascii_digit())
        && !is_keyword(s);
    if plain {
        f.write_str(s)
    } else {
        write!(f, "\"{}\"", s.replace('"', "\"\""))
    }
}

fn is_keyword(s: &str) -> bool {
    ["and", "or", "in", "true", "false", "auth"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(s))
}

/// The canonical text of an expression (used for the rules' version).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::True => f.write_str("true"),
            Expr::Eq { column, value } => {
                fmt_ident(f, column)?;
                f.write_str(" = ")?;
                match value {
                    Value::Claim(p) => write!(f, "auth.{}", p.join(".")),
                    Value::Literal(s) => write!(f, "'{}'", s.replace('\'', "''")),
                }
            }
            Expr::In { column, claim } => {
                fmt_ident(f, column)?;
                write!(f, " IN auth.{}", claim.join("."))
            }
            Expr::And(v) | Expr::Or(v) => {
                let op = if matches!(self, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                f.write_str("(")?;
                for (i, e) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// A syntax error at `offset` (0-based char index into the expression).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Str(String),
    Num(String),
    LParen,
    RParen,
    Eq,
    Dot,
    End,
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            offset: at,
            message: message.into(),
        })
    }

    /// Next token and its start offset.
    fn next(&mut self) -> Result<(Tok, usize), ParseError> {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = self.chars.get(self.pos) else {
            return Ok((Tok::End, start));
        };
        self.pos += 1;
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '=' => Tok::Eq,
            '.' => Tok::Dot,
            '\'' => Tok::Str(self.quoted('\'', start, "string")?),
            '"' => {
                let s = self.quoted('"', start, "quoted column name")?;
                if s.is_empty() {
                    return self.err(start, "empty quoted column name");
                }
                Tok::Quoted(s)
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut s = String::from(c);
                while let Some(&d) = self.chars.get(self.pos) {
                    if d.is_ascii_alphanumeric() || d == '.' || d == '+' || d == '-' {
                        s.push(d);
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                match serde_json::from_str::<serde_json::Number>(&s) {
                    Ok(n) => Tok::Num(n.to_string()),
                    Err(_) => return self.err(start, format!("{s:?} is not a number")),
                }
            }
            c if c == '_' || c.is_alphabetic() => {
                let mut s = String::from(c);
                while let Some(&d) = self.chars.get(self.pos) {
                    if d == '_' || d == '$' || d.is_alphanumeric() {
                        s.push(d);
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                Tok::Ident(s)
            }
            other => return self.err(start, format!("unexpected character {other:?}")),
        };
        Ok((tok, start))
    }

    fn quoted(&mut self, q: char, start: usize, what: &str) -> Result<String, ParseError> {
        let mut s = String::new();
        loop {
            match self.chars.get(self.pos) {
                None => return self.err(start, format!("unterminated {what}")),
                Some(&c) if c == q => {
                    if self.chars.get(self.pos + 1) == Some(&q) {
                        s.push(q);
                        self.pos += 2;
                    } else {
                        self.pos += 1;
                        return Ok(s);
                    }
                }
                Some(&c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

struct Parser {
    lex: Lexer,
    tok: Tok,
    at: usize,
    depth: usize,
}

/// Deepest nesting of parentheses accepted (keeps recursion bounded).
const MAX_DEPTH: usize = 64;

/// Parses a `read` expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let mut lex = Lexer {
        chars: src.chars().collect(),
        pos: 0,
    };
    let (tok, at) = lex.next()?;
    let mut p = Parser {
        lex,
        tok,
        at,
        depth: 0,
    };
    if p.tok == Tok::End {
        return p.err("empty expression (write `true` to let everyone read the table)");
    }
    let e = p.or()?;
    if p.tok != Tok::End {
        return p.err(format!(
            "expected AND, OR or the end, found {}",
            p.describe()
        ));
    }
    Ok(e)
}

impl Parser {
    fn bump(&mut self) -> Result<(), ParseError> {
        let (t, at) = self.lex.next()?;
        self.tok = t;
        self.at = at;
        Ok(())
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            offset: self.at,
            message: message.into(),
        })
    }

    fn describe(&self) -> String {
        match &self.tok {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Quoted(s) => format!("\"{s}\""),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Num(n) => format!("number {n}"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Eq => "'='".into(),
            Tok::Dot => "'.'".into(),
            Tok::End => "the end of the expression".into(),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.and()?];
        while self.is_kw("or") {
            self.bump()?;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::Or(v)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut v = vec![self.primary()?];
        while self.is_kw("and") {
            self.bump()?;
            v.push(self.primary()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Expr::And(v)
        })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        if self.tok == Tok::LParen {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return self.err(format!("parentheses nested deeper than {MAX_DEPTH}"));
            }
            self.bump()?;
            let e = self.or()?;
            if self.tok != Tok::RParen {
                return self.err(format!("expected ')', found {}", self.describe()));
            }
            self.depth -= 1;
            self.bump()?;
            return Ok(e);
        }
        if self.is_kw("true") {
            self.bump()?;
            return Ok(Expr::True);
        }
        let column = match &self.tok {
            Tok::Ident(s) if !is_keyword(s) => s.to_lowercase(),
            Tok::Quoted(s) => s.clone(),
            _ => {
                return self.err(format!(
                    "expected a column name, `true` or '(', found {}",
                    self.describe()
                ))
            }
        };
        self.bump()?;
        if self.is_kw("in") {
            self.bump()?;
            if !self.is_kw("auth") {
                return self.err(format!(
                    "IN takes a claim (auth.<claim>, a JSON array), found {}",
                    self.describe()
                ));
            }
            let claim = self.claim()?;
            return Ok(Expr::In { column, claim });
        }
        if self.tok != Tok::Eq {
            return self.err(format!(
                "expected '=' or IN after column {column:?}, found {}",
                self.describe()
            ));
        }
        self.bump()?;
        let value = match &self.tok {
            // After '=' a double-quoted token is a string too (the contract's
            // "a quoted string"); only a column may be a quoted identifier.
            Tok::Str(s) | Tok::Quoted(s) => {
                let v = Value::Literal(s.clone());
                self.bump()?;
                v
            }
            Tok::Num(n) => {
                let v = Value::Literal(n.clone());
                self.bump()?;
                v
            }
            _ if self.is_kw("true") => {
                self.bump()?;
                Value::Literal("t".into())
            }
            _ if self.is_kw("false") => {
                self.bump()?;
                Value::Literal("f".into())
            }
            _ if self.is_kw("auth") => Value::Claim(self.claim()?),
            _ => {
                return self.err(format!(
                    "expected auth.<claim>, a 'string', a number, true or false, found {}",
                    self.describe()
                ))
            }
        };
        Ok(Expr::Eq { column, value })
    }

    /// `auth . name ( . name )*`, at `auth`.
    fn claim(&mut self) -> Result<Vec<String>, ParseError> {
        self.bump()?;
        let mut path = Vec::new();
        loop {
            if self.tok != Tok::Dot {
                if path.is_empty() {
                    return self.err(format!(
                        "expected '.' after auth (auth.<claim>), found {}",
                        self.describe()
                    ));
                }
                return Ok(path);
            }
            self.bump()?;
            match &self.tok {
                Tok::Ident(s) => path.push(s.clone()),
                Tok::Quoted(s) => path.push(s.clone()),
                _ => return self.err(format!("expected a claim name, found {}", self.describe())),
            }
            self.bump()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq_claim(c: &str, p: &[&str]) -> Expr {
        Expr::Eq {
            column: c.into(),
            value: Value::Claim(p.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_string_may_be_single_or_double_quoted() {
        let want = Expr::Eq {
            column: "kind".into(),
            value: Value::Literal("public".into()),
        };
        assert_eq!(parse("kind = 'public'").unwrap(), want);
        assert_eq!(parse(r#"kind = "public""#).unwrap(), want);
        // A double-quoted column keeps its case.
        assert_eq!(
            parse(r#""Kind" = "it""s""#).unwrap(),
            Expr::Eq {
                column: "Kind".into(),
                value: Value::Literal("it\"s".into()),
            }
        );
    }

    #[test]
    fn parses_the_grammar() {
        assert_eq!(parse("true").unwrap(), Expr::True);
        assert_eq!(parse(" TRUE ").unwrap(), Expr::True);
        assert_eq!(
            parse("owner_id = auth.user_id").unwrap(),
            eq_claim("owner_id", &["user_id"])
        );
        assert_eq!(
            parse("Owner = auth.org.member.id").unwrap(),
            eq_claim("owner", &["org", "member", "id"])
        );
        assert_eq!(
            parse("\"Owner\" = auth.x").unwrap(),
            eq_claim("Owner", &["x"])
        );
        assert_eq!(
            parse("team_id IN auth.teams OR public = true").unwrap(),
            Expr::Or(vec![
                Expr::In {
                    column: "team_id".into(),
                    claim: vec!["teams".into()]
                },
                Expr::Eq {
                    column: "public".into(),
                    value: Value::Literal("t".into())
                }
            ])
        );
        // AND binds tighter than OR; parentheses override.
        let e = parse("a = 1 OR b = 'x' AND c = false").unwrap();
        assert_eq!(e.to_string(), "(a = '1' OR (b = 'x' AND c = 'f'))");
        let e = parse("(a = 1 or b = 'it''s') and c = -2.5e1").unwrap();
        assert_eq!(e.to_string(), "((a = '1' OR b = 'it''s') AND c = '-25.0')");
        assert_eq!(e.columns(), vec!["a", "b", "c"]);
        let e = parse("a = auth.x AND b IN auth.y AND c = auth.x").unwrap();
        assert_eq!(e.claims().len(), 2);
        // Unicode string literals and column names.
        let e = parse("titel = 'größe 🚀'").unwrap();
        assert_eq!(
            e,
            Expr::Eq {
                column: "titel".into(),
                value: Value::Literal("größe 🚀".into())
            }
        );
    }

    #[test]
    fn errors_say_where() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "empty expression"),
            ("owner_id == auth.user_id", 10, "expected auth.<claim>"),
            ("owner_id = auth.", 16, "expected a claim name"),
            ("owner_id = auth", 15, "expected '.'"),
            ("owner_id auth.user_id", 9, "expected '=' or IN"),
            ("a = 1 AND", 9, "expected a column name"),
            ("(a = 1", 6, "expected ')'"),
            ("a = 1)", 5, "expected AND, OR or the end"),
            ("a = 'open", 4, "unterminated string"),
            ("a IN 'x'", 5, "IN takes a claim"),
            ("a = 1x", 4, "is not a number"),
            ("a = 1 ; drop", 6, "unexpected character ';'"),
            ("and = 1", 0, "expected a column name"),
            ("a = b", 4, "expected auth.<claim>"),
        ];
        for (src, at, msg) in cases {
            let e = parse(src).expect_err(src);
            assert_eq!(e.offset, *at, "{src}: {e:?}");
            assert!(e.message.contains(msg), "{src}: {e:?}");
        }
        let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("nested"));
    }
}
