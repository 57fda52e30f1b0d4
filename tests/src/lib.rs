//! Helpers for the end-to-end tests in `tests/tests/`: they start the real
//! `peerdelta` binary as separate processes.
//!
//! The binary is the one `cargo test --workspace` builds next to the test
//! executables (`target/<profile>/peerdelta`); the agent crate has an
//! integration test, which makes cargo build it before any test runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `peerdelta` binary built by this `cargo test` run.
pub fn peerdelta_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/peerdelta
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("peerdelta");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// A `peerdelta` command with the given arguments.
pub fn peerdelta<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(peerdelta_bin());
    c.args(args);
    c.env_remove("RUST_LOG");
    c
}

/// Runs the command and returns its output, whatever the exit code.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// Runs the command and asserts it exits with `code`; shows stderr otherwise.
pub fn run_code(cmd: &mut Command, code: i32) -> Output {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?} exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the command, asserts success, returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8(run_code(cmd, 0).stdout).expect("utf-8 stdout")
}

/// Deterministic pseudo-random bytes (xorshift), for test inputs.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
