//! Configuration from environment variables, as in the Node.js original plus
//! this project's own (`env.sh.dist` lists them all).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default cap on one request body: far above a sign-in blob (~600 bytes),
/// low enough that a client cannot make the server buffer much.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default cap on open WebSocket connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default time between server pings on a WebSocket; a peer silent for two
/// of them is dropped.
pub const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Default time a WebSocket may take to accept one batch of frames before a
/// stuck subscriber is closed with the seq to resume from.
pub const DEFAULT_WS_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Which browser origins may open a WebSocket (`ALLOWED_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Only pages served by this server (the default).
    SameOrigin,
    /// Any origin (`*`).
    Any,
    /// Same origin plus these, e.g. `https://dash.example.com`.
    List(Vec<String>),
}

/// Which store keeps the blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file under `DATA_DIR`, durable (the default).
    Embedded,
    /// CouchDB at `DB_HOST:DB_PORT`.
    CouchDb,
    /// In-process, nothing saved.
    Memory,
    /// Accepts and discards; reads return generated samples.
    Dummy,
}

impl Backend {
    /// The name used in `DB_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::CouchDb => "couchdb",
            Backend::Memory => "memory",
            Backend::Dummy => "dummy",
        }
    }
}

/// How chatty the logs are (`MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Verbose logging (the original's default).
    Dev,
    /// Quiet logging: start-up line, warnings and errors.
    Prod,
}

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration of one kpiggybank process.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DB_BACKEND`: which store (default `embedded`).
    pub backend: Backend,
    /// `DB_HOST`: CouchDB host (default `127.0.0.1`).
    pub db_host: String,
    /// `DB_PORT`: CouchDB port (default 5984).
    pub db_port: u16,
    /// `DB_NAME`: database name, also the embedded file's name (default `bid_kpi`).
    pub db_name: String,
    /// `DB_USER`: CouchDB user (default `kpiggybank`).
    pub db_user: String,
    /// `DB_PASS`: CouchDB password (default `kpiggybank`).
    pub db_pass: Secret,
    /// `HOST`: address to listen on (default `127.0.0.1`).
    pub host: IpAddr,
    /// `PORT`: port to listen on (default 3000; 0 picks a free one).
    pub port: u16,
    /// `MODE`: `dev` (default) or `prod`.
    pub mode: Mode,
    /// `DATA_DIR`: where the embedded store (or the CouchDB spool) keeps its file (default `./data`).
    pub data_dir: PathBuf,
    /// `MAX_BODY_BYTES`: largest request body or WebSocket frame accepted.
    pub max_body_bytes: usize,
    /// `STORAGE_QUOTA_BYTES`: stored blob bytes allowed; 0 means no quota.
    pub storage_quota_bytes: u64,
    /// `ADMIN_TOKEN`: bearer token that allows `smash`; unset disables it.
    pub admin_token: Option<Secret>,
    /// `ALLOWED_ORIGINS`: browser origins allowed to open WebSockets.
    pub allowed_origins: Origins,
    /// `MAX_CONNECTIONS`: open WebSocket connections allowed at once.
    pub max_connections: usize,
    /// `WS_PING_INTERVAL_MS`: time between server pings.
    pub ws_ping_interval: Duration,
    /// `WS_SEND_TIMEOUT_MS`: longest wait on a WebSocket that does not read.
    pub ws_send_timeout: Duration,
}

/// A configuration value that cannot be used; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} is not valid: {expected}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The rejected value (never a secret).
    pub value: String,
    /// What the variable accepts.
    pub expected: &'static str,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Reads the configuration from a map of variables (testable without a process).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let backend = match get("DB_BACKEND") {
            None | Some("embedded") => Backend::Embedded,
            Some("couchdb") => Backend::CouchDb,
            Some("memory") => Backend::Memory,
            Some("dummy") => Backend::Dummy,
            Some(other) => {
                return Err(ConfigError {
                    var: "DB_BACKEND",
                    value: other.into(),
                    expected: "one of embedded, couchdb, memory, dummy",
                });
            }
        };
        let mode = match get("MODE") {
            None | Some("dev") => Mode::Dev,
            Some("prod") => Mode::Prod,
            Some(other) => {
                return Err(ConfigError {
                    var: "MODE",
                    value: other.into(),
                    expected: "dev or prod",
                });
            }
        };
        let db_name = get("DB_NAME").unwrap_or("bid_kpi").to_string();
        // CouchDB's rule for database names; also keeps the embedded file name tame.
        let valid_name = db_name.starts_with(|c: char| c.is_ascii_lowercase())
            && db_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_$()+-".contains(c));
        if !valid_name {
            return Err(ConfigError {
                var: "DB_NAME",
                value: db_name,
                expected: "a lowercase letter, then lowercase letters, digits or _$()+-",
            });
        }
        Ok(Config {
            backend,
            db_host: db_host(get("DB_HOST").unwrap_or("127.0.0.1"))?,
            db_port: parse(get, "DB_PORT", 5984, "a port number 1-65535")
                .and_then(|p| nonzero_port("DB_PORT", p))?,
            db_name,
            db_user: get("DB_USER").unwrap_or("kpiggybank").to_string(),
            db_pass: Secret(
                vars.get("DB_PASS")
                    .cloned()
                    .unwrap_or_else(|| "kpiggybank".into()),
            ),
            host: parse(
                get,
                "HOST",
                IpAddr::from([127, 0, 0, 1]),
                "an IP address such as 127.0.0.1 or 0.0.0.0",
            )?,
            port: parse(get, "PORT", 3000, "a port number 0-65535")?,
            mode,
            data_dir: PathBuf::from(get("DATA_DIR").unwrap_or("./data")),
            max_body_bytes: parse(
                get,
                "MAX_BODY_BYTES",
                DEFAULT_MAX_BODY_BYTES,
                "a number of bytes, at least 1024",
            )
            .and_then(|n| {
                if n >= 1024 {
                    Ok(n)
                } else {
                    Err(ConfigError {
                        var: "MAX_BODY_BYTES",
                        value: n.to_string(),
                        expected: "a number of bytes, at least 1024",
                    })
                }
            })?,
            storage_quota_bytes: parse(
                get,
                "STORAGE_QUOTA_BYTES",
                0,
                "a number of bytes (0 = no quota)",
            )?,
            admin_token: get("ADMIN_TOKEN").map(|t| Secret(t.to_string())),
            allowed_origins: match get("ALLOWED_ORIGINS") {
                None => Origins::SameOrigin,
                Some("*") => Origins::Any,
                Some(list) => Origins::List(
                    list.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_string())
                        .filter(|o| !o.is_empty())
                        .collect(),
                ),
            },
            max_connections: parse(
                get,
                "MAX_CONNECTIONS",
                DEFAULT_MAX_CONNECTIONS,
                "a number of connections",
            )?,
            ws_ping_interval: millis(get, "WS_PING_INTERVAL_MS", DEFAULT_WS_PING_INTERVAL)?,
            ws_send_timeout: millis(get, "WS_SEND_TIMEOUT_MS", DEFAULT_WS_SEND_TIMEOUT)?,
        })
    }
}

fn parse<'a, T: std::str::FromStr>(
    get: impl Fn(&str) -> Option<&'a str>,
    var: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError {
            var,
            value: v.into(),
            expected,
        }),
    }
}

fn millis<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let ms: u64 = parse(
        get,
        var,
        default.as_millis() as u64,
        "a positive number of milliseconds",
    )?;
    if ms == 0 {
        return Err(ConfigError {
            var,
            value: "0".into(),
            expected: "a positive number of milliseconds",
        });
    }
    Ok(Duration::from_millis(ms))
}

/// `DB_HOST` is logged and shown in errors, so it may not carry a password
/// (`https://user:pass@host`): credentials go in `DB_USER` and `DB_PASS`.
fn db_host(host: &str) -> Result<String, ConfigError> {
    let authority = host.split_once("://").map_or(host, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(ConfigError {
            var: "DB_HOST",
            value: "(not shown: it holds credentials)".into(),
            expected: "a host name, address or http(s):// URL without user or password \
                       (put those in DB_USER and DB_PASS)",
        });
    }
    Ok(host.to_string())
}

