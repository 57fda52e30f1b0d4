//! simnet end to end: shipped scenarios load, runs are deterministic, the
//! invariants hold on healthy runs and fail loudly on a broken one, and the
//! command writes its report and plots.

use std::path::Path;
use std::process::Command;

use peerdelta_simnet::scenario::Scenario;

fn small(extra_branch: &str, faults: &str) -> Scenario {
    Scenario::parse(&format!(
        "name = \"small\"\nseed = 9\n[package]\nsize_mib = 256\nchanged = 0.05\nregions = 20\nunit_kib = 1024\n\
         [timing]\nheartbeat_ms = 500\nmaster_timeout_ms = 3000\nsettle_ms = 1500\n\
         [[branches]]\ncount = 3\nagents = 12\nwan_mbps = 50\nstart_spread_s = 2\n{extra_branch}\n{faults}"
    ))
    .unwrap()
}

#[test]
fn shipped_scenarios_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 5, "{n} scenarios");
}

#[test]
fn same_scenario_and_seed_same_result() {
    let s = small(
        "",
        "[[faults]]\nkind = \"master_crash\"\nat_fraction = 0.5\n",
    );
    let a = peerdelta_simnet::run(&s, None).unwrap().0.result;
    let b = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    let c = peerdelta_simnet::run(&s, Some(10)).unwrap().0.result;
    assert_ne!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&c).unwrap(),
        "another seed, another run"
    );
}

#[test]
fn one_wan_download_per_branch_and_master_crashes_reelect() {
    let s = small("", "");
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.finished, 36);
    assert_eq!(r.elections, 3);
    let ideal = r.origin_bytes + 50_000;
    for b in &r.per_branch {
        assert_eq!(b.wan_bytes, ideal, "{b:?}");
    }
    // The master crashes at 50% of its download in every branch: one
    // re-election each, the survivors finish, the WAN carries little more.
    let s = small(
        "",
        "[[faults]]\nkind = \"master_crash\"\nat_fraction = 0.5\n",
    );
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!((r.finished, r.unfinished), (33, 0));
    for b in &r.per_branch {
        assert!((2..=3).contains(&b.elections), "{b:?}");
    }
    // What was on its way to the dead master is lost (at most its DP
    // requests in flight: 4 of 4 MiB); nothing a survivor holds is fetched
    // again (the refetch invariant above).
    for b in &r.per_branch {
        assert!(
            b.wan_bytes <= ideal + 4 * (4 << 20),
            "{} vs {ideal}",
            b.wan_bytes
        );
    }
}

#[test]
fn a_peer_holding_the_target_means_no_content_over_the_wan() {
    let s = small("target = 1.0", "");
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    // Only the manifest and needs list the holder fetches for its peers.
    assert!(r.wan_bytes <= 3 * 50_000, "{}", r.wan_bytes);
    assert_eq!(r.reelections, 0);
}

#[test]
fn agents_without_base_alt_copy_and_behind_masters_use_rdc() {
    // Half the agents hold nothing: they take everything over the LAN (the
    // base holders' copies of the seed runs, or their bases), and the WAN
    // carries the origin runs once per branch.
    let s = small("base = 0.5", "");
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let nothing = r.agents - r.sources.local / (r.size_bytes - r.origin_bytes);
    assert!(nothing >= 10, "{nothing} agents without a base");
    assert!(r.sources.lan_peer + r.sources.alt_copy >= nothing * (r.size_bytes - r.origin_bytes));
    assert_eq!(r.wan_bytes, 3 * (r.origin_bytes + 50_000));
    // Everyone 6+ behind: the master rebuilds by client-side RDC, fetching
    // what its old version lacks; peers take it all over the LAN.
    let s = small("base = 0.0\nbehind = 1.0", "");
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.wan_bytes > 3 * r.origin_bytes, "{}", r.wan_bytes);
    assert!(r.wan_bytes < 3 * r.size_bytes / 2, "{}", r.wan_bytes);
}

#[test]
fn without_any_master_every_agent_still_finishes_from_the_dp() {
    // Nobody may be master (weight 0): each agent waits out the stall, then
    // takes what it lacks from the DP itself, counted.
    let s = small("weight0 = 1.0", "");
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!((r.finished, r.unfinished), (36, 0));
    assert!(r.stall_fallbacks >= 36, "{}", r.stall_fallbacks);
}

#[test]
fn a_run_that_breaks_an_invariant_says_so() {
    // The DP never answers within the time limit: nobody finishes.
    let s = Scenario::parse(
        "name = \"down\"\nseed = 9\nlimit_s = 300\n[package]\nsize_mib = 64\nregions = 8\n\
         [[branches]]\ncount = 2\nagents = 5\n\
         [[faults]]\nkind = \"dp_outage\"\nat_s = 0\nend_s = 3000\n",
    )
    .unwrap();
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("lacks part of the content")),
        "{:?}",
        r.violations
    );
}

