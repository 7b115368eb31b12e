//! The workspace binaries (`engine`, `bench-harness`) that the command-line tests run.
//!
//! `env!("CARGO_BIN_EXE_...")` only names binaries of the test's own package, and these
//! tests live in the `tests` package. So the first test that needs a binary runs
//! `cargo build --bin engine --bin bench-harness` once for the whole test process, with the
//! profile, target and target directory this test executable was built with, and takes the
//! paths from cargo's own report of what it built. That build is a no-op when the binaries
//! are fresh, rebuilds them when their sources changed (never a stale binary), and a failure
//! is a test failure that says what to run by hand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const ENGINE: &str = "engine";
const HARNESS: &str = "bench-harness";

/// Runs `cmd` to its end and returns its stdout; the test fails, showing both outputs, if it
/// did not exit 0.
pub fn stdout_of_success(cmd: &mut Command) -> String {
    let o = cmd.output().expect("the command starts");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{:?} exited with {}\n{stdout}\n{}",
        cmd,
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// The `engine` binary, built from the current sources.
pub fn engine_bin() -> &'static Path {
    bin(ENGINE)
}

/// The `bench-harness` binary, built from the current sources.
pub fn harness_bin() -> &'static Path {
    bin(HARNESS)
}

fn bin(name: &str) -> &'static Path {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(bins) => match bins.get(name) {
            Some(p) => p,
            None => panic!("cargo built no `{name}` binary: {bins:?}"),
        },
        Err(e) => panic!("the workspace binaries are not available: {e}"),
    }
}

/// Where this test executable lives: `<target-dir>/[<triple>/]<profile-dir>/deps/<exe>`.
struct Layout {
    target_dir: PathBuf,
    triple: Option<String>,
    profile_dir: String,
}

fn layout() -> Result<Layout, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe.parent().filter(|d| d.ends_with("deps"));
    let profile = deps.and_then(Path::parent);
    let (Some(profile), Some(above)) = (profile, profile.and_then(Path::parent)) else {
        return Err(format!(
            "{} is not in a cargo target directory (<target>/<profile>/deps/)",
            exe.display()
        ));
    };
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let profile_dir = name(profile).ok_or("no profile directory name")?;
    // The root of a target directory carries cargo's .rustc_info.json (and CACHEDIR.TAG);
    // a `--target` build puts one more level, the target triple, between the root and the
    // profile.
    if above.join(".rustc_info.json").is_file() || above.join("CACHEDIR.TAG").is_file() {
        Ok(Layout {
            target_dir: above.to_path_buf(),
            triple: None,
            profile_dir,
        })
    } else {
        let root = above
            .parent()
            .ok_or("no target directory above the triple")?;
        Ok(Layout {
            target_dir: root.to_path_buf(),
            triple: name(above),
            profile_dir,
        })
    }
}

fn build() -> Result<HashMap<String, PathBuf>, String> {
    let l = layout()?;
    // Cargo sets CARGO for the processes it runs; outside cargo, the one on PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--locked",
            "--message-format=json-render-diagnostics",
        ])
        // The whole workspace with this test target selected resolves features exactly as
        // `cargo test --workspace` (and `-p tests`, whose dev-dependencies cover every
        // member's), so the binaries link the dependencies already built for this test
        // instead of a second BoringSSL build. This test target is fresh: a no-op.
        .args(["--workspace", "--test", "integration"])
        .args(["--bin", ENGINE, "--bin", HARNESS])
        .arg("--target-dir")
        .arg(&l.target_dir);
    // cargo runs this test with the `tests` package's variables set (CARGO_MANIFEST_DIR,
    // CARGO_PKG_*, ...). ring's build script tracks some of them (`rerun-if-env-changed`),
    // so a build that inherited them would rebuild ring and everything above it, and the
    // next `cargo test` would rebuild them back: minutes on every run.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || matches!(
                    k,
                    "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
                )
        }) {
            cmd.env_remove(key);
        }
    }
    match l.profile_dir.as_str() {
        "debug" => cmd.args(["--profile", "dev"]),
        other => cmd.args(["--profile", other]),
    };
    if let Some(t) = &l.triple {
        cmd.args(["--target", t]);
    }
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut bins = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            bins.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for name in [ENGINE, HARNESS] {
        match bins.get(name) {
            Some(p) if p.is_file() => {}
            Some(p) => {
                return Err(format!(
                    "{shown} reported {} but it is missing",
                    p.display()
                ));
            }
            None => return Err(format!("{shown} reported no `{name}` executable")),
        }
    }
    Ok(bins)
}
