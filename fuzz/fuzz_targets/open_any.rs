//! The entry points on any bytes: content sniffing and the pickle containers from memory (then
//! the embedding and hypernetwork extractors and every tensor read), and, from a file, the
//! pipeline's `open_tensor_source` (which picks the safetensors or pickle reader by content)
//! and the user-facing scanner behind `convert --scan`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::weights::ckpt::{CkptFile, sniff};
use sd_core::weights::pickle::Limits;
use sd_core::weights::{ReadMode, TensorSource, open_tensor_source, scan_checkpoint};

fuzz_target!(|data: &[u8]| {
    let _ = sniff(data);
    if let Ok(ck) = CkptFile::from_bytes(data.to_vec(), &Limits::default()) {
        let _ = ck.embedding();
        let _ = ck.hypernetwork();
        for name in ck.tensor_names() {
            let _ = ck.read_f32(&name);
        }
    }

    let path = std::env::temp_dir().join(format!("sdrs-fuzz-any-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(source) = open_tensor_source(&path, ReadMode::Buffered) {
        for name in source.tensor_names() {
            let _ = source.read_f32(&name);
        }
    }
    let _ = scan_checkpoint(&path);
});
