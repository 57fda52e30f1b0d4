//! The README's first command, `peerdelta demo`, small: a DP and a subnet
//! of agents in one process, v1 then a delta v2.

use peerdelta_tests::{peerdelta, run_ok};

#[test]
fn demo_shows_one_download_per_subnet_and_a_small_delta() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        peerdelta(["demo", "--mib", "8", "--agents", "3", "--dir"]).arg(dir.path().join("d")),
    );
    assert!(out.contains("every agent's cache verifies"), "{out}");
    // "v2 to 3 agents (...): master agentN; DP sent X kB for 3 x Y MB of files (P%)"
    let v2 = out
        .lines()
        .find(|l| l.trim_start().starts_with("v2 to 3 agents"))
        .unwrap_or_else(|| panic!("no v2 line: {out}"));
    let percent: f64 = v2
        .split('(')
        .nth(2)
        .and_then(|p| p.split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no percentage in {v2:?}"));
    assert!(percent < 1.0, "v2 cost {percent}% of a full download: {v2}");
    assert!(v2.contains("master agent"), "{v2}");
}
