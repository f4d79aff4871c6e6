//! Configuration from environment variables, as in the Node.js original plus
//! this project's own (`env.sh.dist` lists them all), or the matching
//! command-line options.
//!
//! Each variable is declared once, in `VARS`: its name, option, default and
//! meaning. `--help` is built from that declaration, and both readers, the
//! process one ([`Startup::from_args`]) and the map one ([`Config::from_vars`]),
//! parse through it with the same clap command and the same checks.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use tracing_subscriber::EnvFilter;

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
    /// The CouchDB nodes of `DB_HOST` as base URLs (`http://host:port`), in order.
    pub db_nodes: Vec<String>,
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

/// One variable, declared once for `--help` and both readers.
struct Var {
    /// The environment variable, also the clap id.
    name: &'static str,
    /// The long option that sets it too: `name` in kebab case.
    flag: &'static str,
    /// Its value when unset or empty; `None`: unset has its own meaning.
    default: Option<&'static str>,
    /// The line `--help` prints.
    meaning: &'static str,
    /// Its value is never shown, neither by `--help` nor in an error.
    secret: bool,
}

impl Var {
    const fn new(
        name: &'static str,
        flag: &'static str,
        default: Option<&'static str>,
        meaning: &'static str,
    ) -> Var {
        Var {
            name,
            flag,
            default,
            meaning,
            secret: false,
        }
    }

    const fn secret(self) -> Var {
        Var {
            secret: true,
            ..self
        }
    }
}

const DB_BACKEND: Var = Var::new(
    "DB_BACKEND",
    "db-backend",
    Some("embedded"),
    "Which store: embedded (SQLite file, durable), couchdb, memory (nothing saved), \
     dummy (discards; reads return samples)",
);
const DB_HOST: Var = Var::new(
    "DB_HOST",
    "db-host",
    Some("127.0.0.1"),
    "CouchDB host, address or http(s):// URL, without user or password; \
     several nodes of one cluster comma-separated (a, b or http://a:5984,http://b:5984)",
);
const DB_PORT: Var = Var::new("DB_PORT", "db-port", Some("5984"), "CouchDB port");
const DB_NAME: Var = Var::new(
    "DB_NAME",
    "db-name",
    Some("bid_kpi"),
    "CouchDB database, or the embedded file DATA_DIR/DB_NAME.sqlite3",
);
const DB_USER: Var = Var::new("DB_USER", "db-user", Some("kpiggybank"), "CouchDB user");
const DB_PASS: Var = Var::new(
    "DB_PASS",
    "db-pass",
    Some("kpiggybank"),
    "CouchDB password, taken verbatim (spaces, empty), never shown; \
     prefer the variable to the option, which other users can see",
)
.secret();
const HOST: Var = Var::new("HOST", "host", Some("127.0.0.1"), "Address to listen on");
const PORT: Var = Var::new(
    "PORT",
    "port",
    Some("3000"),
    "Port to listen on (0: a free one)",
);
const MODE: Var = Var::new(
    "MODE",
    "mode",
    Some("dev"),
    "dev logs verbosely, prod logs the start-up line, warnings and errors",
);
const DATA_DIR: Var = Var::new(
    "DATA_DIR",
    "data-dir",
    Some("./data"),
    "Where the embedded store (or the CouchDB spool) keeps its file",
);
/// 1 MiB by default: far above a sign-in blob (~600 bytes), low enough that
/// a client cannot make the server buffer much.
const MAX_BODY_BYTES: Var = Var::new(
    "MAX_BODY_BYTES",
    "max-body-bytes",
    Some("1048576"),
    "Largest request body or WebSocket frame; larger gets 413",
);
const STORAGE_QUOTA_BYTES: Var = Var::new(
    "STORAGE_QUOTA_BYTES",
    "storage-quota-bytes",
    Some("0"),
    "Bytes of stored blobs allowed (0: no quota); when full, writes get 507, reads keep working",
);
const ADMIN_TOKEN: Var = Var::new(
    "ADMIN_TOKEN",
    "admin-token",
    None,
    "Bearer token that allows smash, never shown; unset, smash answers 403",
)
.secret();
const ALLOWED_ORIGINS: Var = Var::new(
    "ALLOWED_ORIGINS",
    "allowed-origins",
    None,
    "Browser origins allowed to open WebSockets, comma-separated, or *; unset: same origin only",
);
const MAX_CONNECTIONS: Var = Var::new(
    "MAX_CONNECTIONS",
    "max-connections",
    Some("10000"),
    "Open WebSockets allowed at once; more get 503",
);
const WS_PING_INTERVAL_MS: Var = Var::new(
    "WS_PING_INTERVAL_MS",
    "ws-ping-interval-ms",
    Some("20000"),
    "Milliseconds between server pings; a peer silent for two is dropped",
);
/// 30 s by default: the time a WebSocket may take to accept one batch of
/// frames before a stuck subscriber is closed with the seq to resume from.
const WS_SEND_TIMEOUT_MS: Var = Var::new(
    "WS_SEND_TIMEOUT_MS",
    "ws-send-timeout-ms",
    Some("30000"),
    "Milliseconds a subscriber may take no frame before it is closed with where to resume",
);
const RUST_LOG: Var = Var::new(
    "RUST_LOG",
    "log",
    None,
    "Log filter such as kpiggybank=trace; overrides MODE's verbosity",
);

