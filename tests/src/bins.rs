//! Locating the workspace binaries the tests run.
//!
//! They live in the same target directory as the running test executable
//! (`target/<profile>/deps/<test>` → `target/<profile>/<binary>`). Cargo does
//! not rebuild another package's binaries for a test of this crate, so the
//! first time a test process asks for a binary, the harness runs
//! `$CARGO test --no-run --workspace` once: the build a workspace test run
//! has just done, so a no-op then, and otherwise what brings every binary
//! up to date.
//! Under nextest (a process per test) that build runs once per run.
//! `WEFT_E2E_SKIP_BUILD=1` skips that step (binaries must then exist).

use std::{
    collections::HashSet,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

/// `(package, binary)` for every binary these tests start; they are built
/// together the first time any binary is asked for.
pub const BINARIES: &[(&str, &str)] = &[
    ("weft-proxy", "weft-proxy"),
    ("weft-identity", "weft-identity"),
    ("weft-destination", "weft-destination"),
    ("weft", "weft"),
];

/// How long a (re)build may take; generous for a cold build on CI.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The profile directory (`target/debug`) the test executable was built in.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("test executable has a parent directory");
    let dir =
        if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().expect("deps parent") } else { dir };
    dir.to_path_buf()
}

/// The path of workspace binary `name`, built fresh (once per process).
/// Binaries not in [`BINARIES`] are assumed to share their package's name.
pub fn bin(name: &str) -> PathBuf {
    let package = BINARIES.iter().find(|(_, b)| *b == name).map_or(name, |(p, _)| p);
    bin_of(package, name)
}

/// The path of binary `name` of package `package`, built fresh (once per
/// process).
pub fn bin_of(package: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = built.get_or_insert_with(HashSet::new);
    let stamp = run_stamp();
    let built_this_run = stamp.as_ref().is_some_and(|s| s.is_file());
    if !built.contains(name) && !built_this_run && std::env::var_os("WEFT_E2E_SKIP_BUILD").is_none() {
        let mut wanted: Vec<(&str, &str)> = if built.is_empty() { BINARIES.to_vec() } else { Vec::new() };
        if !wanted.iter().any(|(_, b)| *b == name) {
            wanted.push((package, name));
        }
        cargo_build(&wanted);
        built.extend(wanted.iter().map(|(_, b)| b.to_string()));
        if let Some(stamp) = stamp {
            mark_built(&stamp);
        }
    }
    let path = profile_dir().join(name);
    assert!(path.is_file(), "{} does not exist (build it with cargo build -p {package})", path.display());
    path
}

/// nextest runs every test in a process of its own: the workspace build
/// below is needed once per run, not once per test. The run's stamp says
/// it was done.
fn run_stamp() -> Option<PathBuf> {
    let run = std::env::var("NEXTEST_RUN_ID").ok().filter(|r| !r.contains(['/', '.']))?;
    Some(profile_dir().join(".weft-e2e-built").join(run))
}

/// Records the run's build, forgetting earlier runs' stamps.
fn mark_built(stamp: &std::path::Path) {
    let Some(dir) = stamp.parent() else { return };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path() != stamp {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(stamp, b""));
}

fn cargo_build(bins: &[(&str, &str)]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = profile_dir();
    let mut cmd = Command::new(&cargo);
    // Exactly the build `cargo nextest run --workspace` (and `cargo test
    // --workspace`) does: the same package selection resolves the same
    // features, so after such a run this is a no-op, where `cargo build -p
    // X` would rebuild every dependency with a different feature set. Run
    // from a narrower selection (`-p weft-e2e`), it brings the binaries up
    // to date with the source.
    cmd.args(["test", "--no-run", "--workspace", "--quiet"]);
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    // Cargo gave this test process the variables of its own package
    // (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Build scripts that track one of
    // them (ring's does) would see a changed environment and rebuild the
    // whole TLS stack here, then again at the next `cargo nextest run`:
    // without them this build is the no-op it is meant to be.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_package_variable) {
            cmd.env_remove(&key);
        }
    }
    // Build into the target directory this test runs from, whatever the
    // environment says.
    if let Some(target) = profile.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let log = std::env::temp_dir().join(format!("weft-e2e-{}-cargo-build.log", std::process::id()));
    let file = std::fs::File::create(&log).expect("create build log");
    cmd.stdin(Stdio::null()).stdout(file.try_clone().expect("clone log")).stderr(file);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running {cargo:?} build: {e}"));
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait cargo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo build of {bins:?} took longer than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "cargo build of {bins:?} failed ({status}):\n{output}");
}

/// Variables Cargo sets for the package whose test is running (as opposed
/// to configuration a user set, such as CARGO_HOME or CARGO_PROFILE_*).
fn is_package_variable(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&key) || key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_BIN_EXE_")
}

#[cfg(test)]
mod tests {
    use super::is_package_variable;

    #[test]
    fn only_the_running_packages_variables_are_dropped() {
        for key in
            ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION", "CARGO_BIN_EXE_weft", "OUT_DIR"]
        {
            assert!(is_package_variable(key), "{key}");
        }
        for key in ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_PROFILE_DEV_DEBUG", "CARGO_INCREMENTAL", "PATH"]
        {
            assert!(!is_package_variable(key), "{key}");
        }
    }
}
