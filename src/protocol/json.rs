//! JSON text that the encoders splice into messages verbatim, typed apart from raw text so
//! that a client's unescaped string cannot be spliced in by mistake.

use std::fmt;

/// A JSON string literal, quotes included. A client's sId is escaped once, when it
/// registers, and then spliced into every message that names the client. Only
/// [`EscapedJson::escape`] makes one.
#[derive(Clone, PartialEq, Eq)]
pub struct EscapedJson(Box<str>);

impl EscapedJson {
    pub fn escape(text: &str) -> Self {
        let mut out = Vec::with_capacity(text.len() + 2);
        json_string(&mut out, text);
        // Escaping a `str` inserts only ASCII, so the lossy path is never taken.
        let literal = String::from_utf8(out)
            .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
        EscapedJson(literal.into_boxed_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EscapedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EscapedJson({})", self.0)
    }
}

/// A JSON value exactly as a client sent it (a relayed `offer`, `answer` or `icecandidate`,
/// a notify's `data`). It is spliced in byte for byte, never decoded and re-encoded, so it
/// stays JSON-equivalent to what was sent and costs nothing to relay. The parser makes these
/// from spans of input simd-json has validated; [`RawJson::validate`] makes the others.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a>(&'a [u8]);

impl<'a> RawJson<'a> {
    /// `bytes` must be one complete JSON value: a span of a document simd-json accepted.
    pub(super) fn from_validated(bytes: &'a [u8]) -> Self {
        RawJson(bytes)
    }

    /// `bytes` as a payload, if they are one JSON value. For payloads that do not come from
    /// the parser (tests, benchmarks): it parses a copy, which relaying never does.
    pub fn validate(bytes: &'a [u8]) -> Option<Self> {
        simd_json::to_tape(&mut bytes.to_vec()).ok()?;
        Some(RawJson(bytes))
    }

    pub fn as_bytes(self) -> &'a [u8] {
        self.0
    }
}

impl fmt::Debug for RawJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", String::from_utf8_lossy(self.0))
    }
}

/// Appends `text` as a JSON string literal.
pub(super) fn json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Most strings (sIds, notify types) need no escaping: one pass the compiler vectorises.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut clean_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = at + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    fn quoted(text: &str) -> String {
        EscapedJson::escape(text).as_str().to_owned()
    }

    fn as_json(bytes: &[u8]) -> simd_json::OwnedValue {
        simd_json::to_owned_value(&mut bytes.to_vec()).expect("valid JSON")
    }

    #[test]
    fn strings_round_trip_through_a_json_parser() {
        for text in ["", "alice", "quote\"back\\slash", "\n\r\t\u{8}\u{c}\u{1}\u{1f}", "é漢字🙂", "</script>"]
        {
            let mut out = br#"{"s":"#.to_vec();
            out.extend_from_slice(quoted(text).as_bytes());
            out.push(b'}');
            assert_eq!(as_json(&out).get_str("s"), Some(text));
        }
        assert_eq!(quoted("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn validation_takes_any_one_json_value() {
        for good in
            ["null", "-0", "1.50e2", "\"plain\"", "{}", "[1, [2, {\"a\":\"]}\"}], 3]", " {\"k\":true} "]
        {
            assert!(RawJson::validate(good.as_bytes()).is_some(), "{good}");
        }
        for bad in [&b""[..], b" ", b"{", b"nul", b"1 2", b"{\"a\":1}}", b"\"\\x\"", b"\xff"] {
            assert!(RawJson::validate(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
