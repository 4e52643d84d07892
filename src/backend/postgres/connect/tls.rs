//! The TLS side of PostgreSQL connections, with rustls (ring): the connector a [`TlsPlan`]
//! asks for.
//!
//! - Nothing verified (`allow`, `prefer`, `require` without a root file): any certificate and
//!   host name are accepted; the handshake's signatures are still checked against the
//!   certificate presented. No root certificate is read.
//! - `verify-ca`: the chain is checked against the roots, the host name is not.
//! - `verify-full`: chain and host name (a DNS name, or an IP address against its IP SANs).
//! - Root files and the client certificate and key are read and checked when the connector is
//!   built, before anything is sent (a bad file is status 2); the system's roots
//!   (`sslrootcert=system`) are loaded on the first handshake.
//! - ALPN `postgresql`, as libpq 17 sends it (servers require it with `sslnegotiation=direct`
//!   and ignore it before PostgreSQL 17).
//! - Channel binding (`tls-server-end-point`, SCRAM-SHA-256-PLUS): the hash of the server's
//!   certificate with the hash function of its signature algorithm, SHA-256 for MD5 and SHA-1
//!   (RFC 5929 §4.1); none for algorithms it does not define (Ed25519, RSA-PSS).

use super::tls_plan::{Roots, TlsPlan, read_file};
use crate::error::{Error, Result};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whom the server's certificate must satisfy.
enum Trust {
    Anyone,
    /// These roots (from `sslrootcert` or `~/.postgresql/root.crt`).
    Roots(Arc<RootCertStore>),
    /// The system's roots, loaded on first use.
    System,
}

