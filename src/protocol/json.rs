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
}
