//! The pickle interpreter on arbitrary bytes, with the protocol-4 tier on to reach every
//! opcode handler, followed by every extractor over whatever it built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::weights::pickle::{
    Limits, PersistentIds, extract_embedding, extract_hypernetwork, extract_state_dict, unpickle,
};

fuzz_target!(|data: &[u8]| {
    for protocol4 in [false, true] {
        let limits = Limits {
            allow_protocol4: protocol4,
            ..Limits::default()
        };
        if let Ok(doc) = unpickle(data, &limits, PersistentIds::Zip, 1 << 20) {
            let _ = extract_state_dict(&doc, &limits);
            let _ = extract_embedding(&doc);
            let _ = extract_hypernetwork(&doc);
        }
    }
});
