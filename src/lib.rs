//! Workspace root package: owns the integration tests, benchmarks and examples.

/// The README's Rust snippets, compiled and run as doctests from the workspace root (so that its
/// relative fixture paths resolve).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