#[test]
fn the_command_writes_report_and_plots() {
    let dir = std::env::temp_dir().join(format!("simnet-cli-{}", std::process::id()));
    let scen = dir.join("s.toml");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &scen,
        "name = \"cli\"\n[package]\nsize_mib = 64\n[[branches]]\ncount = 2\nagents = 4\n[[faults]]\nkind = \"dp_outage\"\nat_s = 1\nend_s = 5\n",
    )
    .unwrap();
    let out = dir.join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_peerdelta-simnet"))
        .args(["run", "--seed", "3", "--out"])
        .arg(&out)
        .arg(&scen)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("events/s"), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["result"]["seed"], 3);
    for svg in ["wan.svg", "completion.svg", "elections.svg", "sources.svg"] {
        let s = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(s.starts_with("<svg") && s.contains("<text"), "{svg}");
    }
    // A bad scenario: a clear error, exit code 2.
    std::fs::write(&scen, "name = \"x\"\n[package]\n[[branches]]\nagents = 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_peerdelta-simnet"))
        .arg("run")
        .arg(&scen)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("package"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn agents_that_shut_down_do_not_break_the_rollout() {
    // Mean uptime 30 s: many agents leave mid-transfer (masters included);
    // the rest re-elect and finish, and every invariant holds.
    let s = small("uptime_s = 30", "");
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.finished + r.unfinished < 36, "some agents left");
    assert_eq!(r.unfinished, 0);
}

#[test]
fn a_link_cut_delays_only_its_branch_and_outages_overlap() {
    let s = small(
        "",
        "[[faults]]\nkind = \"link_cut\"\nbranch = 0\nat_s = 1\nend_s = 300\n\
         [[faults]]\nkind = \"dp_outage\"\nat_s = 250\nend_s = 400\n",
    );
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let done: Vec<f64> = r.per_branch.iter().map(|b| b.done_s.unwrap()).collect();
    // Branch 0 waits for its link (300 s), then for the DP (400 s).
    assert!(done[0] > 400.0, "{done:?}");
    assert!(done[1] < 100.0 && done[2] < 100.0, "{done:?}");
    let ideal = r.origin_bytes + 50_000;
    assert!(r.per_branch.iter().all(|b| b.wan_bytes == ideal), "{r:?}");
}

#[test]
fn one_upload_slot_and_churn_still_finish() {
    let s = Scenario::parse(
        "name = \"slots\"\nseed = 4\n[package]\nsize_mib = 64\nregions = 8\nunit_kib = 256\n\
         [timing]\nupload_slots = 1\n[[branches]]\ncount = 2\nagents = 10\nbase = 0.5\nuptime_s = 40\n",
    )
    .unwrap();
    let r = peerdelta_simnet::run(&s, None).unwrap().0.result;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.unfinished, 0);
}

#[test]
fn scenario_values_out_of_range_are_refused() {
    for (extra, what) in [
        (
            "[[faults]]\nkind = \"master_crash\"\nat_s = 1\nbranch = 3\n",
            "branch",
        ),
        (
            "[[faults]]\nkind = \"link_cut\"\nat_s = 5\nend_s = 1\n",
            "end_s",
        ),
        (
            "[[faults]]\nkind = \"dp_outage\"\nat_s = 5\nend_s = inf\n",
            "end_s",
        ),
    ] {
        let text = format!(
            "name = \"x\"\n[package]\nsize_mib = 1\n[[branches]]\ncount = 3\nagents = 2\n{extra}"
        );
        let e = Scenario::parse(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted: {extra}"));
        assert!(e.to_string().contains(what), "{e}");
    }
    let huge = "name = \"x\"\n[package]\nsize_mib = 1\n[[branches]]\ncount = 4611686018427387905\nagents = 4\n";
    assert!(Scenario::parse(huge).is_err());
}

#[test]
fn each_rogue_misbehaviour_leaves_every_honest_agent_finishing() {
    // One rogue per branch from the start. Every honest agent finishes,
    // nothing is fetched from the DP twice while an honest peer holds it,
    // and no honest peer is banned.
    let plain = peerdelta_simnet::run(&small("", ""), None)
        .unwrap()
        .0
        .result;
    let ideal = plain.origin_bytes + 50_000;
    for kind in [
        "silent_master",
        "not_found",
        "busy",
        "slow_reader",
        "flapping",
    ] {
        let faults = format!("[[faults]]\nkind = \"rogue\"\nbehaviour = \"{kind}\"\nat_s = 0\n");
        let r = peerdelta_simnet::run(&small("", &faults), None)
            .unwrap()
            .0
            .result;
        assert!(r.violations.is_empty(), "{kind}: {:?}", r.violations);
        assert_eq!(r.unfinished, 0, "{kind}");
        assert_eq!(r.honest_bans, 0, "{kind}");
        if matches!(kind, "silent_master" | "not_found") {
            assert!(r.rogue_bans > 0, "{kind}: the rogue was never banned");
        }
        // A flapping rogue can win an election and take the DP's runs
        // with it: at most one fetch more.
        for b in &r.per_branch {
            assert!(
                b.wan_bytes <= 2 * ideal,
                "{kind}: {} vs {ideal}",
                b.wan_bytes
            );
        }
    }
}
