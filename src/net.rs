//! The one place reqwest clients are built (the CouchDB store and the Rust
//! client): reqwest uses rustls without a built-in crypto provider, so that
//! building needs no cmake, and ring must be installed before the first client.

use std::time::Duration;

/// Installs rustls' ring provider for the process; harmless when done already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder, with the crypto provider in place.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().tcp_keepalive(Duration::from_secs(30))
}
