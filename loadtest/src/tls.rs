//! `wss://`: the rustls client side of every connection the load tester opens.
//!
//! The load tester is for loopback benchmarks against a server with a self-signed
//! certificate, so **it does not verify the server's certificate at all**: any chain, any
//! name, any handshake signature is accepted ([`AcceptAnyCertificate`]). Never point it at a
//! server whose identity matters. What it does do like a browser: TLS 1.2 or 1.3 on the
//! `ring` provider (the server's), ALPN `http/1.1`, SNI from the URL's host (an IP address
//! is sent as no SNI, as rustls does). Resumption is off: every connection pays a full
//! handshake, as a new browser tab would, and the server keeps no sessions anyway.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// What every TLS client of a run shares.
#[derive(Clone, Debug)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl Tls {
    /// The client config for `host` (a DNS name or an IP address, as in the URL).
    pub fn new(host: &str) -> Result<Tls, String> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: no safe protocol version: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Tls { config: Arc::new(config), server_name })
    }

    /// A new client connection. Its buffers are unbounded: the fleet hands it a whole
    /// turn's output at once and writes what it can, as it does with its own buffer.
    pub fn connection(&self) -> io::Result<ClientConnection> {
        let mut connection =
            ClientConnection::new(self.config.clone(), self.server_name.clone()).map_err(io::Error::other)?;
        connection.set_buffer_limit(None);
        Ok(connection)
    }

    /// A blocking TLS stream over `tcp` (the handshake happens on first use).
    pub fn stream(&self, tcp: TcpStream) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
        Ok(StreamOwned::new(self.connection()?, tcp))
    }
}

/// Accepts every certificate and every handshake signature: certificate verification is
/// off, on purpose. The load tester measures a server on loopback that usually has a
/// self-signed certificate; who that server is does not matter, and checking it would only
/// add generator CPU per handshake.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads `stream` to its end. Over TLS a peer that closes without `close_notify` ends the
/// stream with `UnexpectedEof`; for a `Connection: close` response that is the end too.
fn read_to_end(stream: &mut impl Read, limit: u64, out: &mut Vec<u8>) -> io::Result<()> {
    match stream.take(limit).read_to_end(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A blocking request/response on `tcp`, over TLS if `tls` is given.
pub(crate) fn exchange(tls: Option<&Tls>, tcp: TcpStream, request: &[u8], limit: u64) -> io::Result<Vec<u8>> {
    let mut response = Vec::new();
    match tls {
        None => {
            let mut tcp = tcp;
            tcp.write_all(request)?;
            read_to_end(&mut tcp, limit, &mut response)?;
        }
        Some(tls) => {
            let mut stream = tls.stream(tcp)?;
            stream.write_all(request)?;
            stream.flush()?;
            read_to_end(&mut stream, limit, &mut response)?;
        }
    }
    Ok(response)
}
