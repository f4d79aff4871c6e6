//! The load generator's smoke mode: every scenario with tiny numbers against
//! the debug server, so `kpiggybank-bench` cannot rot. The full runs
//! (docs/benchmarks.md) stay out of the test suite.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The smoke run takes a few seconds; this is its ceiling on a busy machine.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(300);

/// The table row cells of `scenario` prefix and `metric`, first match.
fn row<'a>(table: &'a str, scenario: &str, backend: &str, metric: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .find(|cells| cells[1].starts_with(scenario) && cells[2] == backend && cells[4] == metric)
        .unwrap_or_else(|| panic!("no row {scenario:?} {backend:?} {metric:?} in:\n{table}"))
}

fn value(cells: &[&str]) -> f64 {
    cells[5].replace(',', "").parse().expect("a number")
}

/// The server binary, from the same build as the bench: this package cannot
/// name another package's binary (no `CARGO_BIN_EXE_kpiggybank` here), but
/// a workspace build puts both in one target directory. Missing means the
/// server was not built, which must fail the suite, never skip it.
fn server_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_kpiggybank-bench"));
    let server = bench
        .with_file_name("kpiggybank")
        .with_extension(std::env::consts::EXE_EXTENSION);
    assert!(
        server.is_file(),
        "no server binary at {}: the smoke run needs the kpiggybank server next to \
         the bench; build both with `cargo build --workspace --bins` first",
        server.display()
    );
    server
}

#[test]
fn smoke_mode_runs_every_scenario_and_reports_sane_figures() {
    let server = server_bin();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpiggybank-bench"))
        .arg("smoke")
        .arg("--server-bin")
        .arg(&server)
        .args(["--max-seconds", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kpiggybank-bench");
    // Bounded: a hung bench fails the test instead of hanging the suite.
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > SMOKE_TIMEOUT {
            let _ = child.kill();
            panic!("kpiggybank-bench smoke did not finish in {SMOKE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{table}\n{logs}",
        out.status
    );
    assert!(table.contains("== kpiggybank-bench summary =="), "{table}");
    assert!(
        table.contains("2 cores") || table.contains(" cores, load average"),
        "{table}"
    );

    // Every scenario ran against the server and its baseline, with nonzero rates.
    for (scenario, backend, metric) in [
        ("logins", "embedded", "stored+retrieved/s"),
        ("ingest http", "bare", "acked blobs/s"),
        ("ingest http", "embedded", "acked blobs/s"),
        ("ingest ws c=1 b=1", "dummy", "acked blobs/s"),
        ("ingest ws c=1 b=100", "embedded", "acked blobs/s"),
        ("fanout", "bare", "deliveries/s"),
        ("fanout", "embedded", "deliveries/s"),
        ("idle", "embedded", "server bytes/connection"),
    ] {
        let cells = row(&table, scenario, backend, metric);
        assert!(value(&cells) > 0.0, "{cells:?}\n{table}");
    }
    // Ratios to the same run's baseline are printed.
    let ingest = row(&table, "ingest http", "embedded", "acked blobs/s");
    assert!(ingest[7].starts_with("bare "), "{ingest:?}");
    assert!(ingest[8].ends_with('x'), "{ingest:?}");

    // Correctness figures must be exactly zero, whatever the speed.
    for (scenario, metric) in [
        ("fanout", "lost changes"),
        ("fanout", "duplicated changes"),
        ("logins", "missing after read-back"),
        ("ingest http", "errors"),
        ("ingest ws c=1 b=100", "errors"),
    ] {
        let cells = row(&table, scenario, "embedded", metric);
        assert_eq!(value(&cells), 0.0, "{cells:?}\n{table}");
        assert_eq!(cells[10], "yes", "{cells:?}");
    }
}

#[test]
fn only_loopback_targets_are_accepted() {
    let out = Command::new(env!("CARGO_BIN_EXE_kpiggybank-bench"))
        .args(["ingest", "--url", "http://192.0.2.1:3000", "--blobs", "1"])
        .output()
        .expect("run kpiggybank-bench");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("not a loopback address"), "{text}");
}
