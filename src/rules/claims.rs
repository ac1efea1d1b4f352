//! A token's claims as the values a rule compares (protocol.md 1.1): a JSON
//! string as is, a number in its JSON form, `true`/`false` as a boolean
//! column's `t`/`f`; null, an object, or a missing claim match nothing.

use serde_json::Value;

/// The claim at `path` (dotted, inside the claims object holding `user_id`).
pub fn lookup<'a>(claims: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = claims;
    for p in path {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// Text of a scalar claim, `None` when it matches nothing.
pub fn scalar_text(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(true) => "t".into(),
        Value::Bool(false) => "f".into(),
        Value::Null | Value::Object(_) | Value::Array(_) => return None,
    };
    // Postgres text cannot hold NUL: such a value equals no column.
    (!s.contains('\0')).then_some(s)
}

/// Values `column = auth.<path>` accepts (zero or one).
pub fn eq_values(claims: &Value, path: &[String]) -> Vec<String> {
    lookup(claims, path)
        .and_then(scalar_text)
        .into_iter()
        .collect()
}

/// Values `column IN auth.<path>` accepts: the array's scalar elements
/// (anything but an array matches nothing).
pub fn in_values(claims: &Value, path: &[String]) -> Vec<String> {
    let mut out: Vec<String> = match lookup(claims, path) {
        Some(Value::Array(a)) => a.iter().filter_map(scalar_text).collect(),
        _ => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn values_as_text() {
        let c = json!({
            "user_id": "alice",
            "n": 42, "f": 1.5, "neg": -7, "big": 12345678901234567u64,
            "yes": true, "no": false, "nil": null,
            "obj": {"a": {"b": "deep"}},
            "teams": ["red", 3, true, null, {"x": 1}, "red", ["nested"]],
            "nul": "a\u{0}b",
            "uni": "größe 🚀"
        });
        assert_eq!(eq_values(&c, &p("user_id")), vec!["alice"]);
        assert_eq!(eq_values(&c, &p("n")), vec!["42"]);
        assert_eq!(eq_values(&c, &p("f")), vec!["1.5"]);
        assert_eq!(eq_values(&c, &p("neg")), vec!["-7"]);
        assert_eq!(eq_values(&c, &p("big")), vec!["12345678901234567"]);
        assert_eq!(eq_values(&c, &p("yes")), vec!["t"]);
        assert_eq!(eq_values(&c, &p("no")), vec!["f"]);
        assert_eq!(eq_values(&c, &p("uni")), vec!["größe 🚀"]);
        assert!(eq_values(&c, &p("nil")).is_empty());
        assert!(eq_values(&c, &p("obj")).is_empty());
        assert!(eq_values(&c, &p("missing")).is_empty());
        assert!(eq_values(&c, &p("teams")).is_empty());
        assert!(eq_values(&c, &p("nul")).is_empty());
        assert!(eq_values(&c, &p("user_id.x")).is_empty());
        assert_eq!(eq_values(&c, &p("obj.a.b")), vec!["deep"]);
        assert_eq!(in_values(&c, &p("teams")), vec!["3", "red", "t"]);
        assert!(in_values(&c, &p("user_id")).is_empty());
        assert!(in_values(&c, &p("missing")).is_empty());
    }
}
