//! The safetensors reader on any bytes: our header pre-check (sizes, JSON, duplicate names,
//! bounds, overlap, alignment), the crate's parse as a second opinion, then every tensor read,
//! through a memory map and through buffered reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::weights::{ReadMode, SafetensorsFile, SafetensorsLimits, TensorSource};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("sdrs-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    for mode in [ReadMode::Mmap, ReadMode::Buffered] {
        if let Ok(file) = SafetensorsFile::open_with(&path, mode, &SafetensorsLimits::default()) {
            let _ = file.metadata();
            for name in file.tensor_names() {
                let _ = file.read_f32(&name);
            }
        }
    }
});