/// Every variable, in the order of `env.sh.dist`, which `--help` keeps.
const VARS: [&Var; 18] = [
    &DB_BACKEND,
    &DB_HOST,
    &DB_PORT,
    &DB_NAME,
    &DB_USER,
    &DB_PASS,
    &HOST,
    &PORT,
    &MODE,
    &RUST_LOG,
    &DATA_DIR,
    &MAX_BODY_BYTES,
    &STORAGE_QUOTA_BYTES,
    &ADMIN_TOKEN,
    &ALLOWED_ORIGINS,
    &MAX_CONNECTIONS,
    &WS_PING_INTERVAL_MS,
    &WS_SEND_TIMEOUT_MS,
];

/// Where option values may come from besides the argument list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sources {
    /// The process environment too (the process reader, `--help`).
    ArgsAndEnv,
    /// The argument list alone: [`Config::from_vars`] must see only its map.
    ArgsOnly,
}

/// The clap command, built from [`VARS`].
fn command(sources: Sources) -> Command {
    let mut command = Command::new("kpiggybank")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A durable store and realtime hub for KPI blobs")
        .after_help(
            "Each option can be set by the environment variable shown with it, \
             as in env.sh.dist; an option on the command line wins. \
             An empty variable counts as unset (but for DB_PASS).",
        );
    for var in VARS {
        let mut arg = Arg::new(var.name)
            .long(var.flag)
            .value_name(var.name)
            .help(var.meaning)
            // Not clap's String: its UTF-8 error does not name the variable.
            .value_parser(clap::value_parser!(OsString))
            .action(ArgAction::Set);
        if let Some(default) = var.default {
            arg = arg.default_value(default);
        }
        if sources == Sources::ArgsAndEnv {
            // Arg::env reads the variable right here, so the map reader must
            // never get this far.
            arg = arg.env(var.name).hide_env_values(var.secret);
        }
        command = command.arg(arg);
    }
    command
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

/// Why the process does not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `--help` or `--version` (clap exits 0 after printing them) or an
    /// argument clap refuses (exit 2): call [`clap::Error::exit`].
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// A value that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Everything the process reads before it starts.
#[derive(Debug)]
pub struct Startup {
    /// The server's configuration.
    pub config: Config,
    /// What to log: `RUST_LOG` when set, else what `MODE` implies.
    pub log_filter: EnvFilter,
}

impl Startup {
    /// Reads `args` (the program name first, as from [`std::env::args_os`])
    /// and the process environment.
    pub fn from_args<I, T>(args: I) -> Result<Startup, StartupError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = command(Sources::ArgsAndEnv).try_get_matches_from(args)?;
        let (config, log_filter) = read(&Values::new(&matches)?)?;
        Ok(Startup { config, log_filter })
    }
}

