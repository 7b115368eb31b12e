//! Starting and stopping a node's shards: preflight checks, the reuseport group, one pinned
//! glommio executor per shard, and the cross-shard mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use crate::batch::BatchPolicy;
use crate::hist::SharedHistograms;
use crate::identity::Identity;
use crate::session::TransportConfig;
use crate::shard::{
    self, App, Command, ConnectionSlots, MemoryBudget, PeerDirectory, PoolConfig, ShardConfig,
    ShardError, ShardHandle, ShardMsg, ShardStats,
};
use crate::steering::{self, SteeringError};
use crate::tls::{TlsError, TlsFiles};

/// Memory glommio registers with io_uring per executor; it is locked memory.
pub const IO_MEMORY_PER_SHARD: usize = 512 * 1024;
/// Locked memory a shard needs in total (io memory plus rings), checked before start.
pub const LOCKED_MEMORY_PER_SHARD: u64 = 1024 * 1024;
/// Capacity of each cross-shard channel, in records.
const MESH_CAPACITY: usize = 4096;
/// Capacity of each shard's command channel.
const COMMAND_CAPACITY: usize = 1024;
/// How long past its drain deadline a stopping shard's thread may take to end (closing its
/// connections, sending the last datagrams) before `shutdown` gives up waiting for it.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long `start` waits for every shard to report that it serves.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The kernel has no io_uring, or it is disabled.
    #[error(
        "io_uring is not available ({0}); glommio needs Linux 5.8+ with io_uring enabled (check sysctl kernel.io_uring_disabled and seccomp profiles)"
    )]
    IoUringUnavailable(String),
    /// RLIMIT_MEMLOCK is below what the executors need.
    #[error(
        "locked-memory limit is {have} bytes but {shards} shard(s) need {need}; raise it with `ulimit -l {need_kib}` (or LimitMEMLOCK= in a systemd unit), or run fewer shards"
    )]
    MemlockTooLow {
        /// Current soft limit in bytes.
        have: u64,
        /// Bytes needed.
        need: u64,
        /// `need` in KiB, for the ulimit hint.
        need_kib: u64,
        /// Shard count asked for.
        shards: usize,
    },
    /// Binding the UDP port failed.
    #[error(transparent)]
    Steering(#[from] SteeringError),
    /// The TLS certificate could not be prepared.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An executor failed to start.
    #[error("shard {index} failed to start: {why}")]
    Shard {
        /// Which shard.
        index: usize,
        /// What it said.
        why: String,
    },
}

/// Why a node did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// A shard ended with an error.
    #[error("shard {index}: {source}")]
    Shard {
        /// Which shard.
        index: usize,
        /// What went wrong.
        #[source]
        source: ShardError,
    },
    /// A shard's thread panicked or its executor failed.
    #[error("shard {index}: {why}")]
    Executor {
        /// Which shard.
        index: usize,
        /// What the executor said.
        why: String,
    },
    /// A shard's thread had not ended this long after the drain deadline; it is left
    /// running (the process exits without it).
    #[error("shard {index} did not stop within {grace:?} of its drain deadline")]
    Timeout {
        /// Which shard.
        index: usize,
        /// How long past the deadline it was given.
        grace: Duration,
    },
}

/// Configuration of a node's data plane.
pub struct RuntimeConfig {
    /// UDP address to bind (port 0 picks one).
    pub listen: SocketAddr,
    /// Number of shards (executors, sockets).
    pub shards: usize,
    /// Pin each shard to its own core.
    pub pin: bool,
    /// How long a shard keeps polling its socket after its last datagram before it waits
    /// through the executor ([`crate::shard::run`] says why). Zero waits at once.
    pub busy_poll: Duration,
    /// The node's identity.
    pub identity: Arc<Identity>,
    /// Certificate and key files; `None` generates a self-signed pair.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// QUIC tuning.
    pub transport: TransportConfig,
    /// Batch flush policy.
    pub batch: BatchPolicy,
    /// Largest payload accepted.
    pub max_message_size: usize,
    /// Bytes a destination may have queued before its senders are paused.
    pub queue_capacity: usize,
    /// Application for messages addressed to the node.
    pub app: App,
    /// Whether to accept incoming connections.
    pub accept: bool,
    /// The cluster-wide peer index.
    pub directory: Arc<dyn PeerDirectory>,
    /// Connection pool policy.
    pub pool: PoolConfig,
    /// Reconnection schedule for dialed peers.
    pub reconnect: crate::lifecycle::BackoffPolicy,
}

