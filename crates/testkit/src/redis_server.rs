//! A throwaway Redis: `redis-server` as a child process on a free loopback
//! port, in its own temporary directory. Without persistence by default;
//! [`Redis::start_with`] can turn it on (e.g. an append-only file), and the
//! data then survives `stop` and `restart`, which keep the directory.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, OrphanGuard};
use crate::Error;

const BINARY: &str = "redis-server";
const INSTALL_HINT: &str = "install it with 'apt-get install -y redis-server'";
/// How long to wait for the first PONG.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts with a fresh port when another process took ours first.
const PORT_ATTEMPTS: usize = 4;

/// A throwaway Redis server.
///
/// Dropping it kills the process (and reaps it) and deletes its directory,
/// also when a test panics. If the process dies without unwinding, a guard
/// process does the same within about a second.
pub struct Redis {
    guard: Option<OrphanGuard>,
    binary: PathBuf,
    port: u16,
    log_file: PathBuf,
    pid_file: PathBuf,
    /// Extra `redis-server` arguments, after (so overriding) our defaults.
    extra_args: Vec<String>,
    /// The TLS port of [`Redis::start_tls`].
    tls_port: Option<u16>,
    child: Mutex<Option<Child>>,
    dir: TempDir,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Starts `redis-server` (found on PATH) and waits until it answers PING.
    pub fn start() -> Result<Redis, Error> {
        Self::start_with(&[])
    }

    /// Like [`Redis::start`], with extra `redis-server` arguments placed after
    /// testkit's defaults, so they override them. For a server whose
    /// acknowledged writes survive being killed (`stop` is SIGKILL):
    ///
    /// ```no_run
    /// let redis = walbust_testkit::Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"])?;
    /// # Ok::<(), walbust_testkit::Error>(())
    /// ```
    ///
    /// The arguments are used again by every [`Redis::restart`]. `--port`,
    /// `--bind` and `--dir` belong to testkit and must not be given.
    pub fn start_with(args: &[&str]) -> Result<Redis, Error> {
        let binary = process::find_on_path(BINARY).ok_or_else(|| Error::MissingBinary {
            name: BINARY.to_owned(),
            searched: "on PATH".to_owned(),
            hint: INSTALL_HINT.to_owned(),
        })?;
        let dir = tempfile::Builder::new()
            .prefix("walbust-redis-")
            .tempdir()
            .map_err(|e| Error::io("could not create a temporary directory", e))?;
        let pid_file = dir.path().join("redis.pid");
        let guard = OrphanGuard::spawn(&pid_file, "KILL", dir.path())?;
        let mut redis = Redis {
            guard: Some(guard),
            binary,
            port: 0,
            log_file: dir.path().join("redis.log"),
            pid_file,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            tls_port: None,
            child: Mutex::new(None),
            dir,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            redis.port = process::free_port();
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                // Another process may have taken the port since we chose it.
                Err(Error::StartFailed { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("Address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A server without Redis Functions: `FUNCTION` and `FCALL` are
    /// renamed away, so it answers them as a Redis before 7 does
    /// (`ERR unknown command`).
    pub fn start_without_functions() -> Result<Redis, Error> {
        Redis::start_with(&[
            "--rename-command",
            "FUNCTION",
            "",
            "--rename-command",
            "FCALL",
            "",
        ])
    }

    /// Like [`Redis::start_with`], also listening for TLS on another port with the
    /// certificate `cert` and key `key` (PEM files), clients checked against the CA `ca`
    /// when `args` hold `--tls-auth-clients yes` (the default is `no`). The plain port stays
    /// open for the test's own connections ([`Redis::connection`]).
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path, args: &[&str]) -> Result<Redis, Error> {
        let port = process::free_port().to_string();
        let (cert, key, ca) = (
            cert.display().to_string(),
            key.display().to_string(),
            ca.display().to_string(),
        );
        let mut all = vec![
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        all.extend_from_slice(args);
        let mut redis = Self::start_with(&all)?;
        redis.tls_port = port.parse().ok();
        Ok(redis)
    }

    /// `rediss://localhost:PORT`, the TLS port of [`Redis::start_tls`] (`None` without it).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://localhost:{port}"))
    }

    /// The TCP port (kept across `stop`/`restart`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, no save), keeping the port for `restart`.
    /// Stopping a stopped server is not an error.
    pub fn stop(&self) -> Result<(), Error> {
        let mut child = self.lock_child();
        if let Some(mut running) = child.take() {
            // kill() fails only if it already exited; wait() reaps it either
            // way, so no zombie is left.
            let _ = running.kill();
            running
                .wait()
                .map_err(|e| Error::io("could not reap redis-server", e))?;
        }
        let _ = fs::remove_file(&self.pid_file);
        Ok(())
    }

    /// Starts the server again on the same port, killing it first if it is
    /// running. The dataset starts empty, unless persistence was turned on
    /// with [`Redis::start_with`]: then the server loads what it persisted.
    pub fn restart(&self) -> Result<(), Error> {
        self.stop()?;
        self.spawn()
    }

    /// Whether the process is alive (it may still be starting).
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                // Exited on its own: reap it now.
                if let Some(mut gone) = child.take() {
                    let _ = gone.wait();
                }
                false
            }
            None => false,
        }
    }

    /// A multiplexed async connection (needs a Tokio runtime).
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, Error> {
        let context = || format!("could not connect to Redis at {}", self.url());
        let client = redis::Client::open(self.url()).map_err(|source| Error::Redis {
            context: context(),
            source,
        })?;
        client
            .get_multiplexed_async_connection()
            .await
            .map_err(|source| Error::Redis {
                context: context(),
                source,
            })
    }

    /// Creates (or replaces) the ACL user `name` with `password` and the
    /// ACL `rules` (`["~*", "+@all", "-get"]`), as `ACL SETUSER` takes them;
    /// the user is switched on. Returns [`url_as`](Self::url_as) for it.
    pub async fn acl_user(
        &self,
        name: &str,
        password: &str,
        rules: &[&str],
    ) -> Result<String, Error> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"))
            .arg(rules);
        cmd.query_async::<()>(&mut conn)
            .await
            .map_err(|source| Error::Redis {
                context: format!("could not create ACL user {name}"),
                source,
            })?;
        Ok(self.url_as(name, password))
    }

