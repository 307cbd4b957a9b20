//! copyist's integration tests: one binary, real processes and sockets on port 0, fresh temp
//! dirs. `TEST_LOG=1` shows the nodes' logs.

// Test support is a private module tree; `pub` there means "for the test modules".
#![allow(unreachable_pub, missing_docs)]

mod support;

mod affinity;
mod at_rest;
mod capture;
mod cli;
mod cluster;
mod cms;
mod crash;
// Needs the crash points compiled in: `cargo test --features failpoints` (scripts/check.sh).
#[cfg(feature = "failpoints")]
mod crashpoints;
mod durability;
mod haproxy;
mod health;
mod hostile;
mod hygiene;
mod lifecycle;
mod metrics;
mod network;
mod passthrough;
mod reload;
mod replication_auth;
mod semantics;
mod soak;
mod status_page;
mod storage;
mod tls;
