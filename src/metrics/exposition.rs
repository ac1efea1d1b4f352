//! A strict reader of the Prometheus text exposition format, for tests (unit
//! and integration) that check `/metrics` and read counter values.
//! Invariant: `parse` accepts only well-formed lines — `# HELP`/`# TYPE`
//! comments and `name{label="value",…} value` samples — and reports the first
//! bad line otherwise.

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn is_name(s: &str, colon_ok: bool) -> bool {
    let mut bytes = s.bytes();
    let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'_' || (colon_ok && b == b':');
    matches!(bytes.next(), Some(b) if ok_first(b))
        && bytes.all(|b| ok_first(b) || b.is_ascii_digit())
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `k="v",k2="v2"` (the text between the braces) → pairs, with `\\`, `\"`,
/// `\n` escapes resolved.
fn parse_labels(mut s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(key, false) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape in label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((key.to_string(), value));
        s = &rest[end + 1..];
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.is_empty() {
            return Err("expected , between labels".into());
        }
    }
    Ok(out)
}

/// Parses a whole exposition; `Err` names the first bad line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next()) {
                (Some("HELP"), Some(name)) if is_name(name, true) => {}
                (Some("TYPE"), Some(name)) if is_name(name, true) => {
                    let kind = parts.next().unwrap_or("");
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        return Err(bad("unknown TYPE"));
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value = parse_value(value).ok_or_else(|| bad("value is not a number"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').ok_or_else(|| bad("unclosed {"))?;
                (name, parse_labels(inner).map_err(|e| bad(&e))?)
            }
        };
        if !is_name(name, true) {
            return Err(bad("bad metric name"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_and_rejects_garbage() {
        let s = parse(
            "# HELP a_total x\n# TYPE a_total counter\na_total{op=\"in\\\"s\",b=\"2\"} 3\nb 1.5e3\nh_bucket{le=\"+Inf\"} +Inf\n",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].label("op"), Some("in\"s"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].value, 1500.0);
        assert!(s[2].value.is_infinite());
        for bad in [
            "a",
            "a x",
            "1a 1",
            "a{b=\"1\" 1",
            "a{b=1} 1",
            "a{b=\"1\"c=\"2\"} 1",
            "# TYPE a bogus",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
