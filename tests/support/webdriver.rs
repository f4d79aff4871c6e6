//! A small WebDriver client over reqwest, for driving Debian's headless
//! Chromium through chromedriver in the dashboard tests.
//!
//! Hand-written rather than a crate: the tests need six commands (new
//! session, navigate, execute script, screenshot, browser log, one DevTools
//! command for the viewport), reqwest is already built, and a WebDriver
//! crate would pull its own HTTP and TLS stack into every test build.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long chromedriver may take to answer its status.
const DRIVER_START: Duration = Duration::from_secs(20);

/// Finds a program named by `env_var`, else on `PATH`; panics (never skips)
/// with what to do when it is missing, so a machine without a browser fails.
pub fn program(env_var: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var)
        && !path.is_empty()
    {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env_var}={} does not exist: install Debian's chromium and chromium-driver (./scripts/test does)",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed and {env_var} is not set: the dashboard tests need \
                 Debian's chromium and chromium-driver (./scripts/test installs them)"
            )
        })
}

/// A running chromedriver; when dropped, it closes its browsers and is
/// killed (by its PID), also when a test panics half way.
pub struct Driver {
    child: Child,
    port: u16,
    base: String,
    http: reqwest::Client,
    /// Session ids and profile directories of the browsers it started.
    sessions: Mutex<Vec<(String, PathBuf)>>,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is ready.
    pub async fn start() -> Driver {
        let binary = program("KPIGGYBANK_CHROMEDRIVER", "chromedriver");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let driver = Driver {
            child,
            port,
            sessions: Mutex::new(Vec::new()),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + DRIVER_START;
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                .ok()
                .map(|r| r.json::<Value>());
            if let Some(body) = ready
                && let Ok(body) = body.await
                && body["value"]["ready"] == json!(true)
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens headless Chromium with a fresh profile in `profile_dir`.
    pub async fn session(&self, profile_dir: &Path) -> Session {
        let chromium = program("KPIGGYBANK_CHROMIUM", "chromium");
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": chromium,
                    // Root in a container needs --no-sandbox; the rest keeps a
                    // closed network from filling the log with retries.
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1280,800",
                        format!("--user-data-dir={}", profile_dir.display()),
                    ],
                },
            }},
        });
        let answer = self.call("POST", "/session", Some(caps)).await;
        let id = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_string();
        self.sessions
            .lock()
            .unwrap()
            .push((id.clone(), profile_dir.to_path_buf()));
        Session {
            base: format!("{}/session/{id}", self.base),
            http: self.http.clone(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.base), body).await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Killing chromedriver would orphan its Chromium: end each session
        // first (blocking: no runtime in drop), then make sure the browsers
        // with our profile directories are gone.
        for (id, profile) in self.sessions.lock().unwrap().drain(..) {
            delete_session_blocking(self.port, &id);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = browser_pids(&profile);
                if left.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    for pid in left {
                        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/{id}` over a plain socket; errors are ignored (the
/// session may be gone already).
fn delete_session_blocking(port: u16, id: &str) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}

/// Processes started with `--user-data-dir=<profile>`: our browser and its
/// helpers, told apart from any other Chromium by the fresh directory.
fn browser_pids(profile: &Path) -> Vec<u32> {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == needle.as_bytes()))
        })
        .collect()
}

/// Sends one WebDriver command; panics with the driver's message on error.
async fn call(http: &reqwest::Client, method: &str, url: &str, body: Option<Value>) -> Value {
    let request = match method {
        "GET" => http.get(url),
        "DELETE" => http.delete(url),
        _ => http.post(url).json(&body.unwrap_or_else(|| json!({}))),
    };
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert!(
        status.is_success(),
        "WebDriver {method} {url} answered {status}: {}",
        body["value"]
    );
    body["value"].clone()
}

/// One browser session.
pub struct Session {
    base: String,
    http: reqwest::Client,
}

impl Session {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(&self.http, method, &format!("{}{path}", self.base), body).await
    }

    /// Loads `url` and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Polls `script` until it returns something truthy, or panics naming `what`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.execute(script, json!([])).await;
            let truthy = !matches!(value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Makes the viewport exactly `width`×`height` CSS pixels (a phone when
    /// `mobile`), through the DevTools protocol: window sizes are not viewports.
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Emulation.setDeviceMetricsOverride",
                "params": { "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile },
            })),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", None).await;
        base64_decode(encoded.as_str().expect("screenshot is base64 text"))
    }

    /// Browser console entries since the last call (`level`, `message`).
    pub async fn browser_log(&self) -> Vec<Value> {
        match self
            .call("POST", "/se/log", Some(json!({ "type": "browser" })))
            .await
        {
            Value::Array(entries) => entries,
            other => panic!("unexpected browser log {other}"),
        }
    }

    /// Closes the browser.
    pub async fn quit(self) {
        self.call("DELETE", "", None).await;
    }
}

/// Standard base64 (as WebDriver sends screenshots), without a dependency.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_round_trip() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aA=="), b"h");
}
