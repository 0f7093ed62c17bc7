//! Benchmarks live in `benches/`; this crate exists to keep criterion out of the default build.
