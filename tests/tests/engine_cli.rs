//! The `engine` binary as an operator uses it: keygen, serve + ping + SIGTERM, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::engine_bin as bin;

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("engine-cli-{}-{name}", std::process::id()))
}

#[test]
fn keygen_writes_private_file_and_prints_peer_id() {
    let path = temp_path("id.key");
    let _ = std::fs::remove_file(&path);
    let out = Command::new(bin())
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap();
    let id = id.trim();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second keygen refuses to overwrite the key.
    let again = Command::new(bin())
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("error"));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = Command::new(bin())
        .args(["serve", "--batch-timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch-timeout"));
    let out = Command::new(bin())
        .args(["ping", "--target", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_ping_and_sigterm_drain() {
    let id = temp_path("serve.key");
    let _ = std::fs::remove_file(&id);
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--no-pin",
        ])
        .arg("--identity")
        .arg(&id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "listening on 127.0.0.1:PORT with 2 shard(s); peer id HEX"
    let addr = line
        .split_whitespace()
        .nth(2)
        .expect("address in banner")
        .to_string();
    assert!(line.contains("2 shard(s)"), "{line}");

    // The identity file was created and names the same peer id.
    let mode = std::fs::metadata(&id).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second engine on the same port fails clearly instead of joining the group.
    let clash = Command::new(bin())
        .args(["serve", "--listen", &addr, "--shards", "1", "--no-pin"])
        .output()
        .unwrap();
    assert_eq!(clash.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&clash.stderr).contains("another process is bound"));

    let ping = Command::new(bin())
        // A window of 20: the node's default 50 ms batch timeout would make 200 one-by-one
        // round trips take 10 s.
        .args(["ping", "--target", &addr, "--count", "200", "--size", "300"])
        .args(["--window", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&ping.stderr)
    );
    assert!(text.contains("200 intact"), "{text}");
    assert!(text.contains("p99"), "{text}");

    // A ping whose messages are over the node's limit fails and says why.
    let big = Command::new(bin())
        .args(["ping", "--target", &addr, "--count", "3", "--size", "70000"])
        .output()
        .unwrap();
    assert!(!big.status.success());
    assert!(String::from_utf8_lossy(&big.stderr).contains("MessageTooLarge"));

    // SIGTERM: graceful drain and exit 0 within the bound.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "engine did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("draining"), "{err}");
    assert!(err.contains("203 messages in"), "{err}");
    std::fs::remove_file(&id).unwrap();
}

#[test]
fn low_locked_memory_limit_is_a_clear_error() {
    // `ulimit -l` lowers both limits, so the engine cannot raise its soft limit.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -l 64 && exec {} serve --listen 127.0.0.1:0 --shards 2 --no-pin",
            bin().display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked-memory limit"), "{err}");
    assert!(err.contains("ulimit -l"), "{err}");
}

