//! A session's view: the rules resolved against its token's claims — for
//! each readable table, a predicate over column text values only.
//!
//! Invariants: a table is readable only when the rules list it (or when read
//! rules are off); a predicate compares a column's text output with fixed
//! texts, NULL equals nothing; `view_id` depends only on the rules' canonical
//! content and the values of the claims the rules use, so it is the same
//! across restarts and for every session of the same user and claims.

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::Value;

use super::claims;
use super::expr::{Expr, Value as RhsValue};
use super::hash::stable_hash_hex;
use super::Rules;

/// A rule resolved against one token: compares column text with fixed texts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pred {
    True,
    False,
    /// The column's text equals one of `values` (sorted, non-empty); NULL
    /// never matches.
    Match {
        column: String,
        values: Vec<String>,
    },
    And(Vec<Pred>),
    Or(Vec<Pred>),
}

impl Pred {
    /// Resolves `e` with `claims`, folding constants.
    pub fn resolve(e: &Expr, claims: &Value) -> Pred {
        match e {
            Expr::True => Pred::True,
            Expr::Eq { column, value } => {
                let values = match value {
                    RhsValue::Literal(s) => vec![s.clone()],
                    RhsValue::Claim(p) => claims::eq_values(claims, p),
                };
                Pred::matching(column, values)
            }
            Expr::In { column, claim } => Pred::matching(column, claims::in_values(claims, claim)),
            Expr::And(v) => {
                let mut out = Vec::new();
                for p in v.iter().map(|e| Pred::resolve(e, claims)) {
                    match p {
                        Pred::True => {}
                        Pred::False => return Pred::False,
                        p => out.push(p),
                    }
                }
                match out.len() {
                    0 => Pred::True,
                    1 => out.remove(0),
                    _ => Pred::And(out),
                }
            }
            Expr::Or(v) => {
                let mut out = Vec::new();
                for p in v.iter().map(|e| Pred::resolve(e, claims)) {
                    match p {
                        Pred::False => {}
                        Pred::True => return Pred::True,
                        p => out.push(p),
                    }
                }
                match out.len() {
                    0 => Pred::False,
                    1 => out.remove(0),
                    _ => Pred::Or(out),
                }
            }
        }
    }

    fn matching(column: &str, mut values: Vec<String>) -> Pred {
        values.retain(|v| !v.contains('\0'));
        values.sort();
        values.dedup();
        if values.is_empty() {
            Pred::False
        } else {
            Pred::Match {
                column: column.to_string(),
                values,
            }
        }
    }

    /// Evaluates the predicate on a row: `value(column)` is the column's
    /// text, `None` for NULL (or a column not in the row).
    pub fn eval<'a>(&self, value: &impl Fn(&str) -> Option<&'a [u8]>) -> bool {
        match self {
            Pred::True => true,
            Pred::False => false,
            Pred::Match { column, values } => {
                value(column).is_some_and(|v| values.iter().any(|x| x.as_bytes() == v))
            }
            Pred::And(v) => v.iter().all(|p| p.eval(value)),
            Pred::Or(v) => v.iter().any(|p| p.eval(value)),
        }
    }

    /// A SQL boolean expression with the same meaning, over the table's
    /// columns (see [`View::where_sql`]).
    pub fn to_sql(&self) -> String {
        let mut s = String::new();
        self.write_sql(&mut s);
        s
    }

    fn write_sql(&self, s: &mut String) {
        match self {
            Pred::True => s.push_str("true"),
            Pred::False => s.push_str("false"),
            Pred::Match { column, values } => {
                let col = quote_ident(column);
                // format('%s', x) is the type's output function — the text
                // pgoutput sends (a ::text cast differs, e.g. for boolean);
                // it yields '' for NULL, hence the IS NOT NULL.
                let _ = write!(s, "({col} IS NOT NULL AND format('%s', {col}) ");
                if let [one] = values.as_slice() {
                    let _ = write!(s, "= {})", quote_literal(one));
                } else {
                    s.push_str("IN (");
                    for (i, v) in values.iter().enumerate() {
                        if i > 0 {
                            s.push_str(", ");
                        }
                        s.push_str(&quote_literal(v));
                    }
                    s.push_str("))");
                }
            }
            Pred::And(v) | Pred::Or(v) => {
                let op = if matches!(self, Pred::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                s.push('(');
                for (i, p) in v.iter().enumerate() {
                    if i > 0 {
                        s.push_str(op);
                    }
                    p.write_sql(s);
                }
                s.push(')');
            }
        }
    }

    /// Columns compared.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Pred::Match { column, .. } if !out.contains(&column.as_str()) => out.push(column),
            Pred::And(v) | Pred::Or(v) => v.iter().for_each(|p| p.collect_columns(out)),
            _ => {}
        }
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An escape-string literal, correct whatever `standard_conforming_strings`
/// is: `E'…'` with `\` and `'` doubled. (NUL never reaches here.)
pub fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// What one session may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    id: String,
    /// `None`: read rules are off; every published table is readable.
    tables: Option<HashMap<(String, String), Pred>>,
}

