//! copyist: a transparent capture layer in front of an unmodified CMS.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin;
pub mod blobs;
pub mod body;
pub mod capture;
pub mod cli;
pub mod config;
pub mod error;
pub mod log;
pub mod node;
pub mod origin;
pub mod proxy;
pub mod shutdown;
pub mod tls;
