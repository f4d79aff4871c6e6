//! Figures, their baselines and targets, the summary table, and the
//! progress line shown during long runs.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency recorded, in microseconds (a minute); longer ones saturate.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// A smaller latency histogram (2 significant digits, up to 10 s) for
/// scenarios that keep one per connection, such as a thousand subscribers.
pub fn small_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000, 2).expect("valid histogram bounds")
}

/// What one load loop measured.
pub struct LoadResult {
    /// Blobs acknowledged (201 or ack).
    pub ok_blobs: u64,
    /// Requests or frames answered with an error, or failed on the wire.
    pub errors: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Request-to-answer latency, microseconds.
    pub latency: Histogram<u64>,
    /// The first error seen, to say why a run failed.
    pub first_error: Option<String>,
    /// Cores the server and the bench used meanwhile (who is the bottleneck).
    pub cpu: String,
}

impl LoadResult {
    /// Acknowledged blobs per second.
    pub fn rate(&self) -> f64 {
        self.ok_blobs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `p50/p99/max` in milliseconds, for the table.
    pub fn latency_text(&self) -> String {
        latency_text(&self.latency)
    }
}

/// `p50/p99/max` of a microsecond histogram, in milliseconds.
pub fn latency_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    format!(
        "{:.2}/{:.2}/{:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// A target a figure is held to.
#[derive(Clone, Debug)]
pub enum Target {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
    /// The ratio to the baseline must be at least this.
    RatioAtLeast(f64),
}

/// One line of the summary table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Scenario and its parameters, e.g. `ingest http c=32 b=1`.
    pub scenario: String,
    /// The server it ran against (`embedded`, `bare`, `couchdb-direct`...).
    pub backend: String,
    /// What is measured, e.g. `acked blobs/s`.
    pub metric: String,
    /// The figure.
    pub value: f64,
    /// Extra text shown after the figure (latencies, errors).
    pub detail: String,
    /// The baseline it is compared with, measured in the same run: name and value.
    pub baseline: Option<(String, f64)>,
    /// The target, when the issue names one.
    pub target: Option<Target>,
}

impl Row {
    /// A row with no baseline, target or detail.
    pub fn new(scenario: &str, backend: &str, metric: &str, value: f64) -> Row {
        Row {
            scenario: scenario.into(),
            backend: backend.into(),
            metric: metric.into(),
            value,
            detail: String::new(),
            baseline: None,
            target: None,
        }
    }

    /// Adds the detail text.
    pub fn detail(mut self, detail: impl Into<String>) -> Row {
        self.detail = detail.into();
        self
    }

    /// Adds the baseline measured in the same run.
    pub fn baseline(mut self, name: &str, value: f64) -> Row {
        self.baseline = Some((name.into(), value));
        self
    }

    /// Adds the target.
    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    /// Value divided by the baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|(_, b)| self.value / b.max(1e-9))
    }

    /// Whether the target is met; `None` without a target.
    pub fn met(&self) -> Option<bool> {
        Some(match self.target.as_ref()? {
            Target::AtLeast(t) => self.value >= *t,
            Target::AtMost(t) => self.value <= *t,
            Target::RatioAtLeast(t) => self.ratio()? >= *t,
        })
    }

    fn target_text(&self) -> String {
        match &self.target {
            None => "-".into(),
            Some(Target::AtLeast(t)) => format!(">= {}", number(*t)),
            Some(Target::AtMost(t)) => format!("<= {}", number(*t)),
            Some(Target::RatioAtLeast(t)) => format!(">= {t}x baseline"),
        }
    }
}

/// A number with thousands separators, or two decimals when small.
pub fn number(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else {
        format!("{v:.2}")
    }
}

/// The machine a run happened on.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, load average {}", load_average())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Prints the summary table to stdout.
pub fn print_table(rows: &[Row], machine_at_start: &str) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("== kpiggybank-bench summary ==");
    println!(
        "machine: {machine_at_start} (at start); {} (at end)",
        machine()
    );
    println!("client and server share these cores; ratios compare figures of this run");
    let header = [
        "scenario",
        "backend",
        "cores",
        "metric",
        "value",
        "detail",
        "baseline (same run)",
        "ratio",
        "target",
        "met",
    ];
    let lines: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.clone(),
                r.backend.clone(),
                cores.to_string(),
                r.metric.clone(),
                number(r.value),
                if r.detail.is_empty() {
                    "-".into()
                } else {
                    r.detail.clone()
                },
                r.baseline
                    .as_ref()
                    .map_or("-".into(), |(n, v)| format!("{n} {}", number(*v))),
                r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
                r.target_text(),
                match r.met() {
                    None => "-".into(),
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.len());
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", text.join(" | "));
    };
    print(&header.map(String::from));
    println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
    for line in &lines {
        print(line);
    }
}

/// Counters a load loop bumps and a progress line reads.
pub struct Progress {
    /// Units done (blobs, deliveries, connections).
    pub done: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

/// Shows a progress line on stderr until dropped: rewritten in place on a
/// terminal, one line every few seconds otherwise (logs stay readable).
pub struct ProgressLine {
    counters: Arc<Progress>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    /// Starts showing `label`, counting towards `total` `unit`s.
    pub fn start(label: &str, total: u64, unit: &'static str) -> ProgressLine {
        let counters = Arc::new(Progress {
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let thread = {
            let (counters, stop, label) = (counters.clone(), stop.clone(), label.to_string());
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut next = start + every;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() < next {
                        continue;
                    }
                    next += every;
                    let done = counters.done.load(Ordering::Relaxed);
                    let secs = start.elapsed().as_secs_f64();
                    let line = format!(
                        "[{label}] {}/{} {unit}, {}/s, {} errors, {secs:.0} s",
                        number(done as f64),
                        number(total as f64),
                        number(done as f64 / secs.max(1e-9)),
                        counters.errors.load(Ordering::Relaxed),
                    );
                    if tty {
                        eprint!("\r\x1b[2K{line}");
                    } else {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprint!("\r\x1b[2K");
                }
            })
        };
        ProgressLine {
            counters,
            stop,
            thread: Some(thread),
        }
    }

    /// The counters to bump.
    pub fn counters(&self) -> Arc<Progress> {
        self.counters.clone()
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
