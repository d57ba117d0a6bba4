//! tokend: an API-token service over gRPC.
//!
//! Layout, outermost first:
//! - `main.rs` / `cli`: the `tokend` binary (serve, migrate, bootstrap, backup, restore, move,
//!   events export) and its configuration.
//! - `ops`: day-two operations: backup and restore, store moves, audit export and retention.
//! - `startup`: `Application::build` binds, wires and runs the server until shutdown;
//!   `tls` (rustls, certificate reload), `http` (the metrics listener),
//!   `health` (what grpc.health reports), `supervisor` (restarts background tasks).
//! - `api/`: the gRPC wire layer (handlers only); `pb`: generated protobuf types.
//! - `manage`: token-management use-cases (authorise, apply domain rules, commit, update the cache).
//! - `manage_policy`: account policies (read, audited change) and the rules `manage` enforces.
//! - `manage_watch`: WatchEvents, audit events streamed as they commit, resumable by id.
//! - `validation/`: the Validate core: verified-token cache, argon2 pool, last-used batching.
//! - `domain/`: token format, fields, state machine, privileges.
//! - `store/`: sea-orm entities, migrations and queries.
//! - `error`: the one error type and its mapping to gRPC status codes.
//! - `telemetry`: logging, and Prometheus metrics (`telemetry::metrics`).

pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod health;
pub mod http;
pub mod manage;
pub mod manage_policy;
pub mod manage_watch;
pub mod ops;
pub mod pb;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod validation;
