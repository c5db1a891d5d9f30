//! The HTTP request head that opens every connection: a WebSocket upgrade, a plain HTTP
//! request, or garbage.
//!
//! tungstenite's own server handshake answers anything but an upgrade with an error before
//! the application sees it, so the head is parsed here with httparse and the upgrade is
//! completed with tungstenite's `derive_accept_key`. That lets one port serve plain HTTP too.

use tungstenite::handshake::derive_accept_key;

/// Headers beyond this count get 431.
const MAX_HEADERS: usize = 48;

/// What to do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The head is not complete yet.
    Partial,
    /// A valid WebSocket upgrade. `head_len` bytes belong to the request; anything after
    /// them is already WebSocket data. `echo`: on the echo path.
    Upgrade { response: String, head_len: usize, echo: bool, entry: Entry },
    /// Answer with this complete response and close.
    Respond(&'static [u8]),
    /// A plain HTTP request for one of the server's own pages (`HEAD`: no body).
    Page { route: Route, head_only: bool },
}

/// What the upgrade request decided about the connection's client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The room named by `?room=`; `None`: the default room.
    pub room: Option<String>,
    /// The one sId an auth token lets this connection register.
    pub allowed_sid: Option<String>,
}

/// Room names: 1-64 bytes of these (PROTOCOL.md, *Rooms*).
pub const MAX_ROOM_BYTES: usize = 64;

