//! The built `kpiggybank` binary as a child process, for the tests where the
//! process itself is under test: kill -9, signals and the exit status,
//! start-up errors, what it logs, how much memory it holds.

use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Endpoint;

/// How long a process may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a process may take to exit after a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running kpiggybank process; killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    endpoint: Endpoint,
    /// Its data directory (kept by the test, so a restart finds the same data).
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Deref for Process {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Process {
    /// Starts the binary with the embedded store in a fresh temporary directory.
    pub fn start(env: &[(&str, &str)]) -> (Process, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let process = Process::start_in(dir.path(), env);
        (process, dir)
    }

    /// Starts the binary with `DATA_DIR` = `data_dir`; `env` overrides the defaults.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Process {
        match Process::try_start_in(data_dir, env) {
            Ok(process) => process,
            Err(logs) => panic!("kpiggybank did not start:\n{logs}"),
        }
    }

    /// Like [`Process::start_in`], but returns what it said when it does not
    /// come up: "exited with <status>" then its logs, if it exited.
    pub fn try_start_in(data_dir: &Path, env: &[(&str, &str)]) -> Result<Process, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpiggybank"));
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("MODE", "dev")
            .env("DATA_DIR", data_dir)
            .env_remove("RUST_LOG")
            .env_remove("DB_BACKEND")
            .env_remove("ADMIN_TOKEN")
            .env_remove("STORAGE_QUOTA_BYTES")
            .current_dir(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kpiggybank");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let addr = line
                        .split("listening on http://")
                        .nth(1)
                        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
                    // Logged before the start is reported, so `logs()` holds the start-up line.
                    logs.lock().unwrap().push(line);
                    if let Some(addr) = addr {
                        let _ = tx.send(Some(addr));
                    }
                }
                // Stderr closed: the process is gone, or going.
                let _ = tx.send(None);
            });
        }
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(addr)) => Ok(Process {
                child,
                endpoint: Endpoint {
                    addr: addr.parse().expect("listening address"),
                },
                data_dir: data_dir.to_path_buf(),
                logs,
            }),
            // Every line it wrote is in `logs` by now: wait for the exit status.
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                let status = wait_for_exit(&mut child, EXIT_TIMEOUT).unwrap_or_else(|| {
                    let _ = child.kill();
                    child.wait().expect("wait for kpiggybank")
                });
                Err(format!(
                    "exited with {status}\n{}",
                    logs.lock().unwrap().join("\n")
                ))
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "not listening within {START_TIMEOUT:?}\n{}",
                    logs.lock().unwrap().join("\n")
                ))
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until the logs contain `needle` (they are read by a thread);
    /// returns them.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it with SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`"TERM"`, `"INT"`) and waits for the exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        wait_for_exit(&mut self.child, EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("kpiggybank did not exit after SIG{signal}"))
    }

    /// Waits for the process to exit (after a signal sent elsewhere).
    pub fn signal_and_wait_exit(&mut self) -> ExitStatus {
        wait_for_exit(&mut self.child, EXIT_TIMEOUT).expect("kpiggybank did not exit")
    }

    /// Resident memory of the process in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .expect("VmRSS line");
        kb * 1024
    }
}

/// The exit status, or `None` if it is still running after `timeout`.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for kpiggybank") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
