//! The entry point on any bytes: content sniffing, then whichever container matches, then the
//! embedding and hypernetwork extractors and every tensor read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::weights::TensorSource;
use sd_core::weights::ckpt::{CkptFile, sniff};
use sd_core::weights::pickle::Limits;

fuzz_target!(|data: &[u8]| {
    let _ = sniff(data);
    if let Ok(ck) = CkptFile::from_bytes(data.to_vec(), &Limits::default()) {
        let _ = ck.embedding();
        let _ = ck.hypernetwork();
        for name in ck.tensor_names() {
            let _ = ck.read_f32(&name);
        }
    }
});
