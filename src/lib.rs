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
//! - `manage`: token-management use-cases (authorise, apply domain rules, commit, update the cache),
//!   account policies (`manage::policy`) and WatchEvents (`manage::watch`).
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
pub mod ops;
pub mod pb;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod validation;
