#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shards::fuzzing::wire_batch(data));