impl View {
    /// Read rules off (protocol version 1 behaviour): everything readable,
    /// `view_id` empty.
    pub fn unrestricted() -> View {
        View {
            id: String::new(),
            tables: None,
        }
    }

    /// The view of a token whose claims object (the one holding `user_id`)
    /// is `claims`.
    pub fn new(rules: &Rules, claims: &Value) -> View {
        let mut tables = HashMap::new();
        for t in &rules.file.tables {
            tables.insert(
                (t.schema.clone(), t.table.clone()),
                Pred::resolve(&t.read, claims),
            );
        }
        let mut key = String::new();
        let _ = writeln!(key, "{}", rules.version);
        for path in rules.used_claims() {
            let v = claims::lookup(claims, &path)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "<missing>".into());
            let _ = writeln!(key, "{}={}", path.join("."), v);
        }
        View {
            id: format!("v1-{}", stable_hash_hex(key.as_bytes())),
            tables: Some(tables),
        }
    }

    /// `view_id` of the protocol: empty when read rules are off.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether read rules apply.
    pub fn is_restricted(&self) -> bool {
        self.tables.is_some()
    }

    /// Whether the rules let this view read `schema.table` at all (some of
    /// its rows may still be hidden). With rules off: always true (the
    /// caller checks the table is published).
    pub fn readable(&self, schema: &str, table: &str) -> bool {
        match &self.tables {
            None => true,
            Some(t) => t.contains_key(&(schema.to_string(), table.to_string())),
        }
    }

    /// The tables this view may read, sorted; `None` when read rules are
    /// off (every published table: ask the publication).
    pub fn tables(&self) -> Option<Vec<(String, String)>> {
        self.tables.as_ref().map(|t| {
            let mut v: Vec<(String, String)> = t.keys().cloned().collect();
            v.sort();
            v
        })
    }

    /// The predicate for `schema.table`; `None` when not readable.
    pub fn pred(&self, schema: &str, table: &str) -> Option<&Pred> {
        static TRUE: Pred = Pred::True;
        match &self.tables {
            None => Some(&TRUE),
            Some(t) => t.get(&(schema.to_string(), table.to_string())),
        }
    }

    /// A SQL boolean expression selecting exactly the rows of
    /// `schema.table` this view may read (`WHERE <it>`), or `None` when the
    /// table is not readable. It names columns as quoted identifiers,
    /// compares `format('%s', col)` (the type's output function: the text
    /// pgoutput sends) with `E'…'` literals, and is `true`/`false` for rules
    /// that resolve to a constant. Values follow the session settings the
    /// replication connection pins (DateStyle, TimeZone, IntervalStyle,
    /// extra_float_digits): set the same on the snapshot connection.
    pub fn where_sql(&self, schema: &str, table: &str) -> Option<String> {
        self.pred(schema, table).map(Pred::to_sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::file::RulesFile;
    use serde_json::json;

    fn rules(text: &str) -> Rules {
        Rules::from_file(RulesFile::parse("r.toml", text).unwrap())
    }

    const R: &str = r#"
[[table]]
name = "public.todos"
read = "owner_id = auth.user_id"
[[table]]
name = "public.projects"
read = "team_id IN auth.teams OR public = true"
[[table]]
name = "public.news"
read = "true"
[[table]]
name = "public.scored"
read = "score = auth.level AND region = auth.geo.region"
"#;

    fn row<'a>(cols: &'a [(&'a str, Option<&'a str>)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        move |c| {
            cols.iter()
                .find(|(n, _)| *n == c)
                .and_then(|(_, v)| v.map(str::as_bytes))
        }
    }

    #[test]
    fn evaluates_rows() {
        let r = rules(R);
        let v = View::new(
            &r,
            &json!({"user_id": "alice", "teams": ["red", 7], "level": 3, "geo": {"region": "eu"}}),
        );
        assert!(v.is_restricted());
        let names: Vec<String> = v
            .tables()
            .unwrap()
            .into_iter()
            .map(|(s, t)| format!("{s}.{t}"))
            .collect();
        assert_eq!(
            names,
            [
                "public.news",
                "public.projects",
                "public.scored",
                "public.todos"
            ]
        );
        assert_eq!(View::unrestricted().tables(), None);
        assert!(v.readable("public", "todos"));
        assert!(!v.readable("public", "secrets"));
        assert!(v.pred("public", "secrets").is_none());
        let todos = v.pred("public", "todos").unwrap();
        assert!(todos.eval(&row(&[("owner_id", Some("alice"))])));
        assert!(!todos.eval(&row(&[("owner_id", Some("bob"))])));
        assert!(!todos.eval(&row(&[("owner_id", None)])));
        let p = v.pred("public", "projects").unwrap();
        assert!(p.eval(&row(&[("team_id", Some("red")), ("public", Some("f"))])));
        assert!(p.eval(&row(&[("team_id", Some("7")), ("public", Some("f"))])));
        assert!(p.eval(&row(&[("team_id", None), ("public", Some("t"))])));
        assert!(!p.eval(&row(&[("team_id", Some("blue")), ("public", Some("f"))])));
        assert!(!p.eval(&row(&[("team_id", None), ("public", None)])));
        assert_eq!(v.pred("public", "news"), Some(&Pred::True));
        let s = v.pred("public", "scored").unwrap();
        assert!(s.eval(&row(&[("score", Some("3")), ("region", Some("eu"))])));
        assert!(!s.eval(&row(&[("score", Some("3.0")), ("region", Some("eu"))])));

        // Missing / object / null claims match nothing.
        let w = View::new(
            &r,
            &json!({"user_id": "bob", "teams": {"a": 1}, "level": null}),
        );
        assert_eq!(
            w.pred("public", "projects"),
            Some(&Pred::Match {
                column: "public".into(),
                values: vec!["t".into()]
            })
        );
        assert_eq!(w.pred("public", "scored"), Some(&Pred::False));
        assert_eq!(w.where_sql("public", "scored").as_deref(), Some("false"));
        assert_eq!(w.where_sql("public", "nope"), None);
    }

    #[test]
    fn view_ids() {
        let r = rules(R);
        let a1 = View::new(
            &r,
            &json!({"user_id": "alice", "teams": ["red"], "other": 1}),
        );
        let a2 = View::new(
            &r,
            &json!({"other": 2, "teams": ["red"], "user_id": "alice"}),
        );
        assert_eq!(a1.id(), a2.id(), "unused claims do not matter");
        assert!(a1.id().starts_with("v1-") && a1.id().len() == 3 + 32);
        let b = View::new(&r, &json!({"user_id": "alice", "teams": ["blue"]}));
        assert_ne!(a1.id(), b.id());
        let c = View::new(&r, &json!({"user_id": "bob", "teams": ["red"]}));
        assert_ne!(a1.id(), c.id());
        // Same rules written differently: same id; other rules: other id.
        let r2 = rules(&R.replace("owner_id = auth.user_id", "(OWNER_ID = auth.user_id)"));
        let a3 = View::new(&r2, &json!({"user_id": "alice", "teams": ["red"]}));
        assert_eq!(a1.id(), a3.id());
        let r3 = rules(&R.replace("public = true", "public = false"));
        let a4 = View::new(&r3, &json!({"user_id": "alice", "teams": ["red"]}));
        assert_ne!(a1.id(), a4.id());
        // A fixed value (a golden id: stable across builds and restarts).
        let g = rules("[[table]]\nname = \"t\"\nread = \"o = auth.user_id\"\n");
        let gv = View::new(&g, &json!({"user_id": "alice"}));
        assert_eq!(gv.id(), View::new(&g, &json!({"user_id": "alice"})).id());
        assert_eq!(gv.id(), GOLDEN_ID);
        assert_eq!(View::unrestricted().id(), "");
        assert_eq!(
            View::unrestricted().where_sql("x", "y").as_deref(),
            Some("true")
        );
    }

    const GOLDEN_ID: &str = "v1-6c84325ce7bae2e0774bda7a62d61aa7";

    #[test]
    fn sql_is_quoted() {
        let r = rules(
            "[[table]]\nname = \"t\"\nread = \"\\\"We\\\"\\\"ird\\\" = auth.x OR (a IN auth.l AND b = 2)\"\n",
        );
        let v = View::new(&r, &json!({"x": "o'ne\\", "l": ["p", "q'"]}));
        assert_eq!(
            v.where_sql("public", "t").unwrap(),
            "((\"We\"\"ird\" IS NOT NULL AND format('%s', \"We\"\"ird\") = E'o''ne\\\\') OR \
             ((\"a\" IS NOT NULL AND format('%s', \"a\") IN (E'p', E'q''')) AND \
             (\"b\" IS NOT NULL AND format('%s', \"b\") = E'2')))"
        );
    }
}
