//! External programs some tests need (Debian's chromium, tshark, redis-server, …).
//!
//! Locally a missing program makes such a test print one line saying how to install it and
//! pass as skipped. CI exports `P2PPI_REQUIRE_SERVICES=1` (see `.ci/run`, which installs
//! them), and then a missing program fails the test: CI always runs them.

use std::path::PathBuf;

/// The variable that turns a missing external program into a failure.
pub const REQUIRE_VAR: &str = "P2PPI_REQUIRE_SERVICES";

/// Finds `program` on `PATH` (or as an absolute path). When it is missing: fails the test
/// if [`REQUIRE_VAR`] is set, else prints one line naming the Debian package and returns
/// `None` so the caller returns early (skipped).
pub fn require(program: &str, debian_package: &str) -> Option<PathBuf> {
    if let Some(path) = find(program) {
        return Some(path);
    }
    let required = std::env::var_os(REQUIRE_VAR).is_some_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{program} is required ({REQUIRE_VAR} is set) but not installed: apt-get install {debian_package}"
    );
    eprintln!("skipped: {program} not found (apt-get install {debian_package})");
    None
}

fn find(program: &str) -> Option<PathBuf> {
    let candidate = PathBuf::from(program);
    if candidate.is_absolute() {
        return candidate.is_file().then_some(candidate);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}
