//! Compute devices, chosen at run time.

use std::fmt;

use crate::error::{Error, Result};

/// Where a tensor lives and where operations on it run.
///
/// The device is a run-time value, not a type parameter, so that a binding can choose it from a
/// string and model code never changes with the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host CPU (ndarray storage, multi-threaded GEMM).
    #[default]
    Cpu,
    /// A CUDA GPU, by ordinal. Needs the `cuda` feature and a driver at run time.
    Cuda(usize),
}

impl Device {
    /// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N`.
    pub fn parse(name: &str) -> Result<Self> {
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(ordinal) => ordinal.parse().map(Device::Cuda).map_err(|_| {
                    Error::invalid_argument(
                        "device",
                        format!("`{name}`: expected `cpu`, `cuda` or `cuda:N`"),
                    )
                }),
                None => Err(Error::invalid_argument(
                    "device",
                    format!("`{name}`: expected `cpu`, `cuda` or `cuda:N`"),
                )),
            },
        }
    }

    /// Whether this is the CPU.
    pub fn is_cpu(self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(Device::parse("cpu").ok(), Some(Device::Cpu));
        assert_eq!(Device::parse("CUDA").ok(), Some(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:1").ok(), Some(Device::Cuda(1)));
        assert!(Device::parse("tpu").is_err());
        assert!(Device::parse("cuda:x").is_err());
    }
}
