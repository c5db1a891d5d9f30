//! The TLS server configuration behind `--tls-cert FILE --tls-key FILE`: reading the PEM
//! certificate chain and private key, checking that they belong together, and the rustls
//! settings every TLS connection of the listener shares. No sockets: the transport builds a
//! `rustls::ServerConnection` from the returned config for each accepted connection, and
//! calls [`load_server_config`] again on SIGHUP (a failed reload keeps the previous config,
//! so every error here must leave the caller's state untouched: this module has none).
//!
//! rustls runs on the `ring` provider, chosen explicitly rather than through the
//! process-wide default, so no aws-lc or OpenSSL is built or linked and nothing depends on
//! which provider another crate installed first.
//!
//! Per-connection memory is the connection's business, not the config's: the connection
//! machine (`connection/wire.rs`) runs rustls's unbuffered API and owns every buffer.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};

/// The only application protocol served: WebSocket upgrades and the few HTTP endpoints are
/// HTTP/1.1. A client that offers ALPN without it is refused by rustls during the
/// handshake, which is right: it would speak a protocol we cannot parse.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Reads the certificate chain (PEM, leaf first) from `cert` and the private key (PEM:
/// PKCS#8, PKCS#1 or SEC1) from `key`, and builds the server config. The error is one line
/// that names the file and what is wrong with it, fit for the start-up error and the
/// reload log.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_chain(cert)?;
    let certified = certified_key(&provider, chain, read_key(key)?, cert, key)?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: the crypto provider supports no safe protocol version: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    // No resumption, stateless or stateful. Clients of a signaling server connect once and
    // stay connected, so a resumed handshake is rare and saves little; tickets, on the
    // other hand, would cost every handshake an extra write and CPU time (two tickets by
    // default), and a session cache would hold state for clients that may never come back.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    // 0-RTT data would have to be buffered before the handshake completes and is
    // replayable; both are already rustls's defaults, pinned here because they matter.
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error("certificate", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate", path, e))?;
    if chain.is_empty() {
        return Err(format!(
            "TLS certificate file {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks, \
             leaf first)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error("key", path, e))
}

/// One message per way a PEM file can be wrong, naming the file.
fn pem_error(what: &str, path: &Path, error: pem::Error) -> String {
    let path = path.display();
    match error {
        pem::Error::Io(e) => format!("TLS {what} file {path}: cannot read it: {e}"),
        pem::Error::NoItemsFound if what == "key" => format!(
            "TLS key file {path}: no private key in it (expected an unencrypted PEM \"BEGIN PRIVATE KEY\", \
             \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)"
        ),
        pem::Error::NoItemsFound => format!("TLS {what} file {path}: no {what} in it"),
        other => format!("TLS {what} file {path}: not valid PEM: {other}"),
    }
}

/// The chain and key as rustls will serve them, after checking that the key is one the
/// provider can sign with and that it is the leaf certificate's key: a mismatch would
/// otherwise surface only as failed handshakes, long after start-up or reload said OK.
fn certified_key(
    provider: &CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, String> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("TLS key file {}: unusable private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(format!(
            "TLS key file {}: the private key does not match the certificate in {}",
            key_path.display(),
            cert_path.display()
        )),
        // ring can always derive the public key, so `Unknown` means a key this check cannot
        // vouch for: refuse it rather than serve a pair that may not work.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Err(format!(
            "TLS key file {}: cannot check that the private key matches the certificate in {}",
            key_path.display(),
            cert_path.display()
        )),
        Err(e) => Err(format!(
            "TLS certificate file {}: the first (leaf) certificate is not valid: {e}",
            cert_path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static RUNS: AtomicU32 = AtomicU32::new(0);
            let run = RUNS.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("signaling-tls-unit-{}-{run}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A CA, and a leaf for 127.0.0.1 and localhost that it signed.
    struct Pki {
        ca: CertifiedIssuer<'static, KeyPair>,
        leaf_pem: String,
        leaf_key_pem: String,
    }

    fn pki() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        Pki { ca, leaf_pem: leaf.pem(), leaf_key_pem: leaf_key.serialize_pem() }
    }

    /// Runs a whole handshake in memory between `server` and a client trusting `ca_der`
    /// that offers `alpn`; returns the negotiated protocol, or the error of either side.
    fn handshake(
        server: Arc<ServerConfig>,
        ca_der: &CertificateDer<'static>,
        alpn: &[&[u8]],
    ) -> Result<Option<Vec<u8>>, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            transfer(&mut client, &mut server)?;
            transfer(&mut server, &mut client)?;
            if !client.is_handshaking() && !server.is_handshaking() {
                // Application data flows too, both ways.
                client.writer().write_all(b"ping").unwrap();
                transfer(&mut client, &mut server)?;
                let mut received = [0u8; 4];
                server.reader().read_exact(&mut received).unwrap();
                assert_eq!(&received, b"ping");
                return Ok(client.alpn_protocol().map(<[u8]>::to_vec));
            }
        }
        panic!("the handshake did not finish in 10 round trips");
    }

    /// Moves whatever TLS bytes `from` has to send into `to`, and lets `to` process them.
    fn transfer<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
    ) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        from.write_tls(&mut bytes).unwrap();
        // `read_tls` takes an empty read for the peer's end of stream.
        if !bytes.is_empty() {
            to.read_tls(&mut bytes.as_slice()).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    #[test]
    fn a_valid_chain_and_key_load_and_serve_http_1_1() {
        let dir = TempDir::new();
        let pki = pki();
        // The chain as deployed: leaf first, then its issuer.
        let cert = dir.write("cert.pem", format!("{}{}", pki.leaf_pem, pki.ca.pem()));
        let key = dir.write("key.pem", &pki.leaf_key_pem);
        let config = load_server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(config.send_tls13_tickets, 0);

        let negotiated = handshake(config.clone(), pki.ca.der(), &[b"h2", b"http/1.1"]).unwrap();
        assert_eq!(negotiated.as_deref(), Some(&b"http/1.1"[..]));
        // A client without ALPN (a plain TLS tool) is served too.
        assert_eq!(handshake(config.clone(), pki.ca.der(), &[]).unwrap(), None);
        // One that wants only another protocol is refused during the handshake.
        assert!(handshake(config, pki.ca.der(), &[b"h2"]).is_err());
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = TempDir::new();
        let pki = pki();
        let cert = dir.write("cert.pem", &pki.leaf_pem);
        let key = dir.write("key.pem", &pki.leaf_key_pem);
        let absent = dir.0.join("absent.pem");

        let error = load_server_config(&absent, &key).unwrap_err();
        assert!(error.contains(&absent.display().to_string()), "{error}");
        assert!(error.contains("certificate file") && error.contains("cannot read"), "{error}");
        let error = load_server_config(&cert, &absent).unwrap_err();
        assert!(error.contains(&absent.display().to_string()), "{error}");
        assert!(error.contains("key file") && error.contains("cannot read"), "{error}");
    }

    #[test]
    fn a_file_without_pem_is_named_with_what_it_lacks() {
        let dir = TempDir::new();
        let pki = pki();
        let cert = dir.write("cert.pem", &pki.leaf_pem);
        let key = dir.write("key.pem", &pki.leaf_key_pem);
        let garbage = dir.write("garbage.pem", "this is not a certificate\n\x00\x01\x02\n");
        let empty = dir.write("empty.pem", "");

        for bad in [&garbage, &empty] {
            let error = load_server_config(bad, &key).unwrap_err();
            assert!(error.contains(&bad.display().to_string()), "{error}");
            assert!(error.contains("no certificate in it"), "{error}");
            let error = load_server_config(&cert, bad).unwrap_err();
            assert!(error.contains(&bad.display().to_string()), "{error}");
            assert!(error.contains("no private key in it"), "{error}");
        }
        // The files swapped: a certificate is no key, and a key is no certificate.
        let error = load_server_config(&key, &cert).unwrap_err();
        assert!(error.contains("no certificate in it"), "{error}");
        let error = load_server_config(&cert, &cert).unwrap_err();
        assert!(error.contains("no private key in it"), "{error}");
    }

    #[test]
    fn a_broken_pem_block_is_named() {
        let dir = TempDir::new();
        let pki = pki();
        let key = dir.write("key.pem", &pki.leaf_key_pem);
        // Cut off before its END line, as a truncated copy would be.
        let truncated = dir.write("truncated.pem", &pki.leaf_pem[..pki.leaf_pem.len() / 2]);
        let error = load_server_config(&truncated, &key).unwrap_err();
        assert!(error.contains(&truncated.display().to_string()), "{error}");
        assert!(error.contains("not valid PEM"), "{error}");
        // Well-formed PEM whose content is no certificate.
        let bogus =
            dir.write("bogus.pem", "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n");
        let error = load_server_config(&bogus, &key).unwrap_err();
        assert!(error.contains(&bogus.display().to_string()), "{error}");
        assert!(error.contains("not valid"), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = TempDir::new();
        let pki = pki();
        let cert = dir.write("cert.pem", &pki.leaf_pem);
        let other_key = dir.write("other.pem", KeyPair::generate().unwrap().serialize_pem());
        let error = load_server_config(&cert, &other_key).unwrap_err();
        assert!(error.contains(&other_key.display().to_string()), "{error}");
        assert!(error.contains(&cert.display().to_string()), "{error}");
        assert!(error.contains("does not match"), "{error}");
        // The CA's own key with the leaf certificate: also not the leaf's key.
        let ca_key = dir.write("ca-key.pem", pki.ca.key().serialize_pem());
        let error = load_server_config(&cert, &ca_key).unwrap_err();
        assert!(error.contains("does not match"), "{error}");
    }
}
