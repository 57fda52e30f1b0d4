//! `cargo bench -p peerdelta-protocol`: RDC throughput on a 256 MiB buffer.
//! Prints MB/s for MD4 alone, boundaries only, the full signature and the
//! parallel signature, measured in one run. Set `PEERDELTA_BENCH_MIB` to
//! change the buffer size.

use std::time::Instant;

use peerdelta_protocol::rdc::bench;

fn main() {
    let mib: usize = std::env::var("PEERDELTA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let buf = bench::sample_buffer(mib << 20);
    let report = bench::run(&buf, threads, 3, &mut |work| {
        let t = Instant::now();
        work();
        t.elapsed()
    });
    print!("{}", report.table());
}