/// A running set of shards.
#[derive(Debug)]
pub struct Runtime {
    local_addr: SocketAddr,
    handles: Vec<ShardHandle>,
    threads: Vec<glommio::ExecutorJoinHandle<Result<(), ShardError>>>,
    /// The index of each shard whose thread has ended (or is about to: sent as its
    /// closure is dropped), so waits on them can have a deadline.
    exited: flume::Receiver<usize>,
    _tls: TlsFiles,
}

/// Says that shard `.1`'s thread is ending when dropped: with its future, once it returns,
/// or with the closure, when its executor could not even start.
struct ExitSignal(flume::Sender<usize>, usize);

impl Drop for ExitSignal {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// Waits until every shard in `threads` has said it is ending or `deadline` passes, then
/// joins those that did; the others are left running. Returns the joined results, by
/// index, and the indexes left running.
#[allow(clippy::type_complexity)]
fn join_until(
    threads: Vec<glommio::ExecutorJoinHandle<Result<(), ShardError>>>,
    exited: &flume::Receiver<usize>,
    deadline: Instant,
) -> (
    Vec<(usize, glommio::Result<Result<(), ShardError>, ()>)>,
    Vec<usize>,
) {
    let mut done = vec![false; threads.len()];
    while done.iter().any(|d| !d) {
        match exited.recv_deadline(deadline) {
            Ok(i) => {
                if let Some(d) = done.get_mut(i) {
                    *d = true;
                }
            }
            Err(_) => break,
        }
    }
    let mut joined = Vec::new();
    let mut running = Vec::new();
    for (index, (t, ended)) in threads.into_iter().zip(done).enumerate() {
        if ended {
            joined.push((index, t.join()));
        } else {
            running.push(index);
        }
    }
    (joined, running)
}

/// Checks that io_uring can be set up at all, for a clear error instead of a panic.
pub fn check_io_uring() -> Result<(), StartError> {
    #[repr(C)]
    struct Params([u32; 30]);
    let mut p = Params([0; 30]);
    // SAFETY: io_uring_setup with a zeroed params struct of the kernel's size (120 bytes).
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, &mut p as *mut Params) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(StartError::IoUringUnavailable(err.to_string()));
    }
    // SAFETY: fd is a file descriptor we just received.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Checks (and where allowed raises) RLIMIT_MEMLOCK for `shards` executors.
pub fn check_memlock(shards: usize) -> Result<(), StartError> {
    let need = LOCKED_MEMORY_PER_SHARD.saturating_mul(shards as u64);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max == libc::RLIM_INFINITY || lim.rlim_max >= need {
        let raised = libc::rlimit {
            rlim_cur: if lim.rlim_max == libc::RLIM_INFINITY {
                need
            } else {
                lim.rlim_max
            },
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer to an rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            return Ok(());
        }
    }
    Err(StartError::MemlockTooLow {
        have: lim.rlim_cur,
        need,
        need_kib: need.div_ceil(1024),
        shards,
    })
}

