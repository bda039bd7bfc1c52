//! The legacy (pre-zip) container on arbitrary bytes behind the torch magic number; every
//! tensor of an accepted file is read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::weights::TensorSource;
use sd_core::weights::ckpt::CkptFile;
use sd_core::weights::pickle::Limits;

const MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

fuzz_target!(|data: &[u8]| {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(data.strip_prefix(&MAGIC[..]).unwrap_or(data));
    if let Ok(ck) = CkptFile::from_bytes(bytes, &Limits::default()) {
        for name in ck.tensor_names() {
            let _ = ck.read_f32(&name);
        }
    }
});
