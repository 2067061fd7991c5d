//! A private, throwaway PostgreSQL cluster for tests that must stop, restart or reconfigure their server.
//!
//! [`PgCluster::start_new`] runs `initdb` into a fresh temporary directory (trust authentication, `fsync`
//! off), starts `postgres` on a free port of 127.0.0.1 with its unix socket inside that directory, and hands
//! out a URL. [`stop`](PgCluster::stop), [`start`](PgCluster::start), [`restart`](PgCluster::restart) and
//! [`crash`](PgCluster::crash) control it; the port stays the same across restarts, so URLs and pools built
//! from [`url`](PgCluster::url) stay valid. Dropping the cluster stops it and deletes the directory.
//!
//! Binaries come from `PG_BIN_DIR`, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
//! `initdb` and `postgres` refuse to run as root, so as root they run as the `postgres` user through
//! `runuser` (the directory is handed to that user). Without binaries, or as root without a `postgres` user,
//! [`PgCluster::start_new`] returns [`ClusterError::Unavailable`] and tests skip with that message (unless
//! `PG_CACHED_REQUIRE_CLUSTER=1`, see [`PgCluster::start_or_skip`]).
//!
//! The methods block (they wait for `pg_ctl`); from async code call them through
//! `tokio::task::spawn_blocking` with an `Arc<PgCluster>`.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a cluster could not be provided.
#[derive(Debug)]
pub enum ClusterError {
    /// This machine cannot run a private cluster (no binaries, or root without a `postgres` user).
    Unavailable(String),
    /// Something failed while creating, starting or stopping it.
    Failed(String),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Unavailable(why) => write!(f, "no private PostgreSQL cluster: {why}"),
            ClusterError::Failed(why) => write!(f, "private PostgreSQL cluster failed: {why}"),
        }
    }
}

impl std::error::Error for ClusterError {}

/// How [`PgCluster::stop`] ends the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// `pg_ctl stop -m fast`: roll back open transactions, disconnect clients, shut down cleanly.
    Fast,
    /// `pg_ctl stop -m immediate`: abort without a checkpoint, as a crash would; recovery runs at the next
    /// start, and UNLOGGED tables come back empty.
    Immediate,
}

