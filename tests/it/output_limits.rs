//! The soft output limit over real sockets: a client that reads, but more slowly than it is
//! sent to, is closed once its held output has stayed over `--max-output-soft` for
//! `--max-output-soft-seconds`, although every write makes progress.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use simd_json::prelude::*;

use crate::harness::*;

/// `GET /metrics`, the value of one sample line.
fn metric(server: &Server, name: &str) -> f64 {
    let response = http_exchange(server, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    response
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{response}"))
}

/// An upgraded, registered client whose socket takes in little at a time: a small receive
/// buffer, set before connecting so the window it advertises stays small.
fn slow_reader(server: &Server, sid: &str) -> TcpStream {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&SockAddr::from(server.addr)).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(UPGRADE_REQUEST.as_bytes()).expect("upgrade");
    let head = read_response_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let register = format!(r#"{{"cmd":"sId","sId":"{sid}"}}"#);
    stream.write_all(&frame(FIN | OP_TEXT, true, register.as_bytes())).expect("register");
    stream
}

#[test]
fn a_client_reading_too_slowly_for_what_it_is_sent_is_closed_by_the_soft_limit() {
    let server = Server::start_with(&[
        "--max-output-soft",
        "8192",
        "--max-output-soft-seconds",
        "1",
        // Far longer than the test: neither liveness nor the no-progress rule can fire.
        "--ping-interval",
        "30",
        "--rate-limit",
        "0",
    ]);
    let slow = slow_reader(&server, "slow");
    let mut flooder = server.register("flooder");
    let mut bystanders = Pair::open(&server, "carol", "dave");

    // The slow client keeps reading, 256 bytes every 20 ms: always some progress.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = Arc::clone(&done);
        let mut slow = slow.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut chunk = [0u8; 256];
            let mut total = 0usize;
            while !done.load(Ordering::Relaxed) {
                match slow.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            total
        })
    };

    let data = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1000));
    let notify = format!(r#"{{"cmd":"notify","opponentId":"slow","type":"flood","data":{data}}}"#);
    let started = Instant::now();
    let reason = r#"signaling_connections_closed_total{reason="output_soft_limit"}"#;
    loop {
        for _ in 0..200 {
            flooder.send(&notify);
        }
        if metric(&server, reason) >= 1.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the slow reader was never closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    // Not before the soft limit's second has passed.
    assert!(took >= Duration::from_millis(900), "closed after only {took:?}");
    done.store(true, Ordering::Relaxed);
    let read = reader.join().expect("reader");
    assert!(read > 256, "the slow client did read ({read} bytes)");
    assert_eq!(metric(&server, r#"signaling_connections_closed_total{reason="output_limit"}"#), 0.0);
    assert_eq!(metric(&server, "signaling_clients_registered"), 3.0, "slow is gone, the others stay");
    bystanders.relay_works();
    flooder.send(r#"{"cmd":"notify","opponentId":"carol","type":"still here"}"#);
    assert_eq!(bystanders.a.expect("notify").get_str("opponentId"), Some("flooder"));
}
