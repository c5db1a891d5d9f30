//! Built-in TLS (`--tls-cert FILE --tls-key FILE`): the listener then speaks only TLS, for
//! `wss://` and for `https://` on the HTTP endpoints; ALPN is `http/1.1`; the TLS handshake
//! counts against `--handshake-timeout`; SIGHUP reloads the pair for new connections only
//! and keeps the old pair if the new files are bad; bad files at start exit with 2.
//!
//! Certificates come from a test CA made on the spot (tls_client.rs); the clients trust that
//! CA alone.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use simd_json::prelude::*;

use crate::harness::*;
use crate::tls_client::{Leaf, Pki, TlsStream, peer_leaf};

/// The server on `pki`'s files, plus `extra` flags.
fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    let args = pki.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Server::start_with(&all)
}

/// Two wss clients registered as `alice` and `bob`, in a session alice opened.
fn wss_pair(pki: &Pki, server: &Server) -> Pair<TlsStream> {
    let alice = pki.register(server, "alice");
    let bob = pki.register(server, "bob");
    Pair::join(alice, "alice", bob, "bob")
}

/// Reads a raw TCP stream until the server ends it (EOF or reset); returns what came and
/// when it ended. Fails if it is still open after [`PATIENCE`].
fn wait_for_close(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (received, Instant::now()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (received, Instant::now()),
            Err(e) => panic!("not closed within {PATIENCE:?} ({e}); received {received:?}"),
        }
    }
}

/// The leaf certificate a new connection is served.
fn served_leaf(pki: &Pki, server: &Server) -> CertificateDer<'static> {
    peer_leaf(&pki.connect(server))
}

