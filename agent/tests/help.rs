//! The binary starts and documents its exit codes. (This test also makes
//! `cargo test --workspace` build the binary for the end-to-end tests.)

use std::process::Command;

#[test]
fn help_lists_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_peerdelta"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Exit codes: 0 done; 1 the operation failed"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_peerdelta"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
}
