//! The registry of open WebSocket connections: counts, the connection limit,
//! and what `/wsapi/stats` reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

/// What is known about one open connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether it currently follows the change feed.
    pub subscribed: AtomicBool,
}

/// Every open WebSocket connection.
pub struct Registry {
    conns: DashMap<u64, Arc<ConnInfo>>,
    open: AtomicUsize,
    next_id: AtomicU64,
    max: usize,
    refused: AtomicU64,
    closed_too_slow: AtomicU64,
}

/// Holds a place in the registry; leaving it frees the place.
pub struct ConnGuard {
    registry: Arc<Registry>,
    id: u64,
    /// This connection's entry.
    pub info: Arc<ConnInfo>,
}

impl Registry {
    /// A registry that admits at most `max` connections.
    pub fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            conns: DashMap::new(),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            max,
            refused: AtomicU64::new(0),
            closed_too_slow: AtomicU64::new(0),
        })
    }

    /// Takes a place for a new connection, or `None` when all are in use.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<ConnGuard> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnInfo {
            peer,
            subscribed: AtomicBool::new(false),
        });
        self.conns.insert(id, info.clone());
        Some(ConnGuard {
            registry: self.clone(),
            id,
            info,
        })
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Open connections that follow the change feed.
    pub fn subscribers(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.subscribed.load(Ordering::Relaxed))
            .count()
    }

    /// Connections refused because the registry was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a subscriber closed because it took no frames for too long.
    pub fn record_too_slow(&self) {
        self.closed_too_slow.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribers closed because they took no frames for too long.
    pub fn closed_too_slow(&self) -> u64 {
        self.closed_too_slow.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry.conns.remove(&self.id);
        self.registry.open.fetch_sub(1, Ordering::AcqRel);
    }
}
