//! kpiggybank: a durable store and realtime hub for KPI blobs.
//!
//! The map of the crate follows `docs/DESIGN.md`:
//!
//! ```text
//! producers ─► http.rs / ws.rs ─► blob.rs (parse + check, once)
//!                                   │
//!                                   ▼
//!                              batcher.rs (group commit) ─► store/ (embedded, couchdb, memory, dummy)
//!                                                              │ FeedSender: changes in feed order
//!                                                              ▼
//!                                                      hub/pump.rs ─► hub/ring.rs
//!                                                                          │
//! subscribers ◄── http.rs /stream, ws.rs ◄── hub/subscription.rs ◄─────────┘
//!                                              (catch up from the store's ChangeFeed)
//! ```
//!
//! - `config`: environment variables (or options; `--help`) → [`Config`].
//! - `backoff`: the one reconnect delay (CouchDB relay and forwarder, the client).
//! - `blob`: the only parser of submissions; the `Blob` type.
//! - `store`: the `BlobStore` trait and one module per backend, each with
//!   its change feed (`store/embedded/feed.rs`, `store/couchdb/feed.rs` and
//!   its live side `relay.rs`, …).
//! - `feed`: what a store's change feed is: `Seq`, `Change`, the
//!   `ChangeFeed` questions and the live `FeedEvent`s.
//! - `batcher`: group commit in front of any store; answers after durability.
//! - `hub`: the pump from feed to ring, the ring, subscriptions that catch up.
//! - `protocol`: the wire format: change frames, WebSocket frames, and the one
//!   reader of `since`, `last` and `epoch`.
//! - `http`, `ws`, `assets`: the routes (HTTP API, WebSocket, dashboard files),
//!   over the `state` they share; `app` puts them in one router.
//! - `error`: every error a client can see, turned into an answer in one place.
//! - `server`: opens the store, serves a listener, shuts down gracefully.
//! - [`client`]: the Rust client: save, range, count, last, follow changes.
//! - [`sample`]: sign-in sample blobs, for tests and load generators.

mod app;
mod assets;
mod backoff;
mod batcher;
mod blob;
pub mod client;
mod config;
mod error;
mod feed;
mod http;
mod hub;
mod net;
mod protocol;
mod recent_ids;
mod registry;
mod rollup;
pub mod sample;
mod sampler;
mod server;
mod state;
mod store;
mod ws;

pub use config::{Config, ConfigError, Startup, StartupError};
pub use server::{App, StartError, run, serve};
