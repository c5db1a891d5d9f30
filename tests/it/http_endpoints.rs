//! The plain-HTTP side of the port: health, metrics, the demo page and the JS client.

use simd_json::prelude::*;

use crate::harness::*;

fn get(server: &Server, path: &str) -> (u16, String) {
    let response = http_exchange(server, format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    let status = response.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled or labelled sample line, e.g. `signaling_sessions{state="new"}`.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{metrics}"))
}

#[test]
fn healthz_answers_200() {
    let server = Server::start();
    assert_eq!(get(&server, "/healthz"), (200, "ok\n".to_owned()));
    let head = http_exchange(&server, b"HEAD /healthz HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head:?}");
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let server = Server::start();
    assert_eq!(get(&server, "/nope").0, 404);
    assert_eq!(get(&server, "/metrics/x").0, 404);
    let post = http_exchange(&server, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
}

#[test]
fn the_demo_page_and_the_client_are_served() {
    let server = Server::start();
    let (status, page) = get(&server, "/");
    assert_eq!(status, 200);
    assert!(page.to_ascii_lowercase().contains("<!doctype html>"), "{page:.200}");
    let (status, script) = get(&server, "/client.js");
    assert_eq!(status, 200);
    assert!(script.contains("export"), "an ES module");
    let response = http_exchange(&server, b"GET /client.js HTTP/1.1\r\n\r\n");
    assert!(response.contains("Content-Type: text/javascript"), "{response:.300}");
}

#[test]
fn a_websocket_upgrade_works_on_every_path_including_the_pages() {
    let server = Server::start();
    for path in ["/", "/metrics", "/healthz", "/any/thing?x=1"] {
        let stream = std::net::TcpStream::connect(server.addr).expect("connect");
        let url = format!("ws://{}{path}", server.addr);
        let (mut ws, response) = tungstenite::client(url, stream).expect("upgrade");
        assert_eq!(response.status(), 101, "{path}");
        ws.send(tungstenite::Message::text(r#"{"cmd":"bogus"}"#)).expect("send");
        let reply = ws.read().expect("reply");
        assert!(reply.to_text().expect("text").contains("9002"), "{path}: {reply:?}");
    }
}

#[test]
fn metrics_move_when_clients_act() {
    let server = Server::start();
    let before = get(&server, "/metrics").1;
    assert!(before.contains("# TYPE signaling_loop_iteration_seconds histogram"), "{before}");
    assert_eq!(sample(&before, "signaling_clients_registered"), 0.0);
    assert_eq!(sample(&before, r#"signaling_commands_received_total{cmd="sId"}"#), 0.0);

    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    alice.send(r#"{"cmd":"session","opponentId":"bob"}"#);
    let session = alice.expect("session");
    alice.expect("ssu");
    let sid = session.get_str("sessionId").expect("sessionId").to_owned();
    bob.expect("ssu");
    alice.send(&format!(r#"{{"cmd":"call","sessionId":"{sid}","offer":{{}}}}"#));
    bob.expect("call");
    alice.expect("ssu");
    alice.send("not json");
    alice.expect_error(9000);
    alice.send(r#"{"cmd":"notify","opponentId":"nobody","type":"x"}"#);
    alice.expect_error(9301);

    let during = get(&server, "/metrics").1;
    assert_eq!(sample(&during, "signaling_clients_registered"), 2.0);
    assert!(sample(&during, "signaling_connections_open") >= 2.0);
    assert_eq!(sample(&during, r#"signaling_sessions{state="pending"}"#), 1.0);
    assert_eq!(sample(&during, r#"signaling_sessions{state="new"}"#), 0.0);
    assert_eq!(sample(&during, r#"signaling_commands_received_total{cmd="sId"}"#), 2.0);
    assert_eq!(sample(&during, r#"signaling_commands_received_total{cmd="session"}"#), 1.0);
    assert_eq!(sample(&during, r#"signaling_commands_received_total{cmd="call"}"#), 1.0);
    assert_eq!(sample(&during, r#"signaling_commands_received_total{cmd="invalid"}"#), 1.0);
    assert_eq!(sample(&during, r#"signaling_errors_sent_total{code="9000"}"#), 1.0);
    assert_eq!(sample(&during, r#"signaling_errors_sent_total{code="9301"}"#), 1.0);
    assert!(
        sample(&during, "signaling_bytes_received_total") > sample(&before, "signaling_bytes_received_total")
    );
    assert!(sample(&during, "signaling_bytes_sent_total") > sample(&before, "signaling_bytes_sent_total"));
    assert!(sample(&during, "signaling_client_lists_sent_total") >= 1.0);
    assert!(sample(&during, "signaling_loop_iteration_seconds_count") > 0.0);

    drop(bob);
    let leave = alice.expect("leave");
    assert_eq!(leave.get_str("opponentId"), Some("bob"));
    alice.expect("ssu");
    let after = get(&server, "/metrics").1;
    assert_eq!(sample(&after, "signaling_clients_registered"), 1.0);
    assert_eq!(sample(&after, r#"signaling_sessions{state="pending"}"#), 0.0);
    assert_eq!(sample(&after, r#"signaling_connections_closed_total{reason="connection_lost"}"#), 1.0);
    // Every earlier /metrics request counted as a connection closed after an HTTP answer.
    assert!(sample(&after, r#"signaling_connections_closed_total{reason="http"}"#) >= 2.0);
}
