//! TLS set-up: configurations from certificate files, the client-side trust
//! choices, and `sockloop tls-selfsigned`.
//!
//! The TLS *session* is not here: it is a `rustls::Connection` inside a
//! [`Conn`](crate::conn::Conn), driven by the reactor's own readable and
//! writable events like any other connection state. This module only builds
//! the `rustls` configurations those sessions start from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args as ClapArgs;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};

/// How long a TLS handshake may take before that connection is closed.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Server options: `--tls-cert FILE --tls-key FILE`.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct ServerTlsArgs {
    /// Serve TLS with this certificate chain (PEM). Needs --tls-key.
    /// `sockloop tls-selfsigned --out DIR` makes one for local use.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The server configuration, if TLS was asked for.
    pub fn config(&self) -> Result<Option<Arc<ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => server_config(cert, key).map(Some),
            _ => Ok(None),
        }
    }
}

/// Client options: `--tls [--tls-ca FILE | --insecure]`.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct ClientTlsArgs {
    /// Speak TLS to the server. Needs --tls-ca FILE or --insecure.
    #[arg(long)]
    pub tls: bool,
    /// Trust the certificates in this PEM file (e.g. the cert.pem of tls-selfsigned).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        conflicts_with = "insecure"
    )]
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate (encryption without authentication: local tests only).
    #[arg(long, requires = "tls")]
    pub insecure: bool,
}

impl ClientTlsArgs {
    /// The client configuration, if TLS was asked for.
    pub fn config(&self) -> Result<Option<Arc<ClientConfig>>> {
        if !self.tls {
            return Ok(None);
        }
        if self.tls_ca.is_none() && !self.insecure {
            return Err(Error::Usage(
                "--tls needs --tls-ca FILE (the server's certificate or its CA) or --insecure"
                    .into(),
            ));
        }
        client_config(self.tls_ca.as_deref()).map(Some)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn tls_error(what: String) -> impl FnOnce(rustls::Error) -> Error {
    move |e| Error::Failed(format!("{what}: {e}"))
}

/// A server configuration from a PEM certificate chain and private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect())
        .map_err(|e| {
            Error::Usage(format!(
                "cannot read a certificate from {}: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::Usage(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("TLS set-up".into()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_error(format!(
            "certificate {} and its key",
            cert.display()
        )))?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the certificates in `ca`, or any
/// certificate when `ca` is `None` (`--insecure`).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("TLS set-up".into()))?;
    let config = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Usage(format!(
                        "cannot read certificates from {}: {e}",
                        path.display()
                    ))
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Usage(format!(
                    "no usable certificate in {}",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the client checks the server's certificate against: the host part of `HOST:PORT`.
pub fn server_name(input: &str) -> Result<ServerName<'static>> {
    let host = match crate::addr::parse(input)? {
        crate::addr::Endpoint::Ip(addr) => addr.ip().to_string(),
        crate::addr::Endpoint::Host(host, _) => host,
    };
    ServerName::try_from(host.clone()).map_err(|_| Error::BadAddr {
        input: input.to_string(),
        why: format!("'{host}' is not a valid TLS server name"),
    })
}

/// `--insecure`: checks signatures (so the session is real) but not who signed.
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
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The long `--help` text of `tls-selfsigned` (also given to its subcommand in `cli.rs`,
/// where a doc comment would otherwise replace it).
pub const LONG_ABOUT: &str = "Make a self-signed certificate and key for local TLS tests.\n\n\
        Writes DIR/cert.pem and DIR/key.pem, valid for localhost, 127.0.0.1 and ::1 \
        (plus any --name). Clients trust it with --tls-ca DIR/cert.pem.";

/// Options of `sockloop tls-selfsigned`.
#[derive(Debug, Clone, ClapArgs)]
#[command(
    about = "Make a self-signed certificate and key for local TLS tests",
    long_about = LONG_ABOUT,
    after_help = "Example:\n  sockloop tls-selfsigned --out /tmp/tls\n  \
        sockloop echo server --port 8443 --tls-cert /tmp/tls/cert.pem --tls-key /tmp/tls/key.pem\n  \
        echo hi | sockloop echo client localhost:8443 --tls --tls-ca /tmp/tls/cert.pem"
)]
pub struct SelfSignedArgs {
    /// Directory to write cert.pem and key.pem into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Another name the certificate should be valid for (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
}

/// Writes a fresh self-signed certificate and key; returns their paths.
pub fn self_signed(args: &SelfSignedArgs) -> Result<(PathBuf, PathBuf)> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(args.names.iter().cloned());
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Failed(format!("cannot make a certificate: {e}")))?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::io(format!("creating {}", args.out.display()), e))?;
    let cert = args.out.join("cert.pem");
    let key = args.out.join("key.pem");
    std::fs::write(&cert, made.cert.pem())
        .map_err(|e| Error::io(format!("writing {}", cert.display()), e))?;
    write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
    Ok((cert, key))
}

/// Writes a file only its owner can read. The mode given at creation does
/// nothing to a file that already exists, so it is set on the open file
/// (before the secret is written) whatever the file's mode was.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |e| Error::io(format!("writing {}", path.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)
}

/// `sockloop tls-selfsigned`.
pub fn run_self_signed(args: &SelfSignedArgs) -> Result<()> {
    let (cert, key) = self_signed(args)?;
    println!("{}", cert.display());
    println!("{}", key.display());
    eprintln!(
        "wrote a self-signed certificate for localhost, 127.0.0.1 and ::1; \
         serve with --tls-cert {} --tls-key {}, connect with --tls --tls-ca {}",
        cert.display(),
        key.display(),
        cert.display()
    );
    Ok(())
}
