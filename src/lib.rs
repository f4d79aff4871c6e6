//! kpiggybank: a durable store and realtime hub for KPI blobs.
//!
//! The map of the crate follows `DESIGN.md`:
//!
//! ```text
//! producers ─► http.rs / ws.rs ─► blob.rs (parse + check, once)
//!                                   │
//!                                   ▼
//!                              batcher.rs (group commit) ─► store/ (embedded SQLite, memory, dummy)
//!                                                              │ change feed, seq order
//!                                                              ▼
//! subscribers ◄── http.rs /stream, ws.rs ◄────────────────── hub.rs (serialize once, fan out, catch up)
//! ```
//!
//! - [`config`]: environment variables → [`config::Config`].
//! - [`blob`]: the only parser of submissions; the [`blob::Blob`] type.
//! - [`store`]: the [`store::Store`] trait and one module per backend.
//! - [`batcher`]: group commit in front of any store; answers after durability.
//! - [`hub`]: change fan-out, slow-subscriber catch-up from the store.
//! - [`http`]: the HTTP routes, compatible with the Node.js original.
//! - [`ws`]: the WebSocket endpoint: push and subscribe on one socket.
//! - [`client`]: the Rust client: save, range, count, last, follow changes.
//! - [`net`]: builds the HTTP clients (CouchDB, the Rust client).
//! - [`error`]: every error a client can see, turned into an answer in one place.
//! - [`assets`]: the dashboard's static files, compiled into the binary.
//! - [`server`]: wires the parts together, serves, shuts down gracefully.

pub mod assets;
pub mod batcher;
pub mod blob;
pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod net;
pub mod sample;
pub mod server;
pub mod store;
pub mod ws;