    /// `redis://NAME:PASSWORD@127.0.0.1:PORT` (both put in as they are:
    /// keep them URL-safe).
    pub fn url_as(&self, name: &str, password: &str) -> String {
        format!("redis://{name}:{password}@127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p PORT`, for a person to paste into a shell.
    pub fn cli_command(&self) -> String {
        format!("redis-cli -p {}", self.port)
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the Option consistent.
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns the server on `self.port` and waits for PONG.
    fn spawn(&self) -> Result<(), Error> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no"])
            .args(&self.extra_args)
            .current_dir(self.dir.path());
        let child = process::spawn_logged(&mut cmd, &self.log_file, &self.pid_file)?;
        *self.lock_child() = Some(child);

        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(reason) => {
                let _ = self.stop();
                Err(Error::StartFailed {
                    server: "Redis",
                    port: self.port,
                    reason,
                    log: self.log_file.clone(),
                    log_tail: process::log_tail(&self.log_file),
                })
            }
        }
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            process::still_running(self.lock_child().as_mut(), BINARY)?;
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {} s", START_TIMEOUT.as_secs_f32()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One PING over a fresh connection; true on `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        let n = stream.read(&mut reply)?;
        Ok(reply.get(..n).is_some_and(|r| r.starts_with(b"+PONG")))
    };
    attempt().unwrap_or(false)
}

impl Drop for Redis {
    fn drop(&mut self) {
        // The guard goes first so it cannot race us deleting the directory.
        drop(self.guard.take());
        let _ = self.stop();
    }
}
