//! The `RULES_FILE` TOML document: `[[table]]` entries of `name` + `read`,
//! parsed with their positions so every error names the file, line and
//! column.
//!
//! Invariant: a loaded [`RulesFile`] has at least one table, no table twice,
//! every name `schema.table` (or `table`, meaning `public`), and every `read`
//! parsed.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::expr::{self, Expr};
use super::RulesError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    table: Vec<TableDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableDoc {
    name: Spanned<String>,
    read: Spanned<String>,
}

/// One table's rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRule {
    pub schema: String,
    pub table: String,
    pub read: Expr,
    /// 1-based line of the entry's `name` (for catalog errors).
    pub line: usize,
}

impl TableRule {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// The parsed rules file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulesFile {
    pub path: String,
    pub tables: Vec<TableRule>,
}

/// 1-based (line, column) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Where expression character `offset` of the string value at `span` is in
/// the file: exact when the TOML string holds the expression verbatim (no
/// escapes), else the string's start.
fn expr_pos(text: &str, span: Range<usize>, value: &str, offset: usize) -> (usize, usize) {
    let raw = text.get(span.clone()).unwrap_or("");
    let delim = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
        3
    } else {
        1
    };
    let content_start = span.start + delim;
    let verbatim = text
        .get(content_start..span.end.saturating_sub(delim))
        .is_some_and(|c| c == value);
    if !verbatim {
        return line_col(text, span.start);
    }
    let byte = value
        .char_indices()
        .nth(offset)
        .map(|(b, _)| b)
        .unwrap_or(value.len());
    line_col(text, content_start + byte)
}

impl RulesFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<RulesFile, RulesError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RulesError::File {
            path: shown.clone(),
            line: 0,
            col: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&shown, &text)
    }

    /// Parses the text of a rules file named `path` (for messages).
    pub fn parse(path: &str, text: &str) -> Result<RulesFile, RulesError> {
        let at = |offset: usize, reason: String| {
            let (line, col) = line_col(text, offset);
            RulesError::File {
                path: path.to_string(),
                line,
                col,
                reason,
            }
        };
        let doc: Doc = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let reason = e.message().trim().replace('\n', " ");
            at(offset, format!("invalid TOML: {reason}"))
        })?;
        if doc.table.is_empty() {
            return Err(at(
                0,
                "no [[table]] entries: list each table clients may read, with its `read` rule"
                    .into(),
            ));
        }
        let mut tables: Vec<TableRule> = Vec::with_capacity(doc.table.len());
        for t in doc.table {
            let name_span = t.name.span();
            let name = t.name.into_inner();
            let (schema, table) = match name.split('.').collect::<Vec<_>>().as_slice() {
                [t] if !t.is_empty() => ("public".to_string(), t.to_string()),
                [s, t] if !s.is_empty() && !t.is_empty() => (s.to_string(), t.to_string()),
                _ => {
                    return Err(at(
                        name_span.start,
                        format!("table name {name:?} is not `schema.table` or `table`"),
                    ))
                }
            };
            let read_span = t.read.span();
            let src = t.read.into_inner();
            let read = expr::parse(&src).map_err(|e| {
                let (line, col) = expr_pos(text, read_span.clone(), &src, e.offset);
                RulesError::File {
                    path: path.to_string(),
                    line,
                    col,
                    reason: format!("read rule of {schema}.{table}: {}", e.message),
                }
            })?;
            let line = line_col(text, name_span.start).0;
            if let Some(prev) = tables
                .iter()
                .find(|p| p.schema == schema && p.table == table)
            {
                return Err(at(
                    name_span.start,
                    format!(
                        "table {schema}.{table} is listed twice (first at line {})",
                        prev.line
                    ),
                ));
            }
            tables.push(TableRule {
                schema,
                table,
                read,
                line,
            });
        }
        Ok(RulesFile {
            path: path.to_string(),
            tables,
        })
    }

    pub fn get(&self, schema: &str, table: &str) -> Option<&TableRule> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.table == table)
    }

    /// The canonical text of the rules: tables sorted by name, each with its
    /// expression's canonical form. Equal for files that differ only in
    /// layout, comments, order or spelling of keywords.
    pub fn canonical(&self) -> String {
        let mut lines: Vec<String> = self
            .tables
            .iter()
            .map(|t| format!("{:?}.{:?} read {}", t.schema, t.table, t.read))
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        RulesFile::parse("rules.toml", text)
            .expect_err(text)
            .to_string()
    }

    #[test]
    fn parses_tables() {
        let f = RulesFile::parse(
            "r.toml",
            r#"
# comment
[[table]]
name = "public.todos"
read = "owner_id = auth.user_id"

[[table]]
name = "projects"
read = 'team_id IN auth.teams OR public = true'
"#,
        )
        .unwrap();
        assert_eq!(f.tables.len(), 2);
        assert_eq!(f.tables[0].qualified(), "public.todos");
        assert_eq!(f.tables[0].line, 4);
        assert_eq!(f.tables[1].qualified(), "public.projects");
        assert!(f.get("public", "projects").is_some());
        // Canonical text ignores order and layout.
        let g = RulesFile::parse(
            "other.toml",
            "[[table]]\nname='projects'\nread=\"(team_id in auth.teams) or PUBLIC = TRUE\"\n[[table]]\nname='public.todos'\nread='owner_id=auth.user_id'\n",
        )
        .unwrap();
        assert_eq!(f.canonical(), g.canonical());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = err("[[table]]\nname = \"public.todos\"\nread = \"owner_id == auth.user_id\"\n");
        assert!(
            e.starts_with("RULES_FILE rules.toml:3:19: read rule of public.todos: expected"),
            "{e}"
        );
        let e = err("[[table]]\nname = \"todos\"\nread = \"a = 1\"\nwrite = \"x\"\n");
        assert!(
            e.starts_with("RULES_FILE rules.toml:4:1: invalid TOML"),
            "{e}"
        );
        let e = err("[[table]]\nname = \"todos\"\n");
        assert!(e.contains("invalid TOML") && e.contains("read"), "{e}");
        let e = err("[[table]]\nname = \"a.b.c\"\nread = \"true\"\n");
        assert!(e.starts_with("RULES_FILE rules.toml:2:8:"), "{e}");
        let e = err("[[table]]\nname = \"t\"\nread = \"true\"\n[[table]]\nname = \"public.t\"\nread = \"true\"\n");
        assert!(e.contains("listed twice (first at line 2)"), "{e}");
        let e = err("");
        assert!(e.contains("no [[table]] entries"), "{e}");
        let e = err("[[table]]\nname = \"t\"\nread = \"a = \\\"x\\\" AND\"\n");
        assert!(e.starts_with("RULES_FILE rules.toml:3:8:"), "{e}");
        assert!(!e.contains('\n'));
    }
}
