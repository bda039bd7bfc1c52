//! Workspace root package: owns the integration tests, benchmarks and examples.
