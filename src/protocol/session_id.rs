//! Session ids and their wire spelling.

use std::fmt;

/// A session's id: 64 random bits, on the wire 16 lowercase hex digits. A type of its own
/// so that neither the core's other `u64`s (list versions, registration order) nor a
/// client's unchecked text can stand in for one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u64);

impl SessionId {
    pub const fn new(bits: u64) -> Self {
        SessionId(bits)
    }

    /// Reads an id as the server writes it; any other spelling (upper case, a sign,
    /// padding, another length) names no session.
    pub fn parse(text: &str) -> Option<SessionId> {
        let bytes: &[u8; 16] = text.as_bytes().try_into().ok()?;
        let mut bits = 0u64;
        for &byte in bytes {
            let digit = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                _ => return None,
            };
            bits = bits << 4 | u64::from(digit);
        }
        Some(SessionId(bits))
    }

    /// The wire form, on the stack: every message naming a session spells its id afresh.
    pub fn text(self) -> SessionIdText {
        SessionIdText(self.hex_digits())
    }

    /// Branch-free (one nibble per byte of a `u128`, then ASCII by arithmetic) so that
    /// spelling an id costs no more than scanning the client's copy of it for escapes did.
    pub(super) fn hex_digits(self) -> [u8; 16] {
        const LOW_NIBBLES: u128 = 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
        const EACH_BYTE: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
        let mut x = u128::from(self.0);
        x = (x | x << 32) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
        x = (x | x << 16) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
        x = (x | x << 8) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
        x = (x | x << 4) & LOW_NIBBLES;
        // 1 in every byte holding 10-15, which must land on 'a'-'f' rather than after '9'.
        let letters = ((x + 6 * EACH_BYTE) >> 4) & EACH_BYTE;
        (x + b'0' as u128 * EACH_BYTE + letters * u128::from(b'a' - b'9' - 1)).to_be_bytes()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A session id's 16 hex digits, on the stack.
#[derive(Clone, Copy)]
pub struct SessionIdText([u8; 16]);

impl SessionIdText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_spellings() {
        for bits in [0, 1, 0xa, 0xf, 0x9f86_d081_884c_7d65, 0xdead_beef, 0x0123_4567_89ab_cdef, u64::MAX] {
            let id = SessionId::new(bits);
            assert_eq!(id.text().as_str(), format!("{bits:016x}"));
            assert_eq!(id.to_string(), format!("{bits:016x}"));
            assert_eq!(SessionId::parse(id.text().as_str()), Some(id));
        }
        for bad in [
            "",
            "0",
            "00000000000000000",
            "000000000000000G",
            "ABCDEF0123456789",
            "+000000000000001",
            " 000000000000001",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_nibble_in_every_position() {
        for at in 0..16 {
            for nibble in 0..16u64 {
                let bits = (nibble << (4 * at)) | (0x5555_5555_5555_5555 & !(0xf << (4 * at)));
                assert_eq!(SessionId::new(bits).text().as_str(), format!("{bits:016x}"));
            }
        }
    }
}
