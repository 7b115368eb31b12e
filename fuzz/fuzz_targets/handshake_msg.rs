#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shards::fuzzing::handshake_msg(data));