/// Whether `name` may name a room.
pub fn is_room_name(name: &str) -> bool {
    (1..=MAX_ROOM_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// The room a request target's query names: `Ok(None)` for the default room (no `room`,
/// or an empty one), `Err` for a bad name or a `room` given twice (both answered 400).
/// The name is checked after percent-decoding.
pub fn room_in(target: &str) -> Result<Option<String>, ()> {
    let Some((_, query)) = target.split_once('?') else { return Ok(None) };
    let mut room = None;
    for value in
        query.split('&').filter_map(|pair| pair.strip_prefix("room=").or((pair == "room").then_some("")))
    {
        if room.is_some() {
            return Err(());
        }
        room = Some(percent_decode(value).ok_or(())?);
    }
    match room {
        None => Ok(None),
        Some(name) if name.is_empty() => Ok(None),
        Some(name) if is_room_name(&name) => Ok(Some(name)),
        Some(_) => Err(()),
    }
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let pair = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(pair, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The plain-HTTP endpoints on the WebSocket port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`: the demo page.
    Index,
    /// `/client.js`: the JavaScript client module.
    ClientJs,
    /// `/healthz`: 200 while the loop is serving.
    Health,
    /// `/metrics`: Prometheus text format.
    Metrics,
}

fn route(method: Option<&str>, path: Option<&str>) -> Head {
    // The query string plays no part in routing.
    let path = path.unwrap_or("").split('?').next().unwrap_or("");
    let route = match path {
        "/" | "/index.html" => Route::Index,
        "/client.js" => Route::ClientJs,
        "/healthz" => Route::Health,
        "/metrics" => Route::Metrics,
        _ => return Head::Respond(NOT_FOUND),
    };
    if method != Some("GET") && method != Some("HEAD") {
        return Head::Respond(METHOD_NOT_ALLOWED);
    }
    Head::Page { route, head_only: method == Some("HEAD") }
}

/// A complete `200 OK` response that closes the connection.
pub fn ok(content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body);
    }
    response
}

pub const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n";
pub const FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\norigin not allowed\n";
pub const UNAUTHORIZED: &[u8] = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 33\r\nConnection: close\r\n\r\na valid ?token= must be provided\n";
pub const METHOD_NOT_ALLOWED: &[u8] = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nmethod not allowed\n";
pub const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n";
pub const UPGRADE_REQUIRED: &[u8] = b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Type: text/plain\r\nContent-Length: 36\r\nConnection: close\r\n\r\nonly WebSocket version 13 is spoken\n";
pub const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\n\r\nrequest head is too large\n";
pub const HTTP_VERSION_NOT_SUPPORTED: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\nContent-Length: 37\r\nConnection: close\r\n\r\nWebSocket upgrades require HTTP/1.1+\n";
pub const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 28\r\nConnection: close\r\n\r\ntoo many connections, retry\n";

/// What an upgrade must satisfy, from the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpgradePolicy<'a> {
    /// Empty: any origin.
    pub allowed_origins: &'a [String],
    pub auth_secret: Option<&'a [u8]>,
    pub echo_path: Option<&'a str>,
    /// Wall-clock time for token expiry, Unix seconds.
    pub now_unix: u64,
}

/// Reads the request head in `buf`. `buf_is_full` says the connection may not send more
/// bytes before the head ends (the head limit was reached).
pub fn read_head(buf: &[u8], buf_is_full: bool, policy: &UpgradePolicy<'_>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf_is_full => return Head::Respond(HEAD_TOO_LARGE),
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => return Head::Respond(HEAD_TOO_LARGE),
        Err(_) => return Head::Respond(BAD_REQUEST),
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|value| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") {
        return route(request.method, request.path);
    }
    // RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 (or later) request. An
    // HTTP/1.0 client could not take a 101 either.
    if request.version != Some(1) {
        return Head::Respond(HTTP_VERSION_NOT_SUPPORTED);
    }
    if request.method != Some("GET") || !has_token("connection", "upgrade") {
        return Head::Respond(BAD_REQUEST);
    }
    if header("sec-websocket-version") != Some("13") {
        return Head::Respond(UPGRADE_REQUIRED);
    }
    // The key is 16 random bytes in base64: 24 characters ending in "==".
    let Some(key) = header("sec-websocket-key").filter(|k| k.len() == 24 && k.ends_with("==")) else {
        return Head::Respond(BAD_REQUEST);
    };
    // Browsers always send Origin; native clients usually do not, and are not the target
    // of cross-site abuse, so a missing Origin passes.
    if !policy.allowed_origins.is_empty()
        && let Some(origin) = header("origin")
        && !policy
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    {
        return Head::Respond(FORBIDDEN);
    }
    let target = request.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target);
    let echo = policy.echo_path.is_some_and(|echo_path| echo_path == path);
    let Ok(room) = room_in(target) else { return Head::Respond(BAD_REQUEST) };
    let allowed_sid = match policy.auth_secret {
        Some(secret) if !echo => {
            let Some(token) = crate::auth::token_in(target) else { return Head::Respond(UNAUTHORIZED) };
            match crate::auth::verify(secret, token, policy.now_unix) {
                // A token bound to a room opens that room only.
                Ok(grant) if grant.room.is_some() && grant.room != room => {
                    return Head::Respond(UNAUTHORIZED);
                }
                Ok(grant) => Some(grant.sid),
                Err(_) => return Head::Respond(UNAUTHORIZED),
            }
        }
        _ => None,
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    Head::Upgrade { response, head_len, echo, entry: Entry { room, allowed_sid } }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: UpgradePolicy<'static> =
        UpgradePolicy { allowed_origins: &[], auth_secret: None, echo_path: None, now_unix: 0 };

    const UPGRADE: &str = "GET /any/path?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn an_upgrade_on_any_path_gets_101_with_the_rfc_accept_key() {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x80");
        match read_head(&bytes, false, &OPEN) {
            Head::Upgrade { response, head_len, echo: false, entry } if entry == Entry::default() => {
                assert!(response.starts_with("HTTP/1.1 101 "));
                // The worked example of RFC 6455 section 1.3.
                assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
                assert_eq!(head_len, UPGRADE.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn origins_outside_the_allowlist_get_403_and_no_origin_passes() {
        let allowed = ["https://app.example".to_owned()];
        let policy = UpgradePolicy { allowed_origins: &allowed, ..OPEN };
        let with = |origin: &str| UPGRADE.replace("Host: h\r\n", &format!("Host: h\r\nOrigin: {origin}\r\n"));
        assert!(matches!(
            read_head(with("https://app.example").as_bytes(), false, &policy),
            Head::Upgrade { .. }
        ));
        assert!(matches!(
            read_head(with("HTTPS://APP.EXAMPLE/").as_bytes(), false, &policy),
            Head::Upgrade { .. }
        ));
        assert_eq!(
            read_head(with("https://evil.example").as_bytes(), false, &policy),
            Head::Respond(FORBIDDEN)
        );
        assert_eq!(read_head(with("null").as_bytes(), false, &policy), Head::Respond(FORBIDDEN));
        assert!(matches!(read_head(UPGRADE.as_bytes(), false, &policy), Head::Upgrade { .. }));
    }

    #[test]
    fn with_auth_the_token_decides_and_names_the_sid() {
        let secret = b"0123456789abcdef".as_slice();
        let policy =
            UpgradePolicy { auth_secret: Some(secret), now_unix: 100, echo_path: Some("/echo"), ..OPEN };
        let at = |target: &str| UPGRADE.replace("GET /any/path?x=1 ", &format!("GET {target} "));
        let token = crate::auth::mint(secret, "alice", None, 200);
        match read_head(at(&format!("/?token={token}")).as_bytes(), false, &policy) {
            Head::Upgrade { entry, echo: false, .. } => {
                assert_eq!(entry.allowed_sid.as_deref(), Some("alice"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_head(at("/").as_bytes(), false, &policy), Head::Respond(UNAUTHORIZED));
        let expired = crate::auth::mint(secret, "alice", None, 100);
        assert_eq!(
            read_head(at(&format!("/?token={expired}")).as_bytes(), false, &policy),
            Head::Respond(UNAUTHORIZED)
        );
        let forged = crate::auth::mint(b"some other secret", "alice", None, 200);
        assert_eq!(
            read_head(at(&format!("/?token={forged}")).as_bytes(), false, &policy),
            Head::Respond(UNAUTHORIZED)
        );
        // The conformance echo path needs no token.
        assert!(matches!(
            read_head(at("/echo").as_bytes(), false, &policy),
            Head::Upgrade { echo: true, .. }
        ));
        assert!(matches!(read_head(at("/echo/x").as_bytes(), false, &policy), Head::Respond(UNAUTHORIZED)));
    }

    #[test]
    fn plain_requests_are_routed_by_path_without_the_query() {
        for (request, route) in [
            ("GET / HTTP/1.1\r\n\r\n", Route::Index),
            ("GET /?name=alice HTTP/1.1\r\n\r\n", Route::Index),
            ("GET /client.js HTTP/1.1\r\n\r\n", Route::ClientJs),
            ("HEAD /healthz HTTP/1.1\r\n\r\n", Route::Health),
            ("GET /metrics HTTP/1.1\r\nAccept: text/plain\r\n\r\n", Route::Metrics),
        ] {
            let head_only = request.starts_with("HEAD");
            assert_eq!(
                read_head(request.as_bytes(), false, &OPEN),
                Head::Page { route, head_only },
                "{request}"
            );
        }
        let response = ok("text/plain", b"ok\n", false);
        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n") && response.ends_with(b"\r\n\r\nok\n"));
        assert!(
            ok("text/plain", b"ok\n", true)
                .ends_with(b"Content-Length: 3\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        );
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_get_431() {
        assert_eq!(read_head(&UPGRADE.as_bytes()[..40], false, &OPEN), Head::Partial);
        assert_eq!(read_head(&UPGRADE.as_bytes()[..40], true, &OPEN), Head::Respond(HEAD_TOO_LARGE));
        let many: String = (0..60).map(|i| format!("X-{i}: y\r\n")).collect();
        let request = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(read_head(request.as_bytes(), false, &OPEN), Head::Respond(HEAD_TOO_LARGE));
    }

    #[test]
    fn plain_and_broken_requests_get_http_errors() {
        assert_eq!(
            read_head(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", false, &OPEN),
            Head::Respond(NOT_FOUND)
        );
        assert_eq!(
            read_head(b"POST /metrics HTTP/1.1\r\n\r\n", false, &OPEN),
            Head::Respond(METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            read_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", false, &OPEN),
            Head::Respond(BAD_REQUEST)
        );
        assert_eq!(read_head(b"garbage\r\n\r\n", false, &OPEN), Head::Respond(BAD_REQUEST));
        let post = UPGRADE.replace("GET", "POST");
        assert_eq!(read_head(post.as_bytes(), false, &OPEN), Head::Respond(BAD_REQUEST));
        let v8 = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(read_head(v8.as_bytes(), false, &OPEN), Head::Respond(UPGRADE_REQUIRED));
        let no_key = UPGRADE.replace("Sec-WebSocket-Key", "X-Key");
        assert_eq!(read_head(no_key.as_bytes(), false, &OPEN), Head::Respond(BAD_REQUEST));
        let no_conn = UPGRADE.replace("keep-alive, Upgrade", "keep-alive");
        assert_eq!(read_head(no_conn.as_bytes(), false, &OPEN), Head::Respond(BAD_REQUEST));
        let http10 = UPGRADE.replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(read_head(http10.as_bytes(), false, &OPEN), Head::Respond(HTTP_VERSION_NOT_SUPPORTED));
        // Plain pages are still served to HTTP/1.0 clients (probes, old tools).
        assert!(matches!(read_head(b"GET /healthz HTTP/1.0\r\n\r\n", false, &OPEN), Head::Page { .. }));
    }

    #[test]
    fn canned_responses_have_honest_content_lengths() {
        for response in [
            NOT_FOUND,
            METHOD_NOT_ALLOWED,
            BAD_REQUEST,
            UPGRADE_REQUIRED,
            HEAD_TOO_LARGE,
            HTTP_VERSION_NOT_SUPPORTED,
            SERVICE_UNAVAILABLE,
        ] {
            let text = std::str::from_utf8(response).expect("ascii");
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.parse().ok())
                .expect("content-length");
            assert_eq!(declared, body.len(), "{head}");
        }
    }
}
