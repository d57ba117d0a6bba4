//! TLS (and mTLS) on the gRPC port, with rustls on the ring provider (no
//! OpenSSL), and reload of the certificate and key when their files change.
//!
//! tonic's own `ServerTlsConfig` builds one acceptor with a fixed identity,
//! so it cannot rotate a certificate without a restart. Instead:
//!
//! - the rustls `ServerConfig` gets a certificate *resolver* (`Reloadable`)
//!   that hands every new handshake the current `CertifiedKey` from an
//!   `ArcSwap`; swapping it changes what new connections see, while
//!   established connections keep the session they negotiated;
//! - a watcher reads both files every `RELOAD_PERIOD` (cert-manager and Vault
//!   agent rewrite them in place; Kubernetes swaps a volume's symlink) and
//!   swaps in the new pair when its content changed *and* it parses *and*
//!   the key matches the certificate. Anything else is logged once and the
//!   old certificate stays in use;
//! - `incoming` accepts TCP connections and runs each handshake in its own
//!   task (bounded by `HANDSHAKE_TIMEOUT`), so a slow or failing client never
//!   holds up the accept loop; finished handshakes are handed to tonic's
//!   `serve_with_incoming_shutdown`. ALPN offers `h2` only (gRPC is HTTP/2).
//!   The HTTP listener (`--http-listen`, forward-auth for gateways) gets the
//!   same certificate, reloads and client-certificate rule through
//!   `http_incoming`, whose ALPN offers `http/1.1` (what nginx, Caddy and
//!   Traefik speak to an auth endpoint).
//!
//! With `--tls-client-ca`, a client certificate signed by that CA is
//! mandatory: a client without one, or with another CA's, fails the handshake.
//!
//! The private key's file content is read into a `SecretSlice` (zeroed on
//! drop, never printed) and only parsed from there.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use secrecy::{ExposeSecret, SecretSlice};
use tokio::{net::TcpListener, net::TcpStream, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ConfigError,
    error::{Error, Result},
    telemetry::metrics,
};

/// How often the certificate and key files are checked for a change.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(1);
/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const BACKLOG: usize = 128;

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (mTLS), if any.
    pub client_ca: Option<PathBuf>,
}

/// The TLS side of the gRPC listener.
pub struct Tls {
    acceptor: TlsAcceptor,
    /// The same configuration with ALPN `http/1.1`, for the HTTP listener.
    http_acceptor: TlsAcceptor,
    resolver: Arc<Reloadable>,
}

impl Tls {
    /// Loads the files and builds the server configuration. A missing or bad
    /// file here is a start-up error naming the flag.
    pub fn load(files: &TlsFiles) -> Result<Self, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (pair, fingerprint) = read_pair(&files.cert, &files.key)?;
        let key = certified_key(&pair, &provider)?;
        let resolver = Arc::new(Reloadable {
            current: ArcSwap::from_pointee(key),
            files: files.clone(),
            provider: Arc::clone(&provider),
            seen: parking_lot::Mutex::new(fingerprint),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("--tls-cert", format!("TLS protocol versions: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let pem = read(ca, "--tls-client-ca")?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        ConfigError::new("--tls-client-ca", format!("{}: {e}", ca.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        ConfigError::new("--tls-client-ca", format!("{}: {e}", ca.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(ConfigError::new(
                        "--tls-client-ca",
                        format!("{} holds no certificate", ca.display()),
                    ));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| ConfigError::new("--tls-client-ca", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&resolver) as _);
        let mut http = config.clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            http_acceptor: TlsAcceptor::from(Arc::new(http)),
            resolver,
        })
    }

    /// Checks the files every `RELOAD_PERIOD` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(RELOAD_PERIOD) => {}
            }
            let resolver = Arc::clone(&self.resolver);
            // File reads and parsing off the async workers.
            tokio::task::spawn_blocking(move || resolver.reload())
                .await
                .map_err(|e| Error::Internal(format!("certificate reload: {e}")))?;
        }
    }

    /// TLS connections accepted on `listener`, handshakes done (ALPN `h2`).
    /// Accepting stops (and the socket closes) when the server drops the stream.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        accept_loop(self.acceptor.clone(), listener)
    }

    /// As `incoming`, for the HTTP/1.1 listener (ALPN `http/1.1`).
    pub fn http_incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        accept_loop(self.http_acceptor.clone(), listener)
    }
}

