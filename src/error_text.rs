//! An error and its causes as one line of text.

/// The error's message, then each cause's, joined by `: `, leaving out a
/// cause whose text an outer message already includes (most wrap their
/// cause's text: tokio-postgres' "error connecting to server: …", ours).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
        cur = err.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_on_one_line_without_repeats() {
        let io = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(io).context("cannot connect to db:5432: connection refused");
        assert_eq!(
            one_line(e.as_ref()),
            "cannot connect to db:5432: connection refused"
        );
        let e = anyhow::anyhow!("disk full").context("log write failed");
        assert_eq!(one_line(e.as_ref()), "log write failed: disk full");
    }
}
