//! Configuration from the environment, as the process sees it: bad values
//! stop the start with a message naming the variable, `--help` and
//! `--version` answer without starting anything, an unknown argument is
//! refused, the start-up line says what runs where, `MODE` sets the
//! verbosity, secrets never reach the logs or the help, and the memory and
//! dummy backends do what they say.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Endpoint, Process, Server, http};

/// Starts the binary, which must refuse to start; returns what it said.
/// The process: its exit status and its message are under test.
fn refused(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    match Process::try_start_in(dir.path(), env) {
        Ok(server) => panic!(
            "started with {env:?}, which should be refused:\n{}",
            server.logs()
        ),
        Err(output) => output,
    }
}

/// Stops the process with SIGTERM and returns everything it logged.
fn stop_and_logs(server: &mut Process) -> String {
    let status = server.signal_and_wait("TERM");
    assert!(status.success(), "{status}");
    server.wait_for_log("stopped")
}

/// The variables `env.sh.dist` lists, commented-out ones included.
fn documented_variables() -> Vec<&'static str> {
    let names: Vec<&str> = include_str!("../env.sh.dist")
        .lines()
        .filter_map(|l| l.trim_start_matches("# ").strip_prefix("export "))
        .filter_map(|l| l.split('=').next())
        .collect();
    assert!(names.len() >= 18, "env.sh.dist lists {names:?}");
    names
}

/// Runs the binary in `dir` with `args` and, of the configuration, only
/// `env`; kills it if it is still running after a few seconds, since then
/// it started a server where it should not have.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpiggybank"));
    for var in documented_variables() {
        cmd.env_remove(var);
    }
    // Should it serve after all, a free port keeps it from failing for another reason.
    cmd.env("PORT", "0")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kpiggybank");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "kpiggybank {args:?} with {env:?} kept running:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs the binary like [`run_in`] in a fresh directory and checks that it
/// created nothing there (by default the embedded store would create `./data`).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let output = run_in(dir.path(), args, env);
    let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        created.is_empty(),
        "kpiggybank {args:?} created {created:?}; it said:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn help_lists_every_variable_and_starts_nothing() {
    for flag in ["--help", "-h"] {
        let output = run(&[flag], &[]);
        let help = text(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{help}");
        for var in documented_variables() {
            assert!(
                help.contains(&format!("[env: {var}")),
                "{var} not in:\n{help}"
            );
        }
        // A default and a meaning, from the one declaration.
        assert!(help.contains("[default: 3000]"), "{help}");
        assert!(help.contains("Port to listen on"), "{help}");
        assert!(!help.contains("listening on"), "{help}");
    }
}

#[test]
fn help_shows_values_from_the_environment_but_never_secrets() {
    let output = run(
        &["--help"],
        &[
            ("DB_PASS", "hunter2"),
            ("ADMIN_TOKEN", "tok-3f9a1c"),
            ("MAX_CONNECTIONS", "4242"),
        ],
    );
    let help = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{help}");
    // Values are shown, so the secrets' absence is the hiding, not the layout.
    assert!(help.contains("MAX_CONNECTIONS=4242"), "{help}");
    assert!(help.contains("[env: DB_PASS]"), "{help}");
    assert!(help.contains("[env: ADMIN_TOKEN]"), "{help}");
    assert!(
        !help.contains("hunter2") && !help.contains("tok-3f9a1c"),
        "{help}"
    );
}