impl Config {
    /// Reads the configuration from a map of variables and nothing else, not
    /// the process environment: servers started in-process each get their own.
    /// Keys that are not configuration variables are ignored.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        // `--flag=value` passes any value verbatim, even one starting with '-'.
        let args = std::iter::once("kpiggybank".to_string()).chain(
            VARS.iter()
                .filter_map(|var| Some(format!("--{}={}", var.flag, vars.get(var.name)?))),
        );
        let matches = command(Sources::ArgsOnly)
            .try_get_matches_from(args)
            // Only declared options, each once, each with a UTF-8 value: clap
            // has nothing to refuse.
            .expect("options made from declared variables parse");
        read(&Values::new(&matches)?).map(|(config, _)| config)
    }
}

/// The values clap gathered, by variable.
struct Values<'a>(&'a ArgMatches);

impl<'a> Values<'a> {
    /// Refuses a value that is not UTF-8, naming its variable.
    fn new(matches: &'a ArgMatches) -> Result<Values<'a>, ConfigError> {
        for var in VARS {
            if let Some(value) = matches.get_one::<OsString>(var.name)
                && value.to_str().is_none()
            {
                return Err(invalid(var, &value.to_string_lossy(), "UTF-8 text"));
            }
        }
        Ok(Values(matches))
    }

    /// The value as given, untrimmed; the default when not given at all.
    fn verbatim(&self, var: &Var) -> Option<&'a str> {
        self.0
            .get_one::<OsString>(var.name)
            .map(|v| v.to_str().expect("checked by Values::new"))
    }

