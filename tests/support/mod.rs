//! Shared pieces of the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod captured;
pub mod export;
pub mod late_answers;
pub mod mlserver;
pub mod otlp;
pub mod postgres;
pub mod python;
pub mod replica;
pub mod sentiment_features;
pub mod service;
pub mod stack;