/// What the connector is built from: every file already read and checked.
struct Recipe {
    trust: Trust,
    hostname: bool,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

struct Shared {
    recipe: Recipe,
    config: OnceLock<std::result::Result<Arc<ClientConfig>, String>>,
}

/// The `MakeTlsConnect` handed to the pool: cheap to clone, builds its rustls configuration once.
#[derive(Clone)]
pub struct Tls(Arc<Shared>);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the files of `plan`.
pub(super) fn build(plan: &TlsPlan) -> Result<Tls> {
    let (trust, hostname) = match &plan.verify {
        None => (Trust::Anyone, false),
        Some(verify) => {
            let trust = match &verify.roots {
                Roots::System => Trust::System,
                Roots::File(path) => Trust::Roots(Arc::new(root_store(path)?)),
            };
            (trust, verify.hostname)
        }
    };
    let identity = match &plan.identity {
        Some((cert, key)) => Some(client_identity(cert, key)?),
        None => None,
    };
    Ok(Tls(Arc::new(Shared { recipe: Recipe { trust, hostname, identity }, config: OnceLock::new() })))
}

fn root_store(path: &Path) -> Result<RootCertStore> {
    let pem = read_file(path, "root certificate file (sslrootcert)")?;
    let bad = |e: String| Error::input(format!("{} holds no PEM certificate{e}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!(": {e}")))?;
    if certs.is_empty() {
        return Err(bad(String::new()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| {
            Error::input(format!("{} holds a certificate kcache cannot use as a root: {e}", path.display()))
        })?;
    }
    Ok(store)
}

fn client_identity(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_pem = read_file(cert, "client certificate file (sslcert)")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::input(format!("{} is not a PEM certificate: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::input(format!("{} holds no PEM certificate", cert.display())));
    }
    let key_pem = read_file(key, "private key file (sslkey)")?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        let text = String::from_utf8_lossy(&key_pem);
        // `BEGIN ENCRYPTED PRIVATE KEY`, or a traditional key's `Proc-Type: 4,ENCRYPTED`.
        let what = if text.contains("ENCRYPTED") {
            "is encrypted, which kcache does not support"
        } else {
            "holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)"
        };
        Error::input(format!("the private key {} {what}", key.display()))
            .with_hint("convert it with: openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8")
    })?;
    provider().key_provider.load_private_key(private.clone_key()).map_err(|e| {
        Error::input(format!(
            "cannot use the private key {} with the client certificate {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok((chain, private))
}

impl Shared {
    fn config(&self) -> io::Result<Arc<ClientConfig>> {
        let built = self.config.get_or_init(|| self.build().map(Arc::new).map_err(|e| e.to_string()));
        built.clone().map_err(io::Error::other)
    }

    fn build(&self) -> std::result::Result<ClientConfig, rustls::Error> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match &self.recipe.trust {
            Trust::Anyone => Arc::new(Lenient { provider: Arc::clone(&provider), chain: None }),
            Trust::Roots(store) => self.webpki(Arc::clone(store), &provider)?,
            Trust::System => {
                let mut store = RootCertStore::empty();
                store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if store.is_empty() {
                    return Err(rustls::Error::General("found no root certificates on this system".into()));
                }
                self.webpki(Arc::new(store), &provider)?
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.recipe.identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(config)
    }

    fn webpki(
        &self,
        roots: Arc<RootCertStore>,
        provider: &Arc<CryptoProvider>,
    ) -> std::result::Result<Arc<dyn ServerCertVerifier>, rustls::Error> {
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(if self.recipe.hostname {
            webpki
        } else {
            Arc::new(Lenient { provider: Arc::clone(provider), chain: Some(webpki) })
        })
    }
}

/// The checks short of `verify-full`: none at all (`chain: None`), or the chain without the
/// host name (`verify-ca`). The handshake's signatures are checked with the certificate either way.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        // webpki checks the chain first and the name last: a name error means a good chain.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One connection's TLS handshake, for `domain`.
pub struct Connect {
    shared: Arc<Shared>,
    domain: String,
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        Ok(Connect { shared: Arc::clone(&self.0), domain: domain.to_string() })
    }
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.shared.config()?;
            let name = ServerName::try_from(self.domain)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("not a host name for TLS: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
            Ok(TlsStream(stream))
        })
    }
}

/// A TLS connection to the server.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.0.get_ref();
        match connection.peer_certificates().and_then(|c| c.first()).and_then(|c| server_end_point(c)) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point` of a certificate (DER).
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Signature algorithm OIDs (DER contents) and the hash each one calls for.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_algorithm(cert)?;
    let hash = match oid {
        [r @ .., 0x04 | 0x05 | 0x0b] if r == RSA => 256, // md5, sha1, sha256 WithRSAEncryption
        [r @ .., 0x0c] if r == RSA => 384,
        [r @ .., 0x0d] if r == RSA => 512,
        [e @ .., 0x01] if e == ECDSA => 256, // ecdsa-with-SHA1
        [e @ .., 0x03, 0x02] if e == ECDSA => 256,
        [e @ .., 0x03, 0x03] if e == ECDSA => 384,
        [e @ .., 0x03, 0x04] if e == ECDSA => 512,
        _ => return None,
    };
    Some(match hash {
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The OID of a certificate's `signatureAlgorithm`: `Certificate ::= SEQUENCE { tbsCertificate,
/// signatureAlgorithm AlgorithmIdentifier, signature }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der(cert, 0x30)?;
    let (_tbs, rest) = der(certificate, 0x30)?;
    let (algorithm, _) = der(rest, 0x30)?;
    let (oid, _) = der(algorithm, 0x06)?;
    Some(oid)
}

/// The DER element of type `tag` at the start of `input`: its contents, and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if found != tag {
        return None;
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |len, b| (len << 8) | usize::from(*b)), &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").to_vec()
    }

    #[test]
    fn channel_binding_hashes_with_the_signature_algorithm() {
        use sha2::Digest;
        // RSA with SHA-256, and ECDSA with SHA-256: SHA-256 of the DER.
        for pem in [super::super::tests::CERT_PEM, super::super::tests::CERT2_PEM] {
            let cert = der_of(pem);
            assert_eq!(server_end_point(&cert), Some(sha2::Sha256::digest(&cert).to_vec()));
        }
        let cert = der_of(super::super::tests::CERT_PEM);
        assert_eq!(
            signature_algorithm(&cert),
            Some(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b][..]),
            "sha256WithRSAEncryption"
        );
        // Truncated or foreign input: no binding, no panic.
        for n in 0..cert.len() {
            let _ = server_end_point(&cert[..n]);
        }
        assert_eq!(server_end_point(b""), None);
        assert_eq!(server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