/// Waits (bounded) until new connections are served `wanted`; until then they must be
/// served `before`, never anything else.
fn wait_for_leaf(pki: &Pki, server: &Server, wanted: &Leaf, before: &Leaf) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let served = served_leaf(pki, server);
        if served == wanted.der {
            return;
        }
        assert!(
            served == before.der,
            "a new connection was served a certificate that is neither the old nor the new one"
        );
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate {PATIENCE:?} after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_wss_client_registers() {
    let pki = Pki::new();
    pki.install_new(1);
    let server = tls_server(&pki, &[]);
    let mut alice = pki.wss(&server);
    alice.send(r#"{"cmd":"sId","sId":"alice"}"#);
    let reply = alice.recv_skip_clu();
    assert_eq!((reply.get_str("cmd"), reply.get_str("sId")), (Some("sId"), Some("alice")), "{reply:?}");
    assert_eq!(alice.wait_for_list(|list| !list.is_empty()), vec![("alice".to_owned(), 1)]);
}

#[test]
fn two_wss_clients_open_a_session_and_relay_a_call() {
    let pki = Pki::new();
    pki.install_new(1);
    let server = tls_server(&pki, &[]);
    let mut pair = wss_pair(&pki, &server);
    let sid = pair.session.clone();
    let (alice, bob) = (&mut pair.a, &mut pair.b);

    alice
        .send(&format!(r#"{{"cmd":"call","sessionId":"{sid}","offer":{{"type":"offer","sdp":"v=0\r\n"}}}}"#));
    let call = bob.expect("call");
    assert_eq!(call.get_str("opponentId"), Some("alice"), "{call:?}");
    assert_eq!(call.get("offer").and_then(|o| o.get_str("sdp")), Some("v=0\r\n"), "{call:?}");
    bob.expect_ssu(&sid, 2);
    alice.expect_ssu(&sid, 2);

    bob.send(&format!(
        r#"{{"cmd":"accept","sessionId":"{sid}","answer":{{"type":"answer","sdp":"v=0\r\n"}}}}"#
    ));
    assert_eq!(alice.expect("accept").get_str("opponentId"), Some("bob"));
    alice.expect_ssu(&sid, 3);
    bob.expect_ssu(&sid, 3);

    // A message bigger than one TLS record (16 KiB) arrives whole.
    let sdp = "a=x\\r\\n".repeat(5000);
    alice.send(&format!(
        r#"{{"cmd":"icecandidate","sessionId":"{sid}","icecandidate":{{"candidate":"{sdp}"}}}}"#
    ));
    let ice = bob.expect("icecandidate");
    let candidate = ice.get("icecandidate").and_then(|c| c.get_str("candidate")).map(str::len);
    assert_eq!(candidate, Some(5000 * 5), "{ice:?}");

    pair.relay_works();

    pair.a.send(&format!(r#"{{"cmd":"stop","sessionId":"{sid}"}}"#));
    assert_eq!(pair.b.expect("stop").get_str("opponentId"), Some("alice"));
    pair.b.expect_ssu(&sid, 4);
    pair.a.expect_ssu(&sid, 4);
}

#[test]
fn https_serves_the_http_endpoints() {
    let pki = Pki::new();
    pki.install_new(1);
    let server = tls_server(&pki, &[]);
    assert_eq!(pki.https_get(&server, "/healthz"), (200, "ok\n".to_owned()));
    let (status, metrics) = pki.https_get(&server, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("signaling_"), "{metrics}");
    let (status, page) = pki.https_get(&server, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<html") || page.contains("<!doctype"), "{page}");
    let (status, script) = pki.https_get(&server, "/client.js");
    assert_eq!(status, 200);
    assert!(script.contains("export"), "{script}");
    assert_eq!(pki.https_get(&server, "/no/such/thing").0, 404);
}

#[test]
fn a_plain_client_on_the_tls_listener_is_closed_promptly() {
    let pki = Pki::new();
    pki.install_new(1);
    let server = tls_server(&pki, &[]);
    let mut before = wss_pair(&pki, &server);

    let requests: [(&str, &[u8]); 2] = [
        ("plain HTTP", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        ("plain WebSocket upgrade", UPGRADE_REQUEST.as_bytes()),
    ];
    for (name, request) in requests {
        let mut stream = raw_connect(&server);
        let sent = Instant::now();
        stream.write_all(request).expect("write the plain request");
        let (received, closed) = wait_for_close(&mut stream);
        // A TLS alert may come back, or a plain-text error; never an upgrade or a page.
        let text = String::from_utf8_lossy(&received);
        assert!(
            !text.starts_with("HTTP/1.1 101") && !text.starts_with("HTTP/1.1 2"),
            "{name}: served in plain text: {text:?}"
        );
        let took = closed - sent;
        assert!(took < Duration::from_secs(2), "{name}: closed only after {took:?}");
    }

    before.relay_works();
    let mut after = pki.register(&server, "carol");
    after.send(r#"{"cmd":"notify","opponentId":"alice","type":"hello"}"#);
    assert_eq!(before.a.expect("notify").get_str("opponentId"), Some("carol"));
}

#[test]
fn a_stalled_tls_handshake_is_dropped_at_the_deadline() {
    let pki = Pki::new();
    pki.install_new(1);
    let server = tls_server(&pki, &["--handshake-timeout", "0.5"]);
    let mut pair = wss_pair(&pki, &server);

    // The first bytes of a real ClientHello, and a connection that sends nothing.
    let mut hello = Vec::new();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
    let mut client = rustls::ClientConnection::new(pki.client_config(), name).expect("a client");
    client.write_tls(&mut hello).expect("the ClientHello");
    assert!(hello.len() > 40, "{hello:?}");
    let mut partial = raw_connect(&server);
    let mut silent = raw_connect(&server);
    let connected = Instant::now();
    partial.write_all(&hello[..hello.len() / 2]).expect("write half a ClientHello");

    for (name, stream) in [("half a ClientHello", &mut partial), ("silent", &mut silent)] {
        let (_, closed) = wait_for_close(stream);
        let waited = closed - connected;
        assert!(waited >= Duration::from_millis(400), "{name}: closed after {waited:?}, before the deadline");
        assert!(waited < Duration::from_secs(3), "{name}: closed only after {waited:?}");
    }
    // The deadline ends with the handshake: the pair, idle past it, still works.
    assert!(connected.elapsed() > Duration::from_millis(500));
    pair.relay_works();
}

#[test]
fn sighup_serves_a_new_certificate_to_new_connections_only() {
    let pki = Pki::new();
    let first = pki.install_new(1);
    let server = tls_server(&pki, &[]);
    let mut pair = wss_pair(&pki, &server);
    assert!(served_leaf(&pki, &server) == first.der, "the server serves the certificate it started with");

    let second = pki.install_new(2);
    assert!(second.der != first.der);
    server.send_signal("HUP");
    wait_for_leaf(&pki, &server, &second, &first);

    // Open connections keep their session (and the certificate they were served).
    assert!(peer_leaf(pair.a.ws.get_ref()) == first.der);
    pair.relay_works();
    // New connections work with the new certificate.
    let mut carol = pki.register(&server, "carol");
    assert!(peer_leaf(carol.ws.get_ref()) == second.der);
    carol.send(r#"{"cmd":"notify","opponentId":"alice","type":"hello"}"#);
    assert_eq!(pair.a.expect("notify").get_str("opponentId"), Some("carol"));
    assert_eq!(pki.https_get(&server, "/healthz"), (200, "ok\n".to_owned()));
}

#[test]
fn a_reload_with_a_broken_certificate_keeps_the_old_one() {
    let pki = Pki::new();
    let first = pki.install_new(1);
    let log_path = pki.dir.join("server.log");
    let log = File::create(&log_path).expect("create the server log");
    let args = pki.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_with_stderr(&args, Stdio::from(log));
    let mut pair = wss_pair(&pki, &server);

    std::fs::write(&pki.cert_file, "garbage, not PEM\n").expect("break cert.pem");
    server.send_signal("HUP");
    // The failed reload is logged, naming the file.
    let cert_file = pki.cert_file.display().to_string();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains(&cert_file) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error naming {cert_file} logged after SIGHUP; the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(server.is_running(), "a failed reload stopped the server");
    assert!(served_leaf(&pki, &server) == first.der, "a failed reload changed the certificate");
    pair.relay_works();
    let mut carol = pki.register(&server, "carol");
    carol.send(r#"{"cmd":"notify","opponentId":"alice","type":"hello"}"#);
    assert_eq!(pair.a.expect("notify").get_str("opponentId"), Some("carol"));

    // Fixed files are picked up by the next SIGHUP.
    let second = pki.install_new(2);
    server.send_signal("HUP");
    wait_for_leaf(&pki, &server, &second, &first);
    pair.relay_works();
}

/// The binary with TLS flags: it must exit with 2 and say so on stderr, naming `named`.
fn expect_start_error(args: &[&str], named: &str) {
    let output = run_binary(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {}\nstderr: {stderr}", output.status);
    assert!(stderr.contains(named), "{args:?}: stderr does not name {named:?}: {stderr}");
}

#[test]
fn bad_certificate_files_at_start_exit_with_2_naming_the_file() {
    let pki = Pki::new();
    let leaf = pki.install_new(1);
    let cert = pki.cert_file.display().to_string();
    let key = pki.key_file.display().to_string();
    let start = |cert: &str, key: &str, named: &str| {
        expect_start_error(&["--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key], named);
    };

    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "garbage, not PEM\n").expect("write garbage.pem");
    let garbage = garbage.display().to_string();
    start(&garbage, &key, &garbage);
    start(&cert, &garbage, &garbage);

    let missing = pki.dir.join("missing.pem").display().to_string();
    start(&missing, &key, &missing);
    start(&cert, &missing, &missing);

    // A key that is not the certificate's.
    let other = pki.issue(2);
    let other_key = pki.dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).expect("write other-key.pem");
    let other_key = other_key.display().to_string();
    start(&cert, &other_key, &other_key);

    // The good pair starts (the failures above were the files' fault).
    let server = tls_server(&pki, &[]);
    assert!(served_leaf(&pki, &server) == leaf.der);
}

#[test]
fn a_tls_flag_without_its_partner_exits_with_2() {
    let pki = Pki::new();
    pki.install_new(1);
    let cert = pki.cert_file.display().to_string();
    let key = pki.key_file.display().to_string();
    expect_start_error(&["--listen", "127.0.0.1:0", "--tls-cert", &cert], "tls-key");
    expect_start_error(&["--listen", "127.0.0.1:0", "--tls-key", &key], "tls-cert");
}
