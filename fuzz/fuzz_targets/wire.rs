#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| peerdelta_fuzz::wire(data));
