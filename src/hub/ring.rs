//! The ring: the recent changes of the feed, each serialized once, shared by
//! every subscriber that reads the live feed.
//!
//! Only the pump writes to it; subscriptions read from it at their own pace,
//! by position. Positions only grow: a change keeps its position while it is
//! in the ring, and a subscriber whose position fell out of it is told so.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::feed::{Change, Seq};
use crate::protocol;

/// One change in the ring, serialized once.
#[derive(Debug)]
pub struct Entry {
    /// The store's seq of this change.
    pub seq: Seq,
    /// The blob id.
    pub id: Arc<str>,
    /// The change frame (a WebSocket text frame and a stream line), shared,
    /// not copied, by every subscriber.
    pub frame: Bytes,
}

impl Entry {
    /// Serializes a change once.
    pub fn new(change: Change) -> Entry {
        Entry {
            frame: protocol::change_frame(&change),
            seq: change.seq,
            id: change.id,
        }
    }
}

/// What a read at a position found.
pub enum Read {
    /// The entries from that position on (empty: nothing new yet).
    Entries(Vec<Arc<Entry>>),
    /// The position left the ring: read the store instead.
    Lagged,
}

/// Where a caught-up subscriber goes on in the ring.
pub enum JoinAt {
    /// At this position.
    At(u64),
    /// The ring has not seen the last change yet: the feed lags the store.
    NotYet,
    /// Changes after the last one left the ring already: read the store again.
    Missed,
}

struct State {
    /// Position of `entries[0]`.
    base: u64,
    entries: VecDeque<Arc<Entry>>,
    /// Seq of the newest change published (or where the feed stood at start).
    last_seq: Option<Seq>,
    /// Seq of the newest change that left the ring.
    evicted_seq: Option<Seq>,
    /// The epoch the entries belong to.
    epoch: Arc<str>,
}

/// The ring and the signal that it grew.
pub struct Ring {
    state: Mutex<State>,
    capacity: usize,
    /// Position one past the newest entry; subscriptions wait on it.
    head: watch::Sender<u64>,
    /// How many times a subscriber fell out of the ring.
    lagged: AtomicU64,
}

impl Ring {
    /// An empty ring of `capacity` entries for a feed in `epoch` that stood at `start`.
    pub fn new(capacity: usize, epoch: Arc<str>, start: Option<Seq>) -> Ring {
        Ring {
            state: Mutex::new(State {
                base: 0,
                entries: VecDeque::with_capacity(capacity.min(4096)),
                last_seq: start,
                evicted_seq: None,
                epoch,
            }),
            capacity: capacity.max(1),
            head: watch::channel(0).0,
            lagged: AtomicU64::new(0),
        }
    }

    /// Appends changes in feed order, evicting the oldest; wakes readers.
    pub fn publish(&self, entries: Vec<Arc<Entry>>) {
        if entries.is_empty() {
            return;
        }
        let head = {
            let mut state = self.state.lock();
            for entry in entries {
                if state.entries.len() == self.capacity
                    && let Some(old) = state.entries.pop_front()
                {
                    state.evicted_seq = Some(old.seq.clone());
                    state.base += 1;
                }
                state.last_seq = Some(entry.seq.clone());
                state.entries.push_back(entry);
            }
            state.base + state.entries.len() as u64
        };
        self.head.send_replace(head);
    }

    /// Starts over in a new epoch: the old entries' seqs mean nothing in it.
    pub fn reset(&self, epoch: Arc<str>, start: Option<Seq>) {
        let head = {
            let mut state = self.state.lock();
            state.base += state.entries.len() as u64;
            state.entries.clear();
            state.last_seq = start;
            state.evicted_seq = None;
            state.epoch = epoch;
            state.base
        };
        self.head.send_replace(head);
    }

    /// The epoch of the entries.
    pub fn epoch(&self) -> Arc<str> {
        self.state.lock().epoch.clone()
    }

    /// The head position and the seq of the newest change.
    pub fn head_and_seq(&self) -> (u64, Option<Seq>) {
        let state = self.state.lock();
        (
            state.base + state.entries.len() as u64,
            state.last_seq.clone(),
        )
    }

    /// A receiver that changes whenever the head moves.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Up to `max` entries from `pos` on.
    pub fn read_from(&self, pos: u64, max: usize) -> Read {
        let state = self.state.lock();
        if pos < state.base {
            self.lagged.fetch_add(1, AtomicOrdering::Relaxed);
            return Read::Lagged;
        }
        let skip = (pos - state.base) as usize;
        Read::Entries(state.entries.iter().skip(skip).take(max).cloned().collect())
    }

    /// How many times a reader fell out of the ring.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(AtomicOrdering::Relaxed)
    }

    /// Where a caught-up subscriber continues: right after the change it
    /// got last (`id`, or `seq` when no id is known). `read_head` is the head
    /// when the store read that came up empty began; `order` orders the
    /// feed's seqs, when they can be ordered at all.
    pub fn join_point(
        &self,
        id: Option<&str>,
        seq: Option<&Seq>,
        read_head: u64,
        order: impl Fn(Option<&Seq>, &Seq) -> Option<Ordering>,
    ) -> JoinAt {
        let state = self.state.lock();
        let after = |i: usize| JoinAt::At(state.base + i as u64 + 1);
        if let Some(id) = id
            && let Some(i) = state.entries.iter().rposition(|e| &*e.id == id)
        {
            return after(i);
        }
        let Some(seq) = seq else {
            // Nothing delivered and the store had nothing: what the ring got
            // before the read began was committed before it, so it is gone
            // (smashed); what came after is new.
            return if read_head < state.base {
                JoinAt::Missed
            } else {
                JoinAt::At(read_head)
            };
        };
        if let Some(i) = state.entries.iter().rposition(|e| &e.seq == seq) {
            return after(i);
        }
        // A feed whose seqs are ordered: once it has reached `seq`, join at
        // the first newer one (this also covers a change smashed since, or
        // one from before the ring's memory). Opaque seqs wait for the id.
        let reached = order(state.last_seq.as_ref(), seq).is_some_and(Ordering::is_ge);
        if !reached {
            return JoinAt::NotYet;
        }
        // Changes newer than `seq`, published after the read began (so not
        // in it), that already left the ring were missed. (Older evicted ones
        // were in the store when it was read, unless smashed.)
        if state.base > read_head
            && state
                .evicted_seq
                .as_ref()
                .and_then(|evicted| order(Some(evicted), seq))
                .is_some_and(Ordering::is_gt)
        {
            return JoinAt::Missed;
        }
        let newer = state
            .entries
            .partition_point(|e| order(Some(&e.seq), seq).is_some_and(Ordering::is_le));
        JoinAt::At(state.base + newer as u64)
    }
}
