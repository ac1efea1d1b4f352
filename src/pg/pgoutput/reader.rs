//! A bounds-checked cursor over one pgoutput message.
//!
//! Invariant: every read checks the remaining length first and returns a
//! [`DecodeError`] instead of panicking; nothing is allocated from a length
//! read out of the message.

use super::DecodeError;

/// Reads big-endian integers and NUL-terminated strings from a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Message kind, for error messages.
    msg: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize, msg: &'static str) -> Self {
        Reader { buf, pos, msg }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn invalid(&self, detail: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            msg: self.msg,
            offset: self.pos,
            detail: detail.into(),
        }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end.and_then(|e| self.buf.get(self.pos..e).map(|s| (e, s))) {
            Some((e, s)) => {
                self.pos = e;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                msg: self.msg,
                field,
                offset: self.pos,
                need: n,
                have: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// A count (`Int16`/`Int32` on the wire) that must be ≥ 0 and such that
    /// `count * min_item_bytes` fits in what is left of the message.
    pub(crate) fn count(
        &self,
        n: i64,
        min_item_bytes: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = usize::try_from(n).map_err(|_| self.invalid(format!("negative {field} {n}")))?;
        let need = n.saturating_mul(min_item_bytes.max(1));
        if need > self.remaining() {
            return Err(self.invalid(format!(
                "{field} {n} needs at least {need} bytes, {} left",
                self.remaining()
            )));
        }
        Ok(n)
    }

    /// A NUL-terminated UTF-8 string (Postgres `String`).
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                msg: self.msg,
                field,
                offset: self.pos,
                need: rest.len() + 1,
                have: rest.len(),
            });
        };
        let bytes = self.take(nul, field)?;
        self.pos += 1; // the NUL, known present
        std::str::from_utf8(bytes).map_err(|e| DecodeError::Invalid {
            msg: self.msg,
            offset: self.pos - 1 - nul,
            detail: format!("{field} is not UTF-8: {e}"),
        })
    }

    /// Errors unless the whole message was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.invalid(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_bounds() {
        let buf = [0u8, 1, 0, 0, 0, 2, b'a', b'b', 0, 0xff];
        let mut r = Reader::new(&buf, 0, "test");
        assert_eq!(r.i16("a").unwrap(), 1);
        assert_eq!(r.u32("b").unwrap(), 2);
        assert_eq!(r.cstr("c").unwrap(), "ab");
        assert_eq!(r.remaining(), 1);
        assert!(r.finish().is_err());
        assert!(matches!(r.u32("d"), Err(DecodeError::Truncated { .. })));
        assert_eq!(r.u8("e").unwrap(), 0xff);
        assert!(r.finish().is_ok());
        assert!(r.u8("f").is_err());
    }

    #[test]
    fn cstr_errors() {
        let mut r = Reader::new(b"abc", 0, "test");
        assert!(matches!(r.cstr("s"), Err(DecodeError::Truncated { .. })));
        let mut r = Reader::new(&[0xc3, 0x28, 0], 0, "test");
        let e = r.cstr("s").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn count_checks() {
        let r = Reader::new(&[0; 10], 0, "test");
        assert_eq!(r.count(5, 2, "n").unwrap(), 5);
        assert!(r.count(6, 2, "n").is_err());
        assert!(r.count(-1, 1, "n").is_err());
        assert!(r.count(i64::MAX, 4, "n").is_err());
    }
}
