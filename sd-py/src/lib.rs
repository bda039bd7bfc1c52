//! Python bindings for sd-core, built by maturin into the `sdrs` wheel.
//!
//! This crate only re-exports the core version until the Python module lands.
#![deny(missing_docs)]

/// The version of the bindings, which is the workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
