//! The demo: the ceiling layout planner, served and driven through
//! pipelens' public API like any user's pipeline. Its modules refer to each
//! other as `crate::demo::…`, so integration tests can include this folder
//! as their own `demo` module.

pub mod ceiling;
#[cfg(feature = "cli")]
pub mod loadgen;
pub mod planner;
