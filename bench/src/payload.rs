//! The sign-in sample blobs the ingest, fan-out and CouchDB loads send,
//! built once from `kpiggybank::sample` so the load loops only concatenate text.

use kpiggybank::sample::login_sequence;

/// Distinct sample blobs cycled through; enough variety for the store's
/// indexes, small enough to build in a blink.
pub const POOL: u64 = 1024;

/// First sample timestamp (the fixture's).
pub const BASE_TIMESTAMP: i64 = 1_333_046_104_322;

/// Sign-in sample blobs, built once, so the load loop only concatenates.
/// Timestamps rise with the blob index, as real sign-ins arrive: cycling
/// through a few timestamps would scatter inserts over the store's
/// timestamp index and measure a workload nobody has.
pub struct Payload {
    /// Each sample's text after its `timestamp` member.
    rests: Vec<String>,
}

impl Payload {
    /// [`POOL`] login sequences.
    pub fn new() -> Payload {
        let prefix = format!("{{\"timestamp\":{BASE_TIMESTAMP},");
        Payload {
            rests: (0..POOL)
                .map(|n| {
                    let blob = login_sequence(BASE_TIMESTAMP, n);
                    blob.strip_prefix(&prefix)
                        .expect("samples start with their timestamp")
                        .to_string()
                })
                .collect(),
        }
    }

    /// The `i`th blob's JSON text: sample `i % POOL` at timestamp base + `i`.
    pub fn blob(&self, i: u64) -> String {
        let rest = &self.rests[(i % POOL) as usize];
        let mut out = String::with_capacity(rest.len() + 30);
        out.push_str("{\"timestamp\":");
        out.push_str(&(BASE_TIMESTAMP + i as i64).to_string());
        out.push(',');
        out.push_str(rest);
        out
    }

    /// Blobs `first..first+n` as one JSON value: the blob itself when `n` is 1,
    /// else a list.
    pub fn data(&self, first: u64, n: u64) -> String {
        if n == 1 {
            return self.blob(first);
        }
        let mut out = String::with_capacity(n as usize * 720 + 2);
        out.push('[');
        for j in 0..n {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&self.blob(first + j));
        }
        out.push(']');
        out
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::new()
    }
}
