//! The DP goes away in the middle of a subnet transfer and comes back
//! minutes later (issue 17): three real daemons getting v2 of a 24 MiB
//! image, the DP process killed at 40% of the origin bytes and started
//! again on the same address after `PEERDELTA_TEST_DP_OUTAGE_S` seconds
//! (7 minutes unless set). Every agent must complete after it returns,
//! without refetching what was verified before: the DP is paid at most
//! 1.10 x what one agent alone costs it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use peerdelta_tests::DpServer;
use peerdelta_tests::agents::*;
use peerdelta_tests::library::{key_file, metric, publish_big, published_series};
use peerdelta_tests::{peerdelta, run_ok};

fn outage() -> Duration {
    let s = std::env::var("PEERDELTA_TEST_DP_OUTAGE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(420);
    Duration::from_secs(s)
}

#[test]
fn a_dp_down_for_minutes_mid_transfer_costs_nothing_twice() {
    let s = published_series();
    publish_big(&s);
    let mut dp = DpServer::start(&s.lib);
    let single = single_run_pkg(&s, &dp, "big");
    let caches: Vec<PathBuf> = (0..3).map(|i| s.dir.path().join(format!("o{i}"))).collect();
    for c in &caches {
        get_alone_pkg(&s, &dp.url(), c, "big", 1);
    }
    // Slow enough to stop the DP mid-transfer: 512 KiB/s, one 64 KiB
    // request at a time.
    let net = start_agents(
        &s,
        &dp.url(),
        &caches,
        "[governor]\nmax_rate = \"512 KiB/s\"\n",
        "concurrency = 1\nrequest_bytes = 65536\n",
    );
    let p0 = metric(&dp.addr, PAYLOAD);
    let all: Vec<&Agent> = net.agents.iter().collect();
    let pending = start_all(&all, "big");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut before = 0;
    while (before as f64) < 0.4 * single as f64 {
        assert!(Instant::now() < deadline, "the transfer stalled before 40%");
        std::thread::sleep(Duration::from_millis(20));
        before = metric(&dp.addr, PAYLOAD) - p0;
    }
    let addr = dp.addr.clone();
    // Killed (the bytes of the answer it was sending are lost, and not
    // counted: the figure below errs low by at most one 64 KiB request).
    drop(dp);
    let down = outage();
    eprintln!(
        "DP killed at {before} B of {single} B; back in {} s",
        down.as_secs()
    );
    std::thread::sleep(down);
    dp = DpServer::start_at(&s.lib, &addr);
    let t0 = Instant::now();
    for (h, a) in pending.into_iter().zip(&net.agents) {
        let (ok, _out, err) = h.join().unwrap();
        assert!(ok, "{}: get failed: {err}\n{}", a.name, a.logs());
    }
    let after = metric(&dp.addr, PAYLOAD);
    let wan = before + after;
    eprintln!(
        "single run {single} B; three agents across a {} s DP outage: {wan} B ({:.3}x), \
         done {:.1} s after it returned",
        down.as_secs(),
        wan as f64 / single as f64,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        wan as f64 <= 1.10 * single as f64,
        "across the outage the DP sent {wan} B, one agent alone {single} B"
    );
    for a in &net.agents {
        run_ok(
            peerdelta(["cache", "verify", "--cache"])
                .arg(&a.cache)
                .arg("--dp-key")
                .arg(key_file(&s.lib)),
        );
    }
}