    /// The value, trimmed; empty counts as unset and gives the default.
    fn get(&self, var: &'static Var) -> Option<&'a str> {
        self.verbatim(var)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .or(var.default)
    }

    /// [`Values::get`] for a variable declared with a default.
    fn value(&self, var: &'static Var) -> &'a str {
        self.get(var)
            .expect("the variable is declared with a default")
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &'static Var,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let value = self.value(var);
        value.parse().map_err(|_| invalid(var, value, expected))
    }

    /// A number that must be at least `least`.
    fn at_least<T: std::str::FromStr + PartialOrd>(
        &self,
        var: &'static Var,
        least: T,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let n = self.parse(var, expected)?;
        if n >= least {
            Ok(n)
        } else {
            Err(invalid(var, self.value(var), expected))
        }
    }

    fn millis(&self, var: &'static Var) -> Result<Duration, ConfigError> {
        self.at_least(var, 1, "a positive number of milliseconds")
            .map(Duration::from_millis)
    }
}

/// The error for `var`, showing `value` unless the variable is a secret.
fn invalid(var: &Var, value: &str, expected: &'static str) -> ConfigError {
    ConfigError {
        var: var.name,
        value: if var.secret {
            "(not shown: a secret)".into()
        } else {
            value.into()
        },
        expected,
    }
}

fn read(v: &Values<'_>) -> Result<(Config, EnvFilter), ConfigError> {
    let backend = match v.value(&DB_BACKEND) {
        "embedded" => Backend::Embedded,
        "couchdb" => Backend::CouchDb,
        "memory" => Backend::Memory,
        "dummy" => Backend::Dummy,
        other => {
            return Err(invalid(
                &DB_BACKEND,
                other,
                "one of embedded, couchdb, memory, dummy",
            ));
        }
    };
    let mode = match v.value(&MODE) {
        "dev" => Mode::Dev,
        "prod" => Mode::Prod,
        other => return Err(invalid(&MODE, other, "dev or prod")),
    };
    let db_name = v.value(&DB_NAME);
    // CouchDB's rule for database names; also keeps the embedded file name tame.
    let valid_name = db_name.starts_with(|c: char| c.is_ascii_lowercase())
        && db_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_$()+-".contains(c));
    if !valid_name {
        return Err(invalid(
            &DB_NAME,
            db_name,
            "a lowercase letter, then lowercase letters, digits or _$()+-",
        ));
    }
    let db_port = v.at_least(&DB_PORT, 1, "a port number 1-65535")?;
    let config = Config {
        backend,
        db_host: db_host(v.value(&DB_HOST))?,
        db_port,
        db_nodes: db_nodes(v.value(&DB_HOST), db_port)?,
        db_name: db_name.to_string(),
        db_user: v.value(&DB_USER).to_string(),
        // Verbatim, as the original took it: spaces may belong to a password.
        db_pass: Secret(v.verbatim(&DB_PASS).unwrap_or_default().to_string()),
        host: v.parse(&HOST, "an IP address such as 127.0.0.1 or 0.0.0.0")?,
        port: v.parse(&PORT, "a port number 0-65535")?,
        mode,
        data_dir: PathBuf::from(v.value(&DATA_DIR)),
        max_body_bytes: v.at_least(&MAX_BODY_BYTES, 1024, "a number of bytes, at least 1024")?,
        storage_quota_bytes: v.parse(&STORAGE_QUOTA_BYTES, "a number of bytes (0 = no quota)")?,
        admin_token: v.get(&ADMIN_TOKEN).map(|t| Secret(t.to_string())),
        allowed_origins: match v.get(&ALLOWED_ORIGINS) {
            None => Origins::SameOrigin,
            Some("*") => Origins::Any,
            Some(list) => Origins::List(
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
            ),
        },
        // 0 would refuse every WebSocket while the server looks healthy.
        max_connections: v.at_least(&MAX_CONNECTIONS, 1, "a number of connections, at least 1")?,
        ws_ping_interval: v.millis(&WS_PING_INTERVAL_MS)?,
        ws_send_timeout: v.millis(&WS_SEND_TIMEOUT_MS)?,
    };
    let log_filter = match v.get(&RUST_LOG) {
        // A filter that does not parse would log less than asked, or nothing,
        // without a word: better not to start.
        Some(directives) => EnvFilter::builder().parse(directives).map_err(|_| {
            invalid(
                &RUST_LOG,
                directives,
                "a log filter such as info or warn,kpiggybank=debug",
            )
        })?,
        None => EnvFilter::new(match mode {
            Mode::Dev => "info,kpiggybank=debug",
            Mode::Prod => "warn,kpiggybank::server=info",
        }),
    };
    Ok((config, log_filter))
}

/// `DB_HOST` is logged and shown in errors, so it may not carry a password
/// (`https://user:pass@host`): credentials go in `DB_USER` and `DB_PASS`.
fn db_host(host: &str) -> Result<String, ConfigError> {
    let authority = host.split_once("://").map_or(host, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(ConfigError {
            var: DB_HOST.name,
            value: "(not shown: it holds credentials)".into(),
            expected: "a host name, address or http(s):// URL without user or password \
                       (put those in DB_USER and DB_PASS)",
        });
    }
    Ok(host.to_string())
}

/// The base URLs of the nodes `DB_HOST` names: each entry a host (`http://`
/// and `port` added), `host:port`, or a URL whose port defaults to `port`.
fn db_nodes(hosts: &str, port: u16) -> Result<Vec<String>, ConfigError> {
    let entries = || hosts.split(',').map(str::trim).filter(|h| !h.is_empty());
    // Every node is checked for credentials before any message shows the
    // value (`db_host` sees only the first one's authority).
    for host in entries() {
        db_host(host)?;
    }
    let mut nodes = Vec::new();
    for host in entries() {
        let (scheme, rest) = host.split_once("://").unwrap_or(("http", host));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !matches!(scheme, "http" | "https") || authority.is_empty() {
            return Err(invalid(
                &DB_HOST,
                hosts,
                "host names, addresses or http(s):// URLs, comma-separated",
            ));
        }
        // `[::1]` has colons of its own: a port follows the closing bracket.
        let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']'))
        });
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{port}")
        };
        let path = path.trim_end_matches('/');
        nodes.push(if path.is_empty() {
            format!("{scheme}://{authority}")
        } else {
            format!("{scheme}://{authority}/{path}")
        });
    }
    if nodes.is_empty() {
        return Err(invalid(&DB_HOST, hosts, "at least one CouchDB host"));
    }
    Ok(nodes)
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
    fn db_host_names_one_node_or_several() {
        let nodes = |host: &str, port: &str| {
            Config::from_vars(&vars(&[("DB_HOST", host), ("DB_PORT", port)])).map(|c| c.db_nodes)
        };
        assert_eq!(nodes("", "5984").unwrap(), ["http://127.0.0.1:5984"]);
        assert_eq!(nodes("couch", "6984").unwrap(), ["http://couch:6984"]);
        assert_eq!(
            nodes("https://couch.example/", "6984").unwrap(),
            ["https://couch.example:6984"]
        );
        assert_eq!(
            nodes("a, b:7000 ,", "5984").unwrap(),
            ["http://a:5984", "http://b:7000"]
        );
        assert_eq!(
            nodes("http://a:5984,https://b/couch,[::1]", "5985").unwrap(),
            ["http://a:5984", "https://b:5985/couch", "http://[::1]:5985"]
        );
        assert_eq!(nodes("ftp://a", "5984").unwrap_err().var, "DB_HOST");
        assert_eq!(nodes(" , ", "5984").unwrap_err().var, "DB_HOST");
        for host in [
            "https://a/x,https://admin:hunter2@b",
            "ftp://a,https://admin:hunter2@b",
        ] {
            let e = nodes(host, "5984").unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn the_declared_defaults_are_the_documented_constants() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.max_body_bytes, 1024 * 1024);
        assert_eq!(c.storage_quota_bytes, 0);
        assert_eq!(c.admin_token, None);
        assert_eq!(c.allowed_origins, Origins::SameOrigin);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.ws_ping_interval, Duration::from_secs(20));
        assert_eq!(c.ws_send_timeout, Duration::from_secs(30));
    }

    #[test]
    fn every_value_is_read_trimmed_and_empty_counts_as_unset() {
        let c = Config::from_vars(&vars(&[
            ("DB_BACKEND", " couchdb "),
            ("DB_HOST", "https://couch.example"),
            ("DB_PORT", "6984"),
            ("DB_NAME", "kpi_2"),
            ("DB_USER", "u"),
            ("HOST", "0.0.0.0"),
            ("PORT", ""),
            ("MODE", "prod"),
            ("DATA_DIR", "/var/lib/kpi"),
            ("MAX_BODY_BYTES", "2048"),
            ("STORAGE_QUOTA_BYTES", "  "),
            ("ADMIN_TOKEN", ""),
            ("ALLOWED_ORIGINS", "https://a.example/, https://b.example"),
            ("MAX_CONNECTIONS", "7"),
            ("WS_PING_INTERVAL_MS", "250"),
            ("WS_SEND_TIMEOUT_MS", "1500"),
        ]))
        .unwrap();
        assert_eq!(c.backend, Backend::CouchDb);
        assert_eq!(c.db_host, "https://couch.example");
        assert_eq!(
            (c.db_port, c.db_name.as_str(), c.db_user.as_str()),
            (6984, "kpi_2", "u")
        );
        assert_eq!(c.host, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.port, 3000);
        assert_eq!(c.mode, Mode::Prod);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/kpi"));
        assert_eq!((c.max_body_bytes, c.storage_quota_bytes), (2048, 0));
        assert_eq!(c.admin_token, None);
        assert_eq!(
            c.allowed_origins,
            Origins::List(vec!["https://a.example".into(), "https://b.example".into()])
        );
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.ws_ping_interval, Duration::from_millis(250));
        assert_eq!(c.ws_send_timeout, Duration::from_millis(1500));
        let c =
            Config::from_vars(&vars(&[("ALLOWED_ORIGINS", "*"), ("ADMIN_TOKEN", " t ")])).unwrap();
        assert_eq!(c.allowed_origins, Origins::Any);
        assert_eq!(c.admin_token.unwrap().expose(), "t");
    }

    #[test]
    fn the_password_is_taken_verbatim_even_when_it_looks_like_an_option() {
        for pass in ["--help", " -p=w rd ", "", "--port=1"] {
            let c = Config::from_vars(&vars(&[("DB_PASS", pass)])).unwrap();
            assert_eq!(c.db_pass.expose(), pass);
            assert_eq!(c.port, 3000);
        }
    }

    #[test]
    fn zero_connections_and_a_broken_log_filter_are_refused() {
        let e = Config::from_vars(&vars(&[("MAX_CONNECTIONS", "0")])).unwrap_err();
        assert_eq!((e.var, e.value.as_str()), ("MAX_CONNECTIONS", "0"));
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = Config::from_vars(&vars(&[("RUST_LOG", "[[[")])).unwrap_err();
        assert_eq!((e.var, e.value.as_str()), ("RUST_LOG", "[[["));
        assert!(e.to_string().contains("log filter"), "{e}");
        for ok in ["", "trace", "warn,kpiggybank=debug"] {
            Config::from_vars(&vars(&[("RUST_LOG", ok)])).unwrap();
        }
        for ms in ["WS_PING_INTERVAL_MS", "WS_SEND_TIMEOUT_MS"] {
            let e = Config::from_vars(&vars(&[(ms, "0")])).unwrap_err();
            assert_eq!(e.var, ms);
        }
        let e = Config::from_vars(&vars(&[("DB_PORT", "0")])).unwrap_err();
        assert!(e.to_string().contains("1-65535"), "{e}");
    }

    #[test]
    fn the_map_reader_cannot_see_the_process_environment() {
        // Arg::env reads the process environment when the argument is built:
        // the map reader's command must have none.
        for arg in command(Sources::ArgsOnly).get_arguments() {
            assert_eq!(arg.get_env(), None, "{}", arg.get_id());
        }
        let with_env = command(Sources::ArgsAndEnv);
        for var in VARS {
            let arg = with_env
                .get_arguments()
                .find(|a| a.get_id() == var.name)
                .unwrap();
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(var.name)));
            assert_eq!(arg.is_hide_env_values_set(), var.secret, "{}", var.name);
        }
    }

    #[test]
    fn the_declaration_is_consistent() {
        for var in VARS {
            assert_eq!(
                var.flag,
                var.name
                    .to_lowercase()
                    .replace('_', "-")
                    .replace("rust-", "")
            );
            assert!(
                !var.meaning.is_empty() && !var.meaning.contains('\n'),
                "{}",
                var.name
            );
        }
        let documented: Vec<&str> = include_str!("../env.sh.dist")
            .lines()
            .filter_map(|l| l.trim_start_matches("# ").strip_prefix("export "))
            .filter_map(|l| l.split('=').next())
            .collect();
        let declared: Vec<&str> = VARS.iter().map(|v| v.name).collect();
        assert_eq!(declared, documented, "VARS and env.sh.dist differ");
        let secrets: Vec<&str> = VARS.iter().filter(|v| v.secret).map(|v| v.name).collect();
        assert_eq!(secrets, ["DB_PASS", "ADMIN_TOKEN"]);
        command(Sources::ArgsAndEnv).debug_assert();
    }

    #[test]
    fn an_option_on_the_command_line_is_read_like_its_variable() {
        let s = Startup::from_args(["kpiggybank", "--port", "8080", "--mode=prod"]).unwrap();
        assert_eq!((s.config.port, s.config.mode), (8080, Mode::Prod));
        let e = Startup::from_args(["kpiggybank", "--max-connections", "0"]).unwrap_err();
        assert!(
            matches!(&e, StartupError::Config(e) if e.var == "MAX_CONNECTIONS"),
            "{e}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let pass = OsString::from_vec(b"--db-pass=hunter2\xff".to_vec());
            let e = Startup::from_args([OsString::from("kpiggybank"), pass]).unwrap_err();
            assert!(
                matches!(&e, StartupError::Config(e) if e.var == "DB_PASS"),
                "{e}"
            );
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = Startup::from_args(["kpiggybank", "--bogus"]).unwrap_err();
        assert!(
            matches!(&e, StartupError::Args(e) if e.kind() == clap::error::ErrorKind::UnknownArgument),
            "{e}"
        );
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
