//! System calls and CPU time per message: counts a server process's (and the harness's own)
//! system calls over a run's measured phase with `perf stat -e raw_syscalls:sys_enter`, the
//! kernel's own tracepoint, so io_uring submissions, timers and wake-ups count as well as
//! socket calls, and its CPU time (`task-clock`, all threads, user and kernel). CPU time per
//! message gives a server's messages per second per core even where the load generator,
//! not the server, is what saturates first.
//!
//! Why `perf` and not `strace -c`: strace stops the process at every call and slows it by an
//! order of magnitude, which changes how much each call carries; the tracepoint count costs
//! almost nothing. `perf` comes from Debian's `linux-perf` (installed by `scripts/setup.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The tracepoint counted: every system call entry.
pub const EVENT: &str = "raw_syscalls:sys_enter";
/// The CPU time counted: milliseconds on a CPU, all threads.
pub const CPU_EVENT: &str = "task-clock";

/// Errors from counting system calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyscallError {
    /// `perf` could not be started.
    #[error("cannot start `perf` (install linux-perf): {0}")]
    Spawn(std::io::Error),
    /// `perf` ran but failed.
    #[error("`perf stat` failed ({status}): {stderr}")]
    Perf {
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// Its output file could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Its output held no count for the event.
    #[error("no {EVENT} count in perf's output ({0:?}): is the tracepoint readable here?")]
    NoCount(String),
}

/// One process's count over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessCount {
    /// The process.
    pub pid: u32,
    /// System calls it entered in the window, all threads.
    pub syscalls: u64,
    /// CPU seconds it used in the window, all threads, user and kernel.
    #[serde(default)]
    pub cpu_s: f64,
}

/// What `syscalls.json` in a run directory holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyscallReport {
    /// Length of the counted window (the measured phase), seconds.
    pub window_s: f64,
    /// Messages sent in the measured phase (each one round trip in echo mode).
    pub messages: u64,
    /// The server's count.
    pub server: ProcessCount,
    /// The harness's own count.
    pub harness: ProcessCount,
}

impl SyscallReport {
    /// The server's system calls per message.
    pub fn server_per_message(&self) -> f64 {
        self.server.syscalls as f64 / self.messages.max(1) as f64
    }

    /// The harness's system calls per message.
    pub fn harness_per_message(&self) -> f64 {
        self.harness.syscalls as f64 / self.messages.max(1) as f64
    }

    /// The server's CPU microseconds per message.
    pub fn server_cpu_us_per_message(&self) -> f64 {
        1e6 * self.server.cpu_s / self.messages.max(1) as f64
    }

    /// The harness's CPU microseconds per message (all its threads). Its generators poll
    /// instead of sleeping once a thread has more than about 10,000 msg/s to send, so
    /// below saturation this is what it spent, not what it needed.
    pub fn harness_cpu_us_per_message(&self) -> f64 {
        1e6 * self.harness.cpu_s / self.messages.max(1) as f64
    }

    /// Messages per second one core of the server would carry at this cost per message.
    pub fn server_messages_per_core_s(&self) -> f64 {
        self.messages as f64 / self.server.cpu_s.max(1e-9)
    }

    /// How busy the server kept one core over the window, in percent (above 100 when it
    /// used more than one core).
    pub fn server_core_busy_percent(&self) -> f64 {
        100.0 * self.server.cpu_s / self.window_s.max(1e-9)
    }

