#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| peerdelta_fuzz::pack_frame(data));
