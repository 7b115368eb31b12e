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