fn nonzero_port(var: &'static str, port: u16) -> Result<u16, ConfigError> {
    if port == 0 {
        Err(ConfigError {
            var,
            value: "0".into(),
            expected: "a port number 1-65535",
        })
    } else {
        Ok(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_original_except_the_backend() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.backend, Backend::Embedded);
        assert_eq!(c.db_host, "127.0.0.1");
        assert_eq!(c.db_port, 5984);
        assert_eq!(c.db_name, "bid_kpi");
        assert_eq!(c.db_user, "kpiggybank");
        assert_eq!(c.db_pass.expose(), "kpiggybank");
        assert_eq!(c.port, 3000);
        assert_eq!(c.mode, Mode::Dev);
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_it_accepts() {
        let e = Config::from_vars(&vars(&[("PORT", "eighty")])).unwrap_err();
        assert_eq!(e.var, "PORT");
        assert!(e.to_string().contains("port number"), "{e}");
        let e = Config::from_vars(&vars(&[("DB_BACKEND", "mysql")])).unwrap_err();
        assert!(e.to_string().contains("DB_BACKEND"), "{e}");
    }

    #[test]
    fn credentials_in_db_host_are_refused_without_showing_them() {
        let e = Config::from_vars(&vars(&[("DB_HOST", "https://admin:hunter2@couch.example")]))
            .unwrap_err();
        assert_eq!(e.var, "DB_HOST");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let c = Config::from_vars(&vars(&[("DB_HOST", "https://couch.example/base@x")])).unwrap();
        assert_eq!(c.db_host, "https://couch.example/base@x");
    }

    #[test]
    fn secrets_do_not_print() {
        let c =
            Config::from_vars(&vars(&[("DB_PASS", "hunter2"), ("ADMIN_TOKEN", "tok")])).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok\""),
            "{shown}"
        );
    }
}
