//! Shared pieces of the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod captured;
pub mod export;
pub mod otlp;
pub mod service;
pub mod stack;