/// A private PostgreSQL cluster in a temporary directory. See the module docs.
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
    state: Mutex<bool>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl PgCluster {
    /// Creates a cluster with `initdb` and starts it, with extra `postgresql.conf` lines appended.
    pub fn start_with(extra_config: &[&str]) -> Result<PgCluster, ClusterError> {
        let mut cluster = PgCluster::unstarted("cluster", find_bin_dir()?, owner_for_root()?)?;
        cluster.init(extra_config)?;
        cluster.start_on_a_free_port()?;
        Ok(cluster)
    }

    /// A hot standby of `primary`: `pg_basebackup -R` of its data (so it streams from it), started on a port of
    /// its own. [`promote`](Self::promote) turns it into a primary.
    pub fn start_standby_of(primary: &PgCluster) -> Result<PgCluster, ClusterError> {
        let mut standby = PgCluster::unstarted("standby", primary.bin.clone(), primary.run_as.clone())?;
        let (data, port) = (os(&standby.data_dir()), primary.port.to_string());
        let out = standby.run(
            &standby.bin.join("pg_basebackup"),
            &["-D", &data, "-R", "-X", "stream", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "--no-sync"],
        )?;
        if !out.status.success() {
            return Err(ClusterError::Failed(format!(
                "pg_basebackup: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        standby.start_on_a_free_port()?;
        Ok(standby)
    }

    /// A fresh directory for a cluster (its socket directory made, everything owned by `run_as`), no data yet.
    fn unstarted(kind: &str, bin: PathBuf, run_as: Option<String>) -> Result<PgCluster, ClusterError> {
        let root = std::env::temp_dir().join(format!(
            "pg-cached-{kind}-{}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed),
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(root.join("sock"))
            .map_err(|e| ClusterError::Failed(format!("cannot create {}: {e}", root.display())))?;
        let cluster = PgCluster { root, bin, run_as, port: 0, state: Mutex::new(false) };
        if let Some(user) = &cluster.run_as {
            let status = Command::new("chown").args(["-R", user]).arg(&cluster.root).status();
            if !matches!(status, Ok(s) if s.success()) {
                return Err(ClusterError::Failed(format!("chown {} to {user} failed", cluster.root.display())));
            }
        }
        Ok(cluster)
    }

    /// Starts the server on a free port; a port can be taken between the probe and the start, so a few tries.
    fn start_on_a_free_port(&mut self) -> Result<(), ClusterError> {
        let mut last = None;
        for _ in 0..3 {
            self.port = free_port()?;
            self.write_runtime_conf()?;
            match self.start() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::Failed("could not start".into())))
    }

    /// Promotes a standby to primary (`pg_ctl promote`) and waits until it accepts writes.
    pub fn promote(&self) -> Result<(), ClusterError> {
        let out =
            self.run(&self.bin.join("pg_ctl"), &["-D", os(&self.data_dir()).as_str(), "-w", "-t", "60", "promote"])?;
        if !out.status.success() {
            return Err(ClusterError::Failed(format!(
                "pg_ctl promote: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// [`start_with`](Self::start_with) without extra settings.
    pub fn start_new() -> Result<PgCluster, ClusterError> {
        PgCluster::start_with(&[])
    }

    /// A started cluster, or `None` after printing why this machine cannot run one. With
    /// `PG_CACHED_REQUIRE_CLUSTER=1` the reason is a panic instead, so CI cannot skip silently. Failures other
    /// than unavailability always panic.
    pub fn start_or_skip(extra_config: &[&str]) -> Option<PgCluster> {
        match PgCluster::start_with(extra_config) {
            Ok(cluster) => Some(cluster),
            Err(ClusterError::Unavailable(why)) if std::env::var("PG_CACHED_REQUIRE_CLUSTER").as_deref() != Ok("1") => {
                eprintln!("SKIPPED: this test needs a private PostgreSQL cluster: {why}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of another database of this cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Whether the server was last started (and not stopped) through this handle.
    pub fn is_running(&self) -> bool {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the server and waits until it accepts connections. Does nothing if it is running.
    pub fn start(&self) -> Result<(), ClusterError> {
        let mut running = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            return Ok(());
        }
        let data = self.data_dir();
        let log = self.root.join("log");
        let (data_arg, log_arg) = (os(&data), os(&log));
        let out = self.run(&self.bin.join("pg_ctl"), &["-D", &data_arg, "-l", &log_arg, "-w", "-t", "60", "start"])?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            return Err(ClusterError::Failed(format!(
                "pg_ctl start on port {}: {}\n{}\nlog tail:\n{}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        *running = true;
        Ok(())
    }

    /// Stops the server in `fast` mode (clients are disconnected) and waits until it is down.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.stop_with(StopMode::Fast)
    }

    /// Stops the server in `immediate` mode, like a crash.
    pub fn crash(&self) -> Result<(), ClusterError> {
        self.stop_with(StopMode::Immediate)
    }

    /// Stops the server. Does nothing if it is not running.
    pub fn stop_with(&self, mode: StopMode) -> Result<(), ClusterError> {
        let mut running = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !*running {
            return Ok(());
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let data = self.data_dir();
        let out =
            self.run(&self.bin.join("pg_ctl"), &["-D", os(&data).as_str(), "-m", mode, "-w", "-t", "60", "stop"])?;
        if !out.status.success() {
            return Err(ClusterError::Failed(format!(
                "pg_ctl stop -m {mode}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        *running = false;
        Ok(())
    }

    /// Stops (fast) and starts the server.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.stop()?;
        self.start()
    }

    fn init(&self, extra_config: &[&str]) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let out = self.run(
            &self.bin.join("initdb"),
            &["-D", os(&data).as_str(), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
        )?;
        if !out.status.success() {
            return Err(ClusterError::Failed(format!(
                "initdb: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut conf = String::from(
            "\n# ---- pg_cached private test cluster (tests/src/pg_cluster.rs) ----\n\
             listen_addresses = '127.0.0.1'\n\
             fsync = off\n\
             full_page_writes = off\n\
             max_connections = 100\n\
             shared_buffers = 32MB\n",
        );
        for line in extra_config {
            conf.push_str(line);
            conf.push('\n');
        }
        conf.push_str("include_if_exists = 'pg_cached_runtime.conf'\n");
        self.append(&data.join("postgresql.conf"), &conf)
    }

    fn write_runtime_conf(&self) -> Result<(), ClusterError> {
        let sock = self.root.join("sock");
        // Unix socket paths are limited to about 107 bytes; fall back to TCP only.
        let sockets = if os(&sock).len() + 20 < 107 { os(&sock) } else { String::new() };
        let path = self.data_dir().join("pg_cached_runtime.conf");
        std::fs::write(
            &path,
            format!("port = {}\nunix_socket_directories = '{}'\n", self.port, sockets.replace('\'', "''")),
        )
        .map_err(|e| ClusterError::Failed(format!("cannot write {}: {e}", path.display())))?;
        self.give_to_owner(&path)
    }

    fn append(&self, path: &Path, text: &str) -> Result<(), ClusterError> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| ClusterError::Failed(format!("cannot open {}: {e}", path.display())))?;
        file.write_all(text.as_bytes())
            .map_err(|e| ClusterError::Failed(format!("cannot write {}: {e}", path.display())))
    }

    fn give_to_owner(&self, path: &Path) -> Result<(), ClusterError> {
        let Some(user) = &self.run_as else { return Ok(()) };
        match Command::new("chown").arg(user).arg(path).status() {
            Ok(s) if s.success() => Ok(()),
            _ => Err(ClusterError::Failed(format!("chown {} to {user} failed", path.display()))),
        }
    }

    /// Runs a server binary as the cluster's owner, from the cluster directory, capturing its output.
    fn run(&self, program: &Path, args: &[&str]) -> Result<Output, ClusterError> {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // pg_ctl start leaves the postmaster running with our stdout/stderr if they are pipes that it
        // inherits; the server logs to its own file (-l), so give it nothing to hold on to.
        command.args(args).current_dir(&self.root).stdin(Stdio::null());
        command.output().map_err(|e| ClusterError::Failed(format!("cannot run {}: {e}", program.display())))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.is_running() {
            // Immediate: nothing in a throwaway cluster is worth a checkpoint.
            if let Err(e) = self.stop_with(StopMode::Immediate) {
                eprintln!("warning: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn os(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn has_server_bins(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file())
}

/// `PG_BIN_DIR`, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").map(PathBuf::from) {
        if has_server_bins(&dir) {
            return Ok(dir);
        }
        eprintln!("warning: PG_BIN_DIR={} lacks initdb/pg_ctl/postgres; searching elsewhere", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server_bins(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().split('.').next()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server_bins(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        ClusterError::Unavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres): set PG_BIN_DIR or install postgresql".into(),
        )
    })
}

/// As root, the user that runs the server (`postgres`); otherwise `None`.
fn owner_for_root() -> Result<Option<String>, ClusterError> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| ClusterError::Unavailable(format!("cannot run `id -u`: {e}")))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(None);
    }
    let exists = Command::new("id").arg("postgres").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !matches!(exists, Ok(s) if s.success()) {
        return Err(ClusterError::Unavailable(
            "running as root, and there is no `postgres` user to run initdb/postgres as (they refuse root)".into(),
        ));
    }
    let runuser = Command::new("runuser").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if runuser.is_err() {
        return Err(ClusterError::Unavailable("running as root without `runuser` to drop to the postgres user".into()));
    }
    Ok(Some("postgres".into()))
}

fn free_port() -> Result<u16, ClusterError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::Failed(format!("cannot bind a port: {e}")))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| ClusterError::Failed(format!("no local address: {e}")))
}
