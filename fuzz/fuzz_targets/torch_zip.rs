//! The zip container (and everything behind it) on arbitrary bytes that start like a zip;
//! every tensor of an accepted file is read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::weights::TensorSource;
use sd_core::weights::ckpt::CkptFile;
use sd_core::weights::pickle::Limits;

fuzz_target!(|data: &[u8]| {
    let mut bytes = b"PK\x03\x04".to_vec();
    bytes.extend_from_slice(data.strip_prefix(b"PK\x03\x04").unwrap_or(data));
    let limits = Limits {
        allow_deflate: true,
        max_pickle_bytes: 1 << 20,
        ..Limits::default()
    };
    if let Ok(ck) = CkptFile::from_bytes(bytes, &limits) {
        for name in ck.tensor_names() {
            let _ = ck.read_f32(&name);
        }
    }
});
