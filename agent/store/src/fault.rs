//! Crash injection for tests: `PEERDELTA_FAULT=<point>[,<point>…]` makes the process abort
//! (no unwinding, no cleanup, like a power cut or SIGKILL) when it reaches the
//! named point. Points are listed where they are used; an unset variable costs
//! one environment lookup per point passed.

/// Aborts the process if `PEERDELTA_FAULT` names `point`.
pub fn point(point: &str) {
    if active(point) {
        eprintln!("peerdelta: fault injected at {point}: aborting");
        std::process::abort();
    }
}

/// Whether `PEERDELTA_FAULT` names `point` (faults that misbehave rather
/// than crash, e.g. `serve-corrupt`: a peer that serves damaged bytes).
pub fn active(point: &str) -> bool {
    std::env::var("PEERDELTA_FAULT").is_ok_and(|v| v.split(',').any(|p| p == point))
}
