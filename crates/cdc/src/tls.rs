//! TLS to Postgres, configured the libpq way: `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` in `source.url`.
//!
//! Both connections obey the same settings: the replication connection
//! through pgwire-replication's [`TlsConfig`], every SQL connection through
//! a rustls connector built here. The modes mean what they mean to libpq:
//!
//! | sslmode | encrypted | server certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `prefer` (default) | if the server offers TLS | no | no |
//! | `require` | always | only with `sslrootcert` (as `verify-ca`) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! Without `sslrootcert` the verifying modes trust the public web PKI roots
//! (what libpq calls `sslrootcert=system`); a private CA is named with
//! `sslrootcert=/path/ca.pem`.
//!
//! One gap: pgwire-replication's `verify-ca` still refuses a certificate
//! that does not name the host (it expects rustls's older error for a name
//! mismatch), so on the replication connection `verify-ca` behaves like
//! `verify-full`. The SQL connections check the chain only.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use pgwire_replication::{SslMode as ReplicationSslMode, TlsConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// `sslmode` of libpq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// libpq's default: TLS when the server offers it, plaintext otherwise.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The value as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Option<SslMode> {
        [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.as_str() == value)
        // libpq accepts `allow` too; walbust treats it like prefer rather
        // than refuse a URL that works with psql.
        .or((value == "allow").then_some(SslMode::Prefer))
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS settings of `source.url`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CA certificates trusted for the server.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: PEM file of the client certificate (chain).
    pub cert: Option<PathBuf>,
    /// `sslkey`: PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
}

/// URL parameters that [`TlsSettings`] takes.
pub(crate) const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsSettings {
    /// Takes one URL parameter of [`TLS_PARAMS`]; an invalid value is
    /// described in the error.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "sslmode" => {
                self.mode = SslMode::parse(value).ok_or_else(|| {
                    format!("sslmode={value} is not one of disable, prefer, require, verify-ca, verify-full")
                })?;
            }
            "sslrootcert" => self.root_cert = Some(PathBuf::from(value)),
            "sslcert" => self.cert = Some(PathBuf::from(value)),
            "sslkey" => self.key = Some(PathBuf::from(value)),
            _ => return Err(format!("{key} is not a TLS parameter")),
        }
        Ok(())
    }

    /// Checks what can be checked without I/O.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("sslcert and sslkey go together: give both or neither".into());
        }
        Ok(())
    }

    /// The mode in effect: like libpq, `require` with a root certificate
    /// verifies the chain as `verify-ca` does.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    /// The replication connection's TLS settings for `host`.
    pub fn replication(&self, host: &str) -> TlsConfig {
        let mode = match self.effective_mode() {
            SslMode::Disable => ReplicationSslMode::Disable,
            SslMode::Prefer => ReplicationSslMode::Prefer,
            SslMode::Require => ReplicationSslMode::Require,
            SslMode::VerifyCa => ReplicationSslMode::VerifyCa,
            SslMode::VerifyFull => ReplicationSslMode::VerifyFull,
        };
        TlsConfig {
            mode,
            ca_pem_path: self.root_cert.clone(),
            // The transport refuses verify-full to an IP address unless the
            // name is given; given as the address, rustls checks it against
            // the certificate's IP SANs, as libpq does.
            sni_hostname: host
                .parse::<std::net::IpAddr>()
                .is_ok()
                .then(|| host.to_owned()),
            client_cert_pem_path: self.cert.clone(),
            client_key_pem_path: self.key.clone(),
        }
    }

    /// The rustls configuration of SQL connections; `None` for `disable`.
    /// Reads the certificate and key files, so a missing or malformed one
    /// is reported here, naming the file.
    pub(crate) fn client_config(&self) -> Result<Option<ClientConfig>, String> {
        let mode = self.effective_mode();
        if mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let certs = read_pem(path, "sslrootcert")?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "sslrootcert {}: no CA certificate in it",
                        path.display()
                    ));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let roots = Arc::new(roots);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots.clone());
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_pem(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        if mode != SslMode::VerifyFull {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(Relaxed {
                    inner,
                    check_chain: mode == SslMode::VerifyCa,
                }));
        }
        Ok(Some(config))
    }
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// `verify-ca` (`check_chain`): the chain must lead to a trusted root, any
/// name will do. `prefer` and `require`: nothing about the certificate is
/// checked (libpq's behaviour: it protects against eavesdropping only).
/// Either way the handshake signatures are verified, so the session key
/// belongs to the certificate's holder.
#[derive(Debug)]
struct Relaxed {
    inner: Arc<WebPkiServerVerifier>,
    check_chain: bool,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let mut tls = TlsSettings::default();
        assert_eq!(tls.effective_mode(), SslMode::Prefer);
        tls.set("sslmode", "require").unwrap();
        assert_eq!(tls.effective_mode(), SslMode::Require);
        tls.set("sslrootcert", "/etc/ca.pem").unwrap();
        assert_eq!(tls.effective_mode(), SslMode::VerifyCa);
        assert_eq!(tls.replication("db").mode, ReplicationSslMode::VerifyCa);
    }

    #[test]
    fn bad_values_are_described() {
        let mut tls = TlsSettings::default();
        let err = tls.set("sslmode", "verify_full").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        tls.set("sslcert", "/c.pem").unwrap();
        assert!(tls.validate().unwrap_err().contains("sslkey"));
    }

    #[test]
    fn verify_full_to_an_address_checks_the_address() {
        let mut tls = TlsSettings::default();
        tls.set("sslmode", "verify-full").unwrap();
        assert_eq!(
            tls.replication("127.0.0.1").sni_hostname.as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(tls.replication("db.internal").sni_hostname, None);
    }
}
