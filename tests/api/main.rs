//! Black-box integration tests: one binary, the real server on a random port,
//! driven through the generated tonic client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod bad_input;
mod cache;
mod callers;
mod day_two;
mod follower;
mod gateways;
mod ip_binding;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod policy;
mod postgres;
mod privileges;
mod readme;
mod reasons;
mod search;
mod search_index;
mod smoke;
mod sweeper;
mod tls;
mod verifier;
mod watch;
