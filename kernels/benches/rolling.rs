//! `cargo bench -p peerdelta-kernels`: the AVX-512 rolling hash alone, over
//! 64 MiB in rounds of 16 KiB (as the chunker calls it), in MB/s.

use std::time::Instant;

use peerdelta_kernels::{GROUP, RollingHash};

fn main() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let table: [u32; 256] = std::array::from_fn(|_| next() as u32);
    let len = 64 << 20;
    let data: Vec<u8> = (0..len).map(|_| (next() >> 24) as u8).collect();
    let Some(mut kernel) = RollingHash::new(&table, 48, 2) else {
        println!("this CPU lacks AVX-512 F/BW/VBMI: nothing to measure");
        return;
    };
    let round = 16 << 10;
    let mut values = vec![0u32; round];
    let mut groups = vec![0u32; round / GROUP];
    let mut best = f64::MAX;
    let mut sink = 0u32;
    for _ in 0..5 {
        let t = Instant::now();
        let mut h = 0;
        for k in (48..len - round).step_by(round) {
            h = kernel.run(&data[k - 48..k + round], h, &mut values, &mut groups);
            sink ^= groups[3];
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    println!(
        "rolling hash, window 48: {:.0} MB/s",
        len as f64 / best / 1e6
    );

    // MD4 of the same bytes, alone and with the rolling hash alongside.
    let mut md4_best = f64::MAX;
    let mut fused_best = f64::MAX;
    let mut state = [0u32; 4];
    for _ in 0..5 {
        let t = Instant::now();
        for block in data.chunks_exact(64) {
            let block: &[u8; 64] = block.try_into().unwrap_or(&[0; 64]);
            peerdelta_kernels::md4::compress(&mut state, block);
        }
        md4_best = md4_best.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut h = 0;
        for k in (48..len - round).step_by(round) {
            let mut pass = kernel.begin(&data[k - 48..k + round], h, &mut values, &mut groups);
            for block in data[k - 48..k - 48 + round].chunks_exact(64) {
                let block: &[u8; 64] = block.try_into().unwrap_or(&[0; 64]);
                pass.step_md4(&mut state, block);
            }
            h = pass.finish();
            sink ^= groups[3];
        }
        fused_best = fused_best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box((sink, state));
    println!("MD4 alone: {:.0} MB/s", len as f64 / md4_best / 1e6);
    println!(
        "MD4 with the rolling hash alongside: {:.0} MB/s",
        len as f64 / fused_best / 1e6
    );
}