/// `engine serve` with `ENGINE_*` variables of the caller's environment removed, so each
/// test sees only the ones it sets.
fn serve_cmd() -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("serve");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ENGINE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn print_config(cmd: &mut Command) -> toml::Table {
    let out = cmd.arg("--print-config").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

#[test]
fn printed_config_loads_back_to_the_same_config() {
    let first = serve_cmd()
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--no-pin"])
        .args(["--batch-timeout", "1500us", "--max-connections", "7"])
        .args(["--peer", "127.0.0.1:5000", "--peer", "127.0.0.1:5001"])
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(first.status.success(), "{first:?}");
    let text = String::from_utf8(first.stdout).unwrap();
    let path = temp_path("roundtrip.toml");
    std::fs::write(&path, &text).unwrap();
    let second = serve_cmd()
        .arg("--config")
        .arg(&path)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(second.status.success(), "{second:?}");
    assert_eq!(String::from_utf8(second.stdout).unwrap(), text);
    let t: toml::Table = text.parse().unwrap();
    assert_eq!(t["shards"].as_integer(), Some(2));
    assert_eq!(t["pin"].as_bool(), Some(false));
    assert_eq!(t["batch_timeout"].as_str(), Some("1ms 500us"));
    assert_eq!(t["peers"].as_array().map(Vec::len), Some(2));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let path = temp_path("precedence.toml");
    std::fs::write(
        &path,
        "batch_size = 10\nwindow = 20000\npool_ttl = \"1m\"\nidle_timeout = \"9s\"\n",
    )
    .unwrap();
    let t = print_config(
        serve_cmd()
            .arg("--config")
            .arg(&path)
            .env("ENGINE_BATCH_SIZE", "20")
            .env("ENGINE_WINDOW", "30000")
            .args(["--batch-size", "30"]),
    );
    assert_eq!(
        t["batch_size"].as_integer(),
        Some(30),
        "flag over env and file"
    );
    assert_eq!(t["window"].as_integer(), Some(30_000), "env over file");
    assert_eq!(t["pool_ttl"].as_str(), Some("1m"), "file over default");
    // Unset keys keep the library defaults; keepalive follows the idle timeout.
    assert_eq!(t["batch_timeout"].as_str(), Some("50ms"));
    assert_eq!(t["keepalive"].as_str(), Some("3s"));
    // The config file itself can come from the environment.
    let t = print_config(serve_cmd().env("ENGINE_CONFIG", &path));
    assert_eq!(t["batch_size"].as_integer(), Some(10));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unknown_key_in_file_is_a_one_line_error_naming_file_and_key() {
    let path = temp_path("unknown.toml");
    std::fs::write(&path, "batch_size = 8\nbatch_sise = 8\n").unwrap();
    let out = serve_cmd().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{}:2", path.display())), "{err}");
    assert!(err.contains("batch_sise"), "{err}");
    // A value of the wrong type names its key too.
    std::fs::write(&path, "window = \"big\"\n").unwrap();
    let out = serve_cmd().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("key `window`"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn invalid_values_are_rejected_with_the_rule_and_where_they_came_from() {
    let path = temp_path("invalid.toml");
    std::fs::write(&path, "keepalive = \"0s\"\n").unwrap();
    let out = serve_cmd().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("pool.keepalive must be above zero"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    std::fs::remove_file(&path).unwrap();

    let out = serve_cmd().env("ENGINE_KEEPALIVE", "40s").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("must be below transport.idle_timeout"),
        "{err}"
    );
    assert!(err.contains("ENGINE_KEEPALIVE"), "{err}");

    for args in [
        ["--batch-size", "0"],
        ["--window", "1000"],
        ["--pool-ttl", "0"],
    ] {
        let out = serve_cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("invalid configuration"), "{err}");
        assert!(err.contains(args[0]), "{err}");
    }
}

/// A duration too long for a deadline (`Instant + it` would overflow) is refused with the
/// field, its bound and the flag that set it, not accepted and then panicking later.
#[test]
fn durations_beyond_their_bounds_are_refused() {
    let huge = "18446744073709551615s";
    for (flag, field, bound) in [
        ("--drain-timeout", "drain_timeout", "1d"),
        ("--handshake-timeout", "pool.handshake_timeout", "1d"),
        ("--pool-ttl", "pool.ttl", "365d"),
    ] {
        let out = serve_cmd().args([flag, huge]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains(&format!("{field} ({huge}) must be at most {bound}")),
            "{err}"
        );
        assert!(err.contains(&format!("(set by {flag})")), "{err}");
    }
    // At the bound the configuration is accepted.
    let t = print_config(serve_cmd().args(["--drain-timeout", "1d"]));
    assert_eq!(t["drain_timeout"].as_str(), Some("1day"));
    let out = Command::new(bin())
        .args(["status", "--metrics", "127.0.0.1:9", "--timeout", huge])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be at most 1d"),
        "{out:?}"
    );
}