/// Accepts on `listener` and hands each connection's handshake to its own task.
fn accept_loop(
    acceptor: TlsAcceptor,
    listener: TcpListener,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, retry.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Small responses must not wait for delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Hands each handshake the current certificate; `reload` replaces it.
struct Reloadable {
    current: ArcSwap<CertifiedKey>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    /// Fingerprint of the file contents last loaded or last refused, so each
    /// change is acted on (and logged) once.
    seen: parking_lot::Mutex<blake3::Hash>,
}

impl fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field("cert", &self.files.cert)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Reloadable {
    fn reload(&self) {
        let (pair, fingerprint) = match read_pair(&self.files.cert, &self.files.key) {
            Ok(read) => read,
            Err(e) => {
                // A file missing for a moment (mid-rotation) is not worth
                // more than one line per distinct failure.
                let failed = blake3::hash(e.to_string().as_bytes());
                if std::mem::replace(&mut *self.seen.lock(), failed) != failed {
                    metrics::tls_reload(false);
                    tracing::warn!(error = %e, "cannot read the TLS certificate or key; keeping the current certificate");
                }
                return;
            }
        };
        if *self.seen.lock() == fingerprint {
            return;
        }
        *self.seen.lock() = fingerprint;
        match certified_key(&pair, &self.provider) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                metrics::tls_reload(true);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded; new connections use it");
            }
            Err(e) => {
                metrics::tls_reload(false);
                tracing::warn!(error = %e, "the new TLS certificate or key is unusable; keeping the current certificate");
            }
        }
    }
}

/// A certificate chain's PEM and its key's PEM, as read from disk.
struct Pair {
    cert: Vec<u8>,
    key: SecretSlice<u8>,
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(setting, format!("cannot read {}: {e}", path.display())))
}

/// Reads both files, with a fingerprint of their contents (never shown).
fn read_pair(cert: &Path, key: &Path) -> Result<(Pair, blake3::Hash), ConfigError> {
    let cert = read(cert, "--tls-cert")?;
    let key = SecretSlice::from(read(key, "--tls-key")?);
    let mut h = blake3::Hasher::new();
    h.update(&(cert.len() as u64).to_le_bytes());
    h.update(&cert);
    h.update(key.expose_secret());
    let fingerprint = h.finalize();
    Ok((Pair { cert, key }, fingerprint))
}

fn certified_key(pair: &Pair, provider: &CryptoProvider) -> Result<CertifiedKey, ConfigError> {
    let chain = CertificateDer::pem_slice_iter(&pair.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new("--tls-cert", format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(ConfigError::new("--tls-cert", "holds no certificate"));
    }
    // The parse error of a key names no key material (rustls-pki-types).
    let key = PrivateKeyDer::from_pem_slice(pair.key.expose_secret())
        .map_err(|e| ConfigError::new("--tls-key", format!("not a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| ConfigError::new("--tls-key", format!("unusable with the certificate: {e}")))
}

/// A throw-away certificate authority for the integration tests and the
/// benchmark's TLS phase: certificates are made at run time, so no private
/// key is ever committed. The server never uses this.
pub mod test_pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use crate::error::{Error, Result};

    fn err(e: rcgen::Error) -> Error {
        Error::Internal(format!("test certificate: {e}"))
    }

    pub struct TestCa {
        cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    /// A certificate and its private key, both PEM.
    pub struct Issued {
        pub cert_pem: String,
        pub key_pem: String,
    }

    impl TestCa {
        pub fn new(name: &str) -> Result<Self> {
            let key = KeyPair::generate().map_err(err)?;
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).map_err(err)?;
            Ok(Self {
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            })
        }

        pub fn cert_pem(&self) -> &str {
            &self.cert_pem
        }

        /// A server certificate for `names` (DNS names or IP addresses).
        pub fn server(&self, names: &[&str]) -> Result<Issued> {
            self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
        }

        /// A client certificate with common name `name`.
        pub fn client(&self, name: &str) -> Result<Issued> {
            self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
        }

        fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Result<Issued> {
            let key = KeyPair::generate().map_err(err)?;
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names.clone()).map_err(err)?;
            if let Some(first) = names.first() {
                params
                    .distinguished_name
                    .push(DnType::CommonName, first.as_str());
            }
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }
    }
}