    /// Writes `syscalls.json` into `dir`.
    pub fn write_json(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let p = dir.join("syscalls.json");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&p, text + "\n")?;
        Ok(p)
    }

    /// Reads `syscalls.json` from `dir`, if the run counted system calls.
    pub fn read_json(dir: &Path) -> Option<SyscallReport> {
        let text = std::fs::read_to_string(dir.join("syscalls.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// A running count of one process's system calls (`perf stat -p PID -- sleep WINDOW`).
#[derive(Debug)]
pub struct Counter {
    pid: u32,
    child: Child,
    out: PathBuf,
}

impl Counter {
    /// Starts counting `pid`'s system calls for `window`, perf's output going to `out`.
    pub fn start(pid: u32, window: Duration, out: &Path) -> Result<Counter, SyscallError> {
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                &format!("{EVENT},{CPU_EVENT}"),
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .args(["--", "sleep"])
            .arg(format!("{:.3}", window.as_secs_f64()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(SyscallError::Spawn)?;
        Ok(Counter {
            pid,
            child,
            out: out.to_path_buf(),
        })
    }

    /// Waits for the window to end and returns the count.
    pub fn finish(self) -> Result<ProcessCount, SyscallError> {
        let output = self.child.wait_with_output().map_err(SyscallError::Spawn)?;
        if !output.status.success() {
            return Err(SyscallError::Perf {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let text =
            std::fs::read_to_string(&self.out).map_err(|e| SyscallError::Read(self.out, e))?;
        Ok(ProcessCount {
            pid: self.pid,
            syscalls: parse_perf_csv(&text)?,
            cpu_s: parse_cpu_ms(&text)? / 1000.0,
        })
    }
}

/// The count in `perf stat -x ,` output: the first field of the line naming [`EVENT`]
/// (`14020,,raw_syscalls:sys_enter,200123456,100.00,,`). `<not counted>` or
/// `<not supported>` is an error, not a zero.
pub fn parse_perf_csv(text: &str) -> Result<u64, SyscallError> {
    perf_value(text, EVENT)
}

/// The [`CPU_EVENT`] milliseconds in `perf stat -x ,` output (`1.32,msec,task-clock,...`).
pub fn parse_cpu_ms(text: &str) -> Result<f64, SyscallError> {
    perf_value(text, CPU_EVENT)
}

/// The value of `event` in `perf stat -x ,` output (value, unit, event name, ...).
fn perf_value<T: std::str::FromStr>(text: &str, event: &str) -> Result<T, SyscallError> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(',');
            let value = f.next()?;
            let _unit = f.next()?;
            (f.next()? == event).then(|| value.trim().parse::<T>().ok())?
        })
        .ok_or_else(|| SyscallError::NoCount(text.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_count_and_refuses_a_missing_one() {
        let text = "# started on Wed Dec  2 03:50:00 2026\n\n14020,,raw_syscalls:sys_enter,200123456,100.00,,\n1.32,msec,task-clock,1322029,100.00,0.593,CPUs utilized\n";
        assert_eq!(parse_perf_csv(text).unwrap(), 14020);
        assert!((parse_cpu_ms(text).unwrap() - 1.32).abs() < 1e-9);
        let text = "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n";
        assert!(matches!(
            parse_perf_csv(text),
            Err(SyscallError::NoCount(_))
        ));
        let text = "5,,cycles,1,100.00,,\n";
        assert!(parse_perf_csv(text).is_err());
        assert!(parse_perf_csv("").is_err());
    }

    #[test]
    fn per_message_divides_by_messages_sent() {
        let r = SyscallReport {
            window_s: 3.0,
            messages: 1000,
            server: ProcessCount {
                pid: 1,
                syscalls: 1500,
                cpu_s: 0.004,
            },
            harness: ProcessCount {
                pid: 2,
                syscalls: 900,
                cpu_s: 0.5,
            },
        };
        assert!((r.server_per_message() - 1.5).abs() < 1e-9);
        assert!((r.server_cpu_us_per_message() - 4.0).abs() < 1e-9);
        assert!((r.server_messages_per_core_s() - 250_000.0).abs() < 1e-6);
        assert!((r.harness_per_message() - 0.9).abs() < 1e-9);
        let dir = tempfile::tempdir().unwrap();
        r.write_json(dir.path()).unwrap();
        assert_eq!(SyscallReport::read_json(dir.path()), Some(r));
    }

    /// A real count of this test process, where perf and the tracepoint are available (it
    /// is skipped with a message elsewhere: perf is an optional tool of the harness).
    #[test]
    fn counts_a_real_process_when_perf_is_here() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("perf.txt");
        let c = match Counter::start(std::process::id(), Duration::from_millis(300), &out) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let until = std::time::Instant::now() + Duration::from_millis(200);
        while std::time::Instant::now() < until {
            let _ = std::fs::metadata("/");
            std::thread::sleep(Duration::from_millis(1));
        }
        match c.finish() {
            Ok(n) => assert!(n.syscalls > 50 && n.cpu_s > 0.0, "{n:?}"),
            Err(e) => eprintln!("skipped: {e}"),
        }
    }
}
