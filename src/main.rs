//! The `pipelens` command line.

fn main() {}