/// Starts the shards and returns once every one of them is serving.
pub fn start(cfg: RuntimeConfig) -> Result<Runtime, StartError> {
    cfg.validate()?;
    check_io_uring()?;
    check_memlock(cfg.shards)?;
    let tls = match &cfg.tls {
        Some((c, k)) => TlsFiles::from_files(c, k)?,
        None => TlsFiles::self_signed()?,
    };
    let (sockets, local_addr) = steering::bind_group(cfg.listen, cfg.shards)?;
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mesh =
        (cfg.shards > 1).then(|| MeshBuilder::<ShardMsg, _>::full(cfg.shards, MESH_CAPACITY));
    let (ready_tx, ready_rx) = flume::unbounded::<(usize, Result<(), String>)>();
    let (exited_tx, exited) = flume::unbounded::<usize>();
    let slots = Arc::new(ConnectionSlots::default());
    let memory = Arc::new(MemoryBudget::default());
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let stats = Arc::new(ShardStats::default());
        let histograms = SharedHistograms::default();
        let (cmd_tx, cmd_rx) = flume::bounded::<Command>(COMMAND_CAPACITY);
        let (stop_tx, stop_rx) = flume::bounded::<Instant>(1);
        handles.push(ShardHandle {
            commands: cmd_tx,
            stop: stop_tx,
            stats: stats.clone(),
            histograms: histograms.clone(),
        });
        let shard_cfg = ShardConfig {
            index,
            shards: cfg.shards,
            identity: cfg.identity.clone(),
            cert_pem: tls.cert_str(),
            key_pem: tls.key_str(),
            transport: cfg.transport.clone(),
            batch: cfg.batch,
            max_message_size: cfg.max_message_size,
            queue_capacity: cfg.queue_capacity,
            app: cfg.app.clone(),
            accept: cfg.accept,
            directory: cfg.directory.clone(),
            stats,
            histograms,
            pool: cfg.pool.clone(),
            slots: slots.clone(),
            memory: memory.clone(),
            reconnect: cfg.reconnect,
        };
        let placement = match cores.get(index % cores.len().max(1)) {
            Some(cpu) if cfg.pin => Placement::Fixed(*cpu),
            _ => Placement::Unbound,
        };
        let mesh = mesh.clone();
        let ready = ready_tx.clone();
        let busy_poll = cfg.busy_poll;
        let exit = ExitSignal(exited_tx.clone(), index);
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            .io_memory(IO_MEMORY_PER_SHARD)
            .spawn(move || async move {
                let _exit = exit;
                // Ready once the shard's endpoint (TLS, QUIC) is built and the mesh joined.
                let report = move |r: Result<(), String>| {
                    let _ = ready.send((index, r));
                };
                shard::run(shard_cfg, busy_poll, socket, cmd_rx, stop_rx, mesh, report).await
            })
            .map_err(|e| StartError::Shard {
                index,
                why: e.to_string(),
            })?;
        threads.push(spawned);
    }
    drop(ready_tx);
    drop(exited_tx);
    let mut up = vec![false; cfg.shards];
    let started_by = Instant::now() + START_TIMEOUT;
    while up.iter().any(|u| !u) {
        match ready_rx.recv_deadline(started_by) {
            Ok((index, Ok(()))) => {
                if let Some(u) = up.get_mut(index) {
                    *u = true;
                }
            }
            Ok((index, Err(why))) => return Err(StartError::Shard { index, why }),
            Err(_) => {
                // A thread ended before reporting (its executor failed): find out why,
                // without waiting on the shards still alive (they may be waiting for it
                // in the mesh, forever).
                let (joined, _) = join_until(threads, &exited, Instant::now());
                for (index, r) in joined {
                    if let Err(e) = r {
                        return Err(StartError::Shard {
                            index,
                            why: e.to_string(),
                        });
                    }
                }
                let index = up.iter().position(|u| !u).unwrap_or(0);
                return Err(StartError::Shard {
                    index,
                    why: format!("did not start within {START_TIMEOUT:?}"),
                });
            }
        }
    }
    Ok(Runtime {
        local_addr,
        handles,
        threads,
        exited,
        _tls: tls,
    })
}

impl Runtime {
    /// The bound UDP address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Per-shard handles (commands, counters), index = shard.
    pub fn shards(&self) -> &[ShardHandle] {
        &self.handles
    }

    /// Drains every shard (flush queues, finish sessions) until `timeout`, then closes
    /// what is left; returns once every shard's thread ended, or fails with
    /// [`StopError::Timeout`] if one had not within a grace period after that. Never
    /// blocks on a full command channel: the stop goes ahead of queued commands.
    pub fn shutdown(self, timeout: Duration) -> Result<(), StopError> {
        // A timeout too long for the clock drains until the shards are done.
        let deadline = crate::deadline_after(Instant::now(), timeout);
        for h in &self.handles {
            let _ = h.stop.try_send(deadline);
        }
        let wait_until = deadline.checked_add(STOP_GRACE).unwrap_or(deadline);
        let (joined, running) = join_until(self.threads, &self.exited, wait_until);
        let mut first_err = running.first().map(|&index| StopError::Timeout {
            index,
            grace: STOP_GRACE,
        });
        for (index, r) in joined {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    first_err.get_or_insert(StopError::Shard { index, source });
                }
                Err(e) => {
                    first_err.get_or_insert(StopError::Executor {
                        index,
                        why: e.to_string(),
                    });
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
