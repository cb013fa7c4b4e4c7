//! The demo: the ceiling layout planner and the sentiment pipeline, served
//! and driven through pipelens' public API like any user's pipelines. Its
//! modules refer to each other as `crate::demo::…`, so integration tests can
//! include this folder as their own `demo` module; `sentiment` uses relative
//! paths only, since the sentiment example includes it on its own.

pub mod ceiling;
#[cfg(feature = "cli")]
pub mod loadgen;
pub mod planner;
pub mod sentiment;
