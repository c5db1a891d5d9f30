//! Token auth (`--auth-secret`): a web backend mints a token naming the one sId its holder
//! may register, valid until an expiry time, and optionally the one room it is valid in;
//! the client puts it in the upgrade URL as `?token=...`.
//!
//! Format: `EXPIRY.SID_HEX.MAC_HEX`, or `EXPIRY.SID_HEX.ROOM_HEX.MAC_HEX` for a token bound
//! to a room, where `EXPIRY` is Unix seconds, `SID_HEX` and `ROOM_HEX` the UTF-8 bytes of
//! the sId and the room name in lowercase hex, and `MAC_HEX` the lowercase hex
//! HMAC-SHA256, keyed with the secret, of everything before it (`EXPIRY.SID_HEX` or
//! `EXPIRY.SID_HEX.ROOM_HEX`). Only `[0-9a-f.]` appear, so the token needs no URL escaping.
//! Any backend can mint one in a few lines, or with
//! `signaling-server token --secret SECRET --sid alice --ttl 3600 [--room lobby]`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::protocol::MAX_ID_BYTES;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused (all answered with HTTP 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
}

fn mac(secret: &[u8], signed: &str) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
    mac.update(signed.as_bytes());
    mac
}

/// What a valid token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub sid: String,
    /// The one room the token is valid in; `None`: every room.
    pub room: Option<String>,
}

/// A token letting its holder register `sid` until `expires_unix`, in `room` only if one
/// is given.
pub fn mint(secret: &[u8], sid: &str, room: Option<&str>, expires_unix: u64) -> String {
    let mut signed = format!("{expires_unix}.{}", hex(sid.as_bytes()));
    if let Some(room) = room {
        signed = format!("{signed}.{}", hex(room.as_bytes()));
    }
    let tag = mac(secret, &signed).finalize().into_bytes();
    format!("{signed}.{}", hex(&tag))
}

/// What a token allows, if its signature is right and it has not expired.
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<Grant, TokenError> {
    let (signed, tag_hex) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let tag = unhex(tag_hex).filter(|tag| tag.len() == 32).ok_or(TokenError::Malformed)?;
    // The signature is checked before anything it covers is trusted, in constant time.
    mac(secret, signed).verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
    let mut fields = signed.split('.');
    let (Some(expires), Some(sid_hex), room_hex, None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(TokenError::Malformed);
    };
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let text =
        |hex: &str| unhex(hex).and_then(|bytes| String::from_utf8(bytes).ok()).filter(|t| !t.is_empty());
    let sid = text(sid_hex).filter(|sid| sid.len() <= MAX_ID_BYTES).ok_or(TokenError::Malformed)?;
    let room = match room_hex {
        Some(hex) => Some(text(hex).ok_or(TokenError::Malformed)?),
        None => None,
    };
    if now_unix >= expires {
        return Err(TokenError::Expired);
    }
    Ok(Grant { sid, room })
}

/// The `token` parameter of a request target's query string.
pub fn token_in(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| pair.strip_prefix("token="))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes.chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let grant = |sid: &str, room: Option<&str>| Ok(Grant { sid: sid.into(), room: room.map(Into::into) });
        let token = mint(SECRET, "alice", None, 1000);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.'));
        assert_eq!(verify(SECRET, &token, 999), grant("alice", None));
        assert_eq!(verify(SECRET, &token, 1000), Err(TokenError::Expired));
        let unicode = mint(SECRET, "zoë 🙂", None, 1000);
        assert_eq!(verify(SECRET, &unicode, 0), grant("zoë 🙂", None));
        let in_room = mint(SECRET, "alice", Some("lobby-7"), 1000);
        assert_eq!(in_room.split('.').count(), 4);
        assert_eq!(verify(SECRET, &in_room, 0), grant("alice", Some("lobby-7")));
    }

    #[test]
    fn forged_and_broken_tokens_are_refused() {
        let token = mint(SECRET, "alice", None, 1000);
        assert_eq!(verify(b"another secret", &token, 0), Err(TokenError::BadSignature));
        // A room cannot be added to, dropped from or changed in a token.
        let in_room = mint(SECRET, "alice", Some("a"), 1000);
        let (signed, tag) = in_room.rsplit_once('.').expect("a tag");
        let (without, _) = signed.rsplit_once('.').expect("a room");
        assert_eq!(verify(SECRET, &format!("{without}.{tag}"), 0), Err(TokenError::BadSignature));
        let other_room = in_room.replacen(&format!(".{}.", hex(b"a")), &format!(".{}.", hex(b"b")), 1);
        assert_eq!(verify(SECRET, &other_room, 0), Err(TokenError::BadSignature));
        let (signed, tag) = token.rsplit_once('.').expect("a tag");
        let added = format!("{signed}.{}.{tag}", hex(b"a"));
        assert_eq!(verify(SECRET, &added, 0), Err(TokenError::BadSignature));
        let other_sid = token.replacen(&hex(b"alice"), &hex(b"mallory"), 1);
        assert_eq!(verify(SECRET, &other_sid, 0), Err(TokenError::BadSignature));
        let later = token.replacen("1000.", "9999.", 1);
        assert_eq!(verify(SECRET, &later, 0), Err(TokenError::BadSignature));
        for broken in
            ["", ".", "..", "1000.616c696365", "1000.616c696365.zz", "x.y.z", &token[..token.len() - 2]]
        {
            assert!(verify(SECRET, broken, 0).is_err(), "{broken}");
        }
    }

    #[test]
    fn the_token_is_found_in_the_query() {
        assert_eq!(token_in("/?token=abc"), Some("abc"));
        assert_eq!(token_in("/ws?x=1&token=abc&y=2"), Some("abc"));
        assert_eq!(token_in("/ws?x=1"), None);
        assert_eq!(token_in("/token=abc"), None);
    }
}
