//! Processes the bench starts (the server under test, the bare baseline,
//! pouchdb-server) and stops by their own PID, never by name.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a started process may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Log lines kept per process, for the error message when it does not start.
const KEPT_LOG_LINES: usize = 200;

/// A child process started by the bench; killed if dropped while running.
pub struct Proc {
    child: Child,
    name: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Proc {
    /// Spawns `cmd` and waits for a stderr line containing `listening on http://ADDR`.
    pub fn spawn_listening(name: &str, mut cmd: Command) -> Result<Proc, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            // Keeps draining stderr for the life of the process, so a chatty
            // server never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    let mut logs = logs.lock().unwrap();
                    if logs.len() < KEPT_LOG_LINES {
                        logs.push(line);
                    }
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    let addr = addr
                        .parse()
                        .map_err(|e| format!("{name} printed a bad address {addr:?}: {e}"))?;
                    return Ok(Proc {
                        child,
                        name: name.to_string(),
                        addr,
                    });
                }
                Err(_) => {
                    let exited = child.try_wait().ok().flatten();
                    if exited.is_some() || Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(format!(
                            "{name} did not start ({}):\n{}",
                            exited.map_or("timed out".to_string(), |s| s.to_string()),
                            logs.lock().unwrap().join("\n")
                        ));
                    }
                }
            }
        }
    }

    /// Wraps an already spawned process that listens on `addr` (pouchdb-server
    /// prints no parsable line; its caller polls it instead).
    pub fn from_child(name: &str, child: Child, addr: SocketAddr) -> Proc {
        Proc {
            child,
            name: name.to_string(),
            addr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM (graceful), then SIGKILL if it lingers.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on the PID of our own child, which we have not yet
        // reaped, so the PID cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Resident memory of a process in bytes, from `/proc` (Linux only).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory named after `prefix`, our PID and the time.
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port, for programs that cannot be told to pick one.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Raises this process's open-file limit to its hard limit, so that
/// thousands of client sockets fit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local, fully initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// CPU time (user + system) a process has used so far, in seconds, from
/// `/proc/PID/stat`; `None` for `self` is never the case on Linux.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// Cores used by the server and by the bench over a measured interval.
pub struct CpuMeter {
    server: Option<u32>,
    start: std::time::Instant,
    server_start: Option<f64>,
    bench_start: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring; `server` is the server's PID when known.
    pub fn start(server: Option<u32>) -> CpuMeter {
        CpuMeter {
            server,
            start: std::time::Instant::now(),
            server_start: server.and_then(|p| cpu_seconds(Some(p))),
            bench_start: cpu_seconds(None),
        }
    }

    /// `server X.XX cores, bench Y.YY cores` since the start.
    pub fn text(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let used = |start: Option<f64>, now: Option<f64>| match (start, now) {
            (Some(a), Some(b)) => format!("{:.2}", (b - a) / secs),
            _ => "?".into(),
        };
        format!(
            "cpu: server {} cores, bench {} cores",
            used(
                self.server_start,
                self.server.and_then(|p| cpu_seconds(Some(p)))
            ),
            used(self.bench_start, cpu_seconds(None))
        )
    }
}
