//! The server run inside the test process through its public API: `Server::spawn` binds on
//! a thread of its own and returns a handle; the handle stops it. No binary, no signals.

use std::net::TcpStream;
use std::time::Duration;

use signaling_server::config::Config;
use signaling_server::transport::Server;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn an_in_process_server_serves_and_stops_through_its_handle() {
    let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let (handle, addr, thread) = Server::spawn(config).expect("binds");
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("upgrade");
    ws.send(Message::text(r#"{"cmd":"sId","sId":"alice"}"#)).unwrap();
    let reply = ws.read().expect("a reply");
    assert!(reply.to_text().unwrap().contains(r#""sId":"alice""#), "{reply:?}");

    handle.shutdown();
    let close = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(close.map(|frame| frame.code), Some(CloseCode::Away));
    assert!(thread.join().expect("no panic").is_ok(), "run returns Ok after a shutdown");
    assert!(TcpStream::connect(addr).is_err(), "the listener is gone");
}

#[test]
fn a_burst_of_connections_waits_in_the_accept_queue_instead_of_being_dropped() {
    // Bound, not running: nothing is accepted, so every connection must wait in the
    // kernel's accept queue. With std's backlog of 128 the rest would have their SYNs
    // dropped and could not connect within the timeout.
    let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let server = Server::bind(config).expect("binds");
    let addr = server.local_addr();
    let connected: Vec<TcpStream> = (0..300)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_millis(800))
                .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"))
        })
        .collect();
    assert_eq!(connected.len(), 300);
    drop(server);
}