#[test]
fn version_prints_name_and_version_and_starts_nothing() {
    for flag in ["--version", "-V"] {
        let output = run(&[flag], &[]);
        assert_eq!(output.status.code(), Some(0));
        assert_eq!(
            text(&output.stdout),
            format!("kpiggybank {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn an_unknown_argument_refuses_to_start() {
    for arg in ["--bogus", "serve", "-x"] {
        let output = run(&[arg], &[("DB_PASS", "hunter2")]);
        let said = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{arg}: {said}");
        assert!(said.contains(&format!("'{arg}'")), "{arg}: {said}");
        assert!(!said.contains("hunter2"), "{said}");
    }
}

#[test]
fn zero_connections_and_a_broken_log_filter_refuse_to_start() {
    for (var, value, accepts) in [
        ("MAX_CONNECTIONS", "0", "at least 1"),
        ("RUST_LOG", "[[[", "a log filter"),
    ] {
        let output = run(&[], &[(var, value), ("DB_PASS", "hunter2")]);
        let said = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {said}");
        assert!(said.contains(&format!("{var}={value:?}")), "{said}");
        assert!(said.contains(accepts), "{said}");
        assert!(
            !said.contains("hunter2") && !said.contains("panicked"),
            "{said}"
        );
    }
}

#[test]
fn a_bad_value_stops_the_start_naming_the_variable_and_what_it_accepts() {
    let cases = [
        ("PORT", "eighty", "a port number"),
        ("DB_BACKEND", "mysql", "embedded, couchdb, memory, dummy"),
        ("MODE", "loud", "dev or prod"),
        ("MAX_BODY_BYTES", "1", "at least 1024"),
        ("HOST", "localhost:80", "an IP address"),
        ("STORAGE_QUOTA_BYTES", "lots", "a number of bytes"),
        ("DB_NAME", "Bad Name", "a lowercase letter"),
    ];
    for (var, value, accepts) in cases {
        let output = refused(&[(var, value), ("DB_PASS", "pass-in-a-failed-start")]);
        // `try_start_in` reports "exited with <status>" when the process ended.
        let status = output.lines().next().unwrap_or("");
        assert!(
            status.starts_with("exited with exit status:") && !status.ends_with(": 0"),
            "{var}={value}: not a non-zero exit: {output}"
        );
        assert!(
            output.contains(&format!("{var}=")) && output.contains(value),
            "{var}={value}: the message does not name the variable and value:\n{output}"
        );
        assert!(
            output.contains(accepts),
            "{var}={value}: the message does not say what it accepts ({accepts}):\n{output}"
        );
        assert!(!output.contains("panicked"), "{output}");
        assert!(!output.contains("pass-in-a-failed-start"), "{output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_line_names_backend_database_and_address() {
    // The process: its start-up line is under test.
    let (mut server, _dir) = Process::start(&[("MODE", "prod"), ("DB_NAME", "kpi_cfg_42")]);
    let addr = server.addr.to_string();
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("no start-up line:\n{logs}"));
    assert!(line.contains(&format!("http://{addr}")), "{line}");
    assert!(line.contains("embedded"), "{line}");
    assert!(line.contains("kpi_cfg_42"), "{line}");
    stop_and_logs(&mut server);

    let (server, _dir) = Process::start(&[("MODE", "prod"), ("DB_BACKEND", "memory")]);
    let logs = server.logs();
    let line = logs.lines().find(|l| l.contains("listening on")).unwrap();
    assert!(
        line.contains("memory") && line.contains("bid_kpi"),
        "{line}"
    );
}

/// Posts, reads and fails a request, so that a verbose server has something to say.
async fn some_requests(server: &Endpoint) {
    assert_eq!(server.post_form(r#"{"timestamp":1}"#).await.status(), 201);
    assert_eq!(
        server.post_form(r#"{"timestamp":"soon"}"#).await.status(),
        400
    );
    server.get_json("/wsapi/interaction_data").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_dev_logs_requests_and_mode_prod_does_not() {
    // The process: what it logs is under test.
    let (mut dev, _dir) = Process::start(&[("MODE", "dev")]);
    some_requests(&dev).await;
    let logs = stop_and_logs(&mut dev);
    assert!(logs.contains("DEBUG"), "MODE=dev logs debug lines:\n{logs}");
    assert!(logs.contains("stored"), "MODE=dev logs each store:\n{logs}");
    assert!(logs.contains("answering 400"), "{logs}");

    let (mut prod, _dir) = Process::start(&[("MODE", "prod")]);
    some_requests(&prod).await;
    let logs = stop_and_logs(&mut prod);
    assert!(logs.contains("listening on"), "{logs}");
    assert!(
        !logs.contains("DEBUG") && !logs.contains("stored") && !logs.contains("answering 400"),
        "MODE=prod logs per-request lines:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_the_logs() {
    const PASS: &str = "db-pass-b7c1e9";
    const TOKEN: &str = "admin-token-5a0f3d";
    const WRONG: &str = "wrong-token-91d2aa";
    // The most verbose logging there is, every crate included.
    for rust_log in ["", "trace"] {
        let mut env = vec![("MODE", "dev"), ("DB_PASS", PASS), ("ADMIN_TOKEN", TOKEN)];
        if !rust_log.is_empty() {
            env.push(("RUST_LOG", rust_log));
        }
        // The process: what it logs is under test.
        let (mut server, _dir) = Process::start(&env);
        some_requests(&server).await;
        let smash = |token: &str| {
            http()
                .post(server.url("/wsapi/interaction_data/smash"))
                .bearer_auth(token)
                .send()
        };
        assert_eq!(smash(WRONG).await.unwrap().status(), 401);
        assert_eq!(smash(&TOKEN[1..]).await.unwrap().status(), 401);
        assert_eq!(smash(TOKEN).await.unwrap().status(), 200);
        let logs = stop_and_logs(&mut server);
        for secret in [PASS, TOKEN, &TOKEN[1..], WRONG] {
            assert!(
                !logs.contains(secret),
                "RUST_LOG={rust_log:?}: {secret} in the logs:\n{logs}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_backend_warns_and_works_but_keeps_nothing() {
    // The process: its warning is under test; the restart is in-process.
    let (mut server, dir) = Process::start(&[("DB_BACKEND", "memory"), ("MODE", "prod")]);
    let logs = server.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("nothing is saved")),
        "{logs}"
    );
    let res = server
        .post_form(r#"[{"timestamp":7,"a":1},{"timestamp":8,"a":2}]"#)
        .await;
    assert_eq!(res.status(), 201);
    let ack: Value = res.json().await.unwrap();
    let id = ack["ids"][0].as_str().unwrap();
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(2)
    );
    let all = server
        .get_json("/wsapi/interaction_data?start=7&end=8")
        .await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[1]["a"], 2);
    let one = server
        .get_json(&format!("/wsapi/interaction_data?id={id}"))
        .await;
    assert_eq!(one["results"]["a"], 1);
    stop_and_logs(&mut server);
    // Nothing was written to DATA_DIR, and a restart starts empty.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(files.is_empty(), "the memory store wrote {files:?}");
    let server = Server::start_in(dir.path(), &[("DB_BACKEND", "memory")]);
    assert_eq!(
        server.get_json("/wsapi/interaction_data/count").await,
        json!(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dummy_backend_accepts_posts_and_returns_samples() {
    // The process: its "nothing is saved" warning is under test.
    let (server, _dir) = Process::start(&[("DB_BACKEND", "dummy"), ("MODE", "prod")]);
    assert!(
        server.logs().contains("nothing is saved"),
        "{}",
        server.logs()
    );
    let res = server.post_form(support::FIXTURE).await;
    assert_eq!(res.status(), 201);
    // Posts are still checked.
    assert_eq!(
        server.post_form(r#"{"no":"timestamp"}"#).await.status(),
        400
    );

    let samples = server
        .get_json("/wsapi/interaction_data?start=1000&end=2000")
        .await;
    let samples = samples.as_array().unwrap();
    assert!(!samples.is_empty());
    for s in samples {
        let ts = s["timestamp"].as_i64().unwrap();
        assert!((1000..=2000).contains(&ts), "{s}");
        assert!(s["_id"].is_string() && s["event_stream"].is_array(), "{s}");
    }
    let ts: Vec<i64> = samples
        .iter()
        .map(|s| s["timestamp"].as_i64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "oldest first: {ts:?}");
    let limited = server.get_json("/wsapi/interaction_data?limit=3").await;
    assert_eq!(limited.as_array().unwrap().len(), 3);
}
