//! TLS on the client side of the tests: certificates made on the spot with rcgen (no key is
//! ever checked in), the PEM files the server is started with, a `wss://` client (rustls
//! over a `TcpStream`, wrapped by tungstenite, which does no TLS of its own here) and an
//! HTTPS GET. The client trusts the test's CA alone, offers ALPN `http/1.1`, and checks the
//! server's certificate for the IP address it connects to, as a browser would.

// Shared by tls.rs and browser.rs; not each helper is used by each.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, PublicKeyData, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sha2::{Digest, Sha256};

use crate::harness::{Client, PATIENCE, Server, Stream};

/// A client's TLS connection to the server.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Stream for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A test CA, the directory holding the server's `cert.pem` and `key.pem`, and the client
/// config that trusts the CA. The directory is removed on drop.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    client_config: Arc<ClientConfig>,
}

/// A leaf certificate for 127.0.0.1 (and `localhost`) signed by the test CA.
pub struct Leaf {
    /// The chain as the server's `--tls-cert` file holds it: leaf first, then the CA.
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// The leaf's SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
}

impl Pki {
    /// A new CA and a fresh directory; no files written yet.
    pub fn new() -> Pki {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("signaling-tls-it-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "signaling-server test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).expect("the CA is a valid trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pki {
            ca,
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            dir,
            client_config: Arc::new(config),
        }
    }

    /// A client config that trusts this CA alone and offers ALPN `http/1.1`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config.clone()
    }

    /// A new leaf with this serial number and a new key.
    pub fn issue(&self, serial: u64) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf parameters");
        params.serial_number = Some(SerialNumber::from(serial));
        params.distinguished_name.push(DnType::CommonName, format!("signaling-server test leaf {serial}"));
        let cert = params.signed_by(&key, &self.ca).expect("the CA signs the leaf");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            spki: key.subject_public_key_info(),
        }
    }

    /// Writes `leaf` as the server's certificate and key files (overwriting them).
    pub fn install(&self, leaf: &Leaf) {
        std::fs::write(&self.cert_file, &leaf.chain_pem).expect("write cert.pem");
        std::fs::write(&self.key_file, &leaf.key_pem).expect("write key.pem");
    }

    /// Issues a leaf with `serial`, installs it, and returns it.
    pub fn install_new(&self, serial: u64) -> Leaf {
        let leaf = self.issue(serial);
        self.install(&leaf);
        leaf
    }

    /// `--tls-cert FILE --tls-key FILE` for these files.
    pub fn args(&self) -> [String; 4] {
        [
            "--tls-cert".to_owned(),
            self.cert_file.display().to_string(),
            "--tls-key".to_owned(),
            self.key_file.display().to_string(),
        ]
    }

    /// Completes a TLS handshake with the server (the peer must present a certificate of
    /// this CA for 127.0.0.1) and returns the stream, or the error of the connect or the
    /// handshake.
    pub fn try_connect(&self, server: &Server) -> std::io::Result<TlsStream> {
        let sock = TcpStream::connect(server.addr)?;
        sock.set_read_timeout(Some(PATIENCE))?;
        sock.set_nodelay(true)?;
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let conn = ClientConnection::new(self.client_config.clone(), name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, sock);
        // Finish the handshake here so that its failure is reported as such, not as a
        // failed WebSocket upgrade.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    pub fn connect(&self, server: &Server) -> TlsStream {
        self.try_connect(server).unwrap_or_else(|e| panic!("TLS handshake with {} failed: {e}", server.addr))
    }

    /// A `wss://` client: TLS, then the WebSocket upgrade over it.
    pub fn wss(&self, server: &Server) -> Client<TlsStream> {
        let stream = self.connect(server);
        let alpn = stream.conn.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "the server must choose ALPN http/1.1");
        let (ws, _) = tungstenite::client(wss_url(server), stream).expect("websocket handshake over TLS");
        Client { ws }
    }

    /// A `wss://` client registered as `sid`, its registration reply consumed.
    pub fn register(&self, server: &Server, sid: &str) -> Client<TlsStream> {
        let mut client = self.wss(server);
        client.register_as(sid);
        client
    }

    /// `GET path` over HTTPS; returns the status code and the body. The server closes the
    /// connection after the response, so the body is everything after the head.
    pub fn https_get(&self, server: &Server, path: &str) -> (u16, String) {
        let mut stream = self.connect(server);
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr);
        stream.write_all(request.as_bytes()).expect("write the request");
        stream.flush().expect("flush the request");
        let response = read_to_close(&mut stream);
        let response = String::from_utf8_lossy(&response);
        let (head, body) =
            response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {response:?}"));
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {head:?}"));
        (status, body.to_owned())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn wss_url(server: &Server) -> String {
    format!("wss://{}/", server.addr)
}

/// Reads until the server ends the connection, with or without a TLS close_notify.
fn read_to_close(stream: &mut TlsStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A TCP close without close_notify, or a reset after the response.
            Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => {
                return bytes;
            }
            Err(e) => panic!("reading the HTTPS response failed after {} bytes: {e}", bytes.len()),
        }
    }
}

/// The certificate the server presented on this connection (the leaf).
pub fn peer_leaf(stream: &TlsStream) -> CertificateDer<'static> {
    let chain = stream.conn.peer_certificates().expect("the server presented certificates");
    chain.first().expect("a leaf certificate").clone().into_owned()
}

/// Chromium's `--ignore-certificate-errors-spki-list` entry for a key: base64 of the
/// SHA-256 of its SubjectPublicKeyInfo DER.
pub fn spki_pin(spki_der: &[u8]) -> String {
    base64(&Sha256::digest(spki_der))
}

/// Standard base64 with padding (RFC 4648, section 4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648_test_vectors() {
    for (input, output) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), output);
    }
}
