//! TLS termination: certificates from PEM files, chosen by SNI among the sites of a
//! listening address, reloaded when their files change (open connections keep the
//! session they negotiated; new handshakes get the new certificate).
//!
//! The seam for automatic certificates (ACME) later: a listener asks rustls's
//! [`ResolvesServerCert`] for each handshake, and [`SniCerts`] is the file-backed one; an
//! ACME resolver implements the same trait (and can answer `tls-alpn-01` from it).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::routes::{ListenerConfig, TlsFiles};

/// Why a certificate or key could not be used; names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{cert}: no certificate in the file (PEM `-----BEGIN CERTIFICATE-----` expected)")]
    NoCertificate { cert: PathBuf },
    #[error("{key} does not fit {cert}: {source}")]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What identifies a version of the files: modification time and size of each.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    };
    [one(&files.cert), one(&files.key)]
}

fn load(files: &TlsFiles) -> Result<CertifiedKey, CertError> {
    let file_err = |path: &Path, e: &dyn std::fmt::Display| CertError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.cert, &e))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            cert: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, &e))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| CertError::Key {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

type Pair = (PathBuf, PathBuf);

fn pair(files: &TlsFiles) -> Pair {
    (files.cert.clone(), files.key.clone())
}

/// Loaded certificates by file pair, shared by every site that names them.
#[derive(Default)]
pub(crate) struct CertCache {
    loaded: Mutex<HashMap<Pair, (Stamp, Arc<CertifiedKey>)>>,
}

impl CertCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, (Stamp, Arc<CertifiedKey>)>> {
        match self.loaded.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The certificate of `files`, read now unless already loaded and unchanged.
    pub fn get(&self, files: &TlsFiles) -> Result<Arc<CertifiedKey>, CertError> {
        let st = stamp(files);
        if let Some((s, key)) = self.lock().get(&pair(files))
            && *s == st
        {
            return Ok(key.clone());
        }
        let key = Arc::new(load(files)?);
        self.lock().insert(pair(files), (st, key.clone()));
        Ok(key)
    }

    /// Reloads the certificates whose files changed; `true` if any did. A change that does
    /// not load (e.g. the certificate written before its key) keeps the previous one and
    /// is tried again next time.
    pub fn refresh(&self) -> bool {
        let stale: Vec<(Pair, Stamp)> = self
            .lock()
            .iter()
            .filter_map(|(p, (s, _))| {
                let files = TlsFiles {
                    cert: p.0.clone(),
                    key: p.1.clone(),
                    hsts_max_age_secs: None,
                };
                let now = stamp(&files);
                (now != *s).then(|| (p.clone(), now))
            })
            .collect();
        let mut changed = false;
        for ((cert, key), st) in stale {
            let files = TlsFiles {
                cert,
                key,
                hsts_max_age_secs: None,
            };
            match load(&files) {
                Ok(k) => {
                    tracing::info!(cert = %files.cert.display(), "reloaded TLS certificate");
                    self.lock().insert(pair(&files), (st, Arc::new(k)));
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "changed TLS files do not load yet; keeping the previous certificate")
                }
            }
        }
        changed
    }

    /// Forgets certificates no site uses any more.
    pub fn retain(&self, used: &HashSet<Pair>) {
        self.lock().retain(|p, _| used.contains(p));
    }
}

/// The certificates of one listening address by server name.
#[derive(Debug, Default)]
pub(crate) struct SniMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For a client without SNI or with an unknown name: the first site's.
    default: Option<Arc<CertifiedKey>>,
}

impl SniMap {
    /// The map of the TLS sites of one address, from `certs` (loading what is new).
    pub fn build(sites: &[&ListenerConfig], certs: &CertCache) -> Result<Self, CertError> {
        let mut map = SniMap::default();
        for site in sites {
            let Some(files) = &site.tls else { continue };
            let key = certs.get(files)?;
            for h in &site.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix("*.") {
                    Some(suffix) => map.wildcard.insert(suffix.to_string(), key.clone()),
                    None => map.exact.insert(h, key.clone()),
                };
            }
            map.default.get_or_insert(key);
        }
        Ok(map)
    }

    fn get(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        self.default.clone()
    }
}

/// rustls's certificate choice for one address, swapped whole on a table change or reload.
#[derive(Debug, Default)]
pub(crate) struct SniCerts(ArcSwap<SniMap>);

impl SniCerts {
    pub fn store(&self, map: SniMap) {
        self.0.store(Arc::new(map));
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().get(hello.server_name())
    }
}

/// TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`, certificates from `certs`.
pub(crate) fn acceptor(certs: Arc<SniCerts>) -> Result<tokio_rustls::TlsAcceptor, CertError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The file pairs a table's sites use.
pub(crate) fn used_files<'a>(sites: impl Iterator<Item = &'a ListenerConfig>) -> HashSet<Pair> {
    sites.filter_map(|s| s.tls.as_ref().map(pair)).collect()
}
