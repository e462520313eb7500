//! The control plane of a replication source: checks that the server, the
//! slot and the publication can give walbust every committed change, and
//! creates the slot and publication when asked to.
//!
//! Everything here runs over an ordinary SQL connection (tokio-postgres)
//! before streaming starts, so that a misconfigured database is refused with
//! a sentence a DBA can act on instead of a protocol error halfway through
//! the stream. The order matters: the publication is created before the
//! slot, because pgoutput looks the publication up in the catalog as of each
//! decoded transaction, and a slot older than its publication fails on the
//! first change.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use pgwire_replication::{PgWireError, ReplicationConfig};
use tokio_postgres::{Client, NoTls};
use walbust_rules::{Op, RuleSet, TableName};

use crate::catalog::{Publication, TableInfo, TableKind};
use crate::error::{SourceError, StreamError};
use crate::tls::{SslMode, TlsSettings, TLS_PARAMS};

/// Where and what to stream: the `source` section of the configuration.
/// Its `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct SourceSpec {
    /// libpq-style URL: `postgres://user:password@host:port/database`.
    pub url: String,
    /// Publication whose tables are streamed.
    pub publication: String,
    /// Logical replication slot (plugin pgoutput) that holds walbust's position.
    pub slot: String,
    /// Create the publication and the slot when they are missing.
    pub create: bool,
    /// The slot is a failover slot (`source.failover`, Postgres 17+).
    pub failover: bool,
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSpec")
            .field("url", &redact_url(&self.url))
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("create", &self.create)
            .field("failover", &self.failover)
            .finish()
    }
}

/// Connection parameters pulled out of [`SourceSpec::url`], for the
/// replication connection which does not take a URL.
#[derive(Clone)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`.
    pub tls: TlsSettings,
    /// Every host of the URL with its port, in order; `host` and `port` are
    /// the first until [`ConnParams::primary`] picks another.
    pub hosts: Vec<(String, u16)>,
    /// The URL they came from, to ask each host whether it is a primary.
    url: String,
}

impl fmt::Debug for ConnParams {
    // The password stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// URL parameters walbust passes on to the SQL connections besides the
/// TLS ones; anything else is refused, since a setting walbust ignored
/// (or applied to one connection only) would be a silent surprise.
const URL_PARAMS: [&str; 10] = [
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "target_session_attrs",
];

/// Splits `url` into what tokio-postgres parses and the TLS settings, which
/// it does not know; refuses parameters walbust does not support.
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, TlsSettings), SourceError> {
    let invalid = |reason: String| SourceError::Url { reason };
    let mut tls = TlsSettings::default();
    let mut rest = String::with_capacity(url.len());
    let params: Vec<(String, String, &str)> = if url.contains("://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        rest.push_str(base);
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v), p)
            })
            .collect()
    } else {
        key_value_pairs(url)
    };
    let mut kept = Vec::new();
    for (key, value, raw) in params {
        if TLS_PARAMS.contains(&key.as_str()) {
            tls.set(&key, &value).map_err(invalid)?;
        } else if URL_PARAMS.contains(&key.as_str()) {
            kept.push(raw);
        } else if key == "sslpassword" {
            return Err(invalid(
                "sslpassword is not supported: give sslkey a key file without a passphrase, readable by walbust's user only".into(),
            ));
        } else {
            return Err(invalid(format!(
                "unknown parameter {key:?}: walbust supports {} and {}",
                URL_PARAMS.join(", "),
                TLS_PARAMS.join(", ")
            )));
        }
    }
    tls.validate().map_err(invalid)?;
    if url.contains("://") {
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
    } else {
        rest = kept.join(" ");
    }
    let mut cfg = tokio_postgres::Config::from_str(&rest).map_err(|e| SourceError::Url {
        reason: e.to_string(),
    })?;
    cfg.ssl_mode(match tls.effective_mode() {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok((cfg, tls))
}

/// `%XX` escapes of a URL query component, decoded (`+` is kept, as
/// libpq does).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value` pairs of a libpq connection string, each with its text
/// as written; values may be single-quoted with backslash escapes.
fn key_value_pairs(text: &str) -> Vec<(String, String, &str)> {
    let mut pairs = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return pairs;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars
            .next_if(|(_, c)| c.is_whitespace() || *c == '=')
            .is_some()
        {}
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = text.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    end = i + 1;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        pairs.push((key, value, &text[start..end]));
    }
}

impl ConnParams {
    /// Parses a `postgres://` or `postgresql://` URL (also libpq key=value
    /// strings, which tokio-postgres accepts), with the TLS parameters of
    /// [`TlsSettings`]. Parameters walbust does not support are refused by
    /// name.
    pub fn from_url(url: &str) -> Result<ConnParams, SourceError> {
        let (cfg, tls) = parse_url(url)?;
        let hosts: Vec<(String, u16)> = (0..cfg.get_hosts().len())
            .filter_map(|i| {
                let one = single_host(&cfg, i)?;
                let host = match one.get_hosts().first()? {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                };
                Some((host, *one.get_ports().first()?))
            })
            .collect();
        let (host, port) = hosts
            .first()
            .cloned()
            .unwrap_or_else(|| ("localhost".to_string(), 5432));
        let user = cfg.get_user().unwrap_or("postgres").to_string();
        let password = cfg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = cfg.get_dbname().unwrap_or(&user).to_string();
        Ok(ConnParams {
            host,
            port,
            user,
            password,
            database,
            tls,
            hosts,
            url: url.to_owned(),
        })
    }

    /// These parameters pointed at the host to stream from: with several
    /// hosts, the first primary ([`primary_host`]), asked each time, so that
    /// after a failover walbust follows the promoted server.
    pub async fn primary(&self) -> Result<ConnParams, SourceError> {
        if self.hosts.len() <= 1 {
            return Ok(self.clone());
        }
        Ok(self.at_host(primary_host(&self.url).await?))
    }

    /// These parameters with host number `index` of the URL (as
    /// [`connect_indexed`] found it).
    pub fn at_host(&self, index: usize) -> ConnParams {
        let mut params = self.clone();
        if let Some((host, port)) = self.hosts.get(index) {
            params.host.clone_from(host);
            params.port = *port;
        }
        params
    }

    /// The URL these parameters come from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A replication connection to these parameters (TLS included) for
    /// `slot` and `publication`.
    pub fn replication_config(&self, slot: &str, publication: &str) -> ReplicationConfig {
        ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone(),
            self.database.clone(),
            slot.to_owned(),
            publication.to_owned(),
        )
        .with_port(self.port)
        .with_tls(self.tls.replication(&self.host))
    }

    /// A failure of the replication connection: a TLS failure is named
    /// with the host and sslmode, and is definite, like on SQL connections.
    pub fn replication_error(&self, source: PgWireError) -> StreamError {
        match source {
            PgWireError::Tls(reason) => StreamError::Source(SourceError::Tls {
                host: format!("{}:{}", self.host, self.port),
                sslmode: self.tls.effective_mode(),
                reason,
            }),
            source => StreamError::Replication { source },
        }
    }
}

/// `url` with its password replaced by `***`, for messages: the
/// password of `postgres://user:password@host/db` and a `password=` query
/// parameter or key=value pair. Anything else is kept as written.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = rest..rest + at;
            if let Some(colon) = out[userinfo.clone()].find(':') {
                out.replace_range(rest + colon + 1..userinfo.end, "***");
            }
        }
    }
    let mut from = 0;
    while let Some(found) = out[from..].find("password=") {
        let start = from + found + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |i| start + i);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

/// The slot as found (or made) by [`prepare`].
#[derive(Debug, Clone)]
pub struct SlotState {
    /// `confirmed_flush_lsn`: where streaming resumes.
    pub confirmed_flush_lsn: u64,
    /// `wal_status` (`reserved`, `extended`, `unreserved`).
    pub wal_status: String,
    /// True when this call created the slot.
    pub created: bool,
    /// `source.failover` is set and the slot is not a failover slot yet:
    /// the replication session makes it one (`ALTER_REPLICATION_SLOT`).
    pub make_failover: bool,
}

/// Opens an ordinary SQL connection to the source and drives it in the
/// background, with the TLS settings of the URL.
pub async fn connect(url: &str) -> Result<Client, SourceError> {
    open(url, None).await
}

/// Like [`connect`], and the server's notices (`RAISE NOTICE`) arrive on the
/// receiver, in order, before the statement that raised them returns.
pub async fn connect_with_notices(
    url: &str,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>), SourceError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    Ok((open(url, Some(tx)).await?, rx))
}

/// Like [`connect`], and which host of the URL it connected to (0 with one
/// host; with several, the primary's, see [`primary_host`]).
pub async fn connect_indexed(url: &str) -> Result<(usize, Client), SourceError> {
    open_indexed(url, None).await
}

async fn open(
    url: &str,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<Client, SourceError> {
    open_indexed(url, notices).await.map(|(_, client)| client)
}

async fn open_indexed(
    url: &str,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<(usize, Client), SourceError> {
    let (cfg, tls) = parse_url(url)?;
    if cfg.get_hosts().len() > 1 {
        return connect_primary(&cfg, &tls, notices).await;
    }
    Ok((0, open_config(&cfg, &tls, notices).await?))
}

async fn open_config(
    cfg: &tokio_postgres::Config,
    tls: &TlsSettings,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<Client, SourceError> {
    let host = || {
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        format!(
            "{host}:{}",
            cfg.get_ports().first().copied().unwrap_or(5432)
        )
    };
    let tls_error = |reason: String| SourceError::Tls {
        host: host(),
        sslmode: tls.effective_mode(),
        reason,
    };
    let connected = match tls.client_config().map_err(tls_error)? {
        None => spawn_connection(cfg, NoTls, notices).await,
        Some(config) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            spawn_connection(cfg, tls, notices).await
        }
    };
    connected.map_err(|e| {
        // tokio-postgres tells a TLS failure only by its kind's message.
        if e.to_string() == "error performing TLS handshake" {
            let reason = std::error::Error::source(&e)
                .map_or_else(|| "TLS handshake failed".to_owned(), |s| s.to_string());
            return tls_error(reason);
        }
        SourceError::Connect { source: e }
    })
}

/// The `index`th host of `cfg` alone, with its port and every other
/// setting of `cfg`.
fn single_host(cfg: &tokio_postgres::Config, index: usize) -> Option<tokio_postgres::Config> {
    let host = cfg.get_hosts().get(index)?;
    let ports = cfg.get_ports();
    // libpq: one port for every host, or one per host.
    let port = match ports {
        [] => 5432,
        [one] => *one,
        many => *many.get(index)?,
    };
    let mut one = tokio_postgres::Config::new();
    match host {
        tokio_postgres::config::Host::Tcp(h) => one.host(h),
        tokio_postgres::config::Host::Unix(p) => one.host_path(p),
    };
    one.port(port);
    if let Some(user) = cfg.get_user() {
        one.user(user);
    }
    if let Some(password) = cfg.get_password() {
        one.password(password);
    }
    if let Some(dbname) = cfg.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(name) = cfg.get_application_name() {
        one.application_name(name);
    }
    if let Some(timeout) = cfg.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    one.keepalives(cfg.get_keepalives());
    one.keepalives_idle(cfg.get_keepalives_idle());
    Some(one)
}

/// A connection to one host of `url` (`host`, `port` as in
/// [`ConnParams::hosts`]), with every other setting of `url`; `None` when
/// it does not answer or is not one of its hosts.
pub async fn connect_host(url: &str, host: &str, port: u16) -> Option<Client> {
    let (cfg, tls) = parse_url(url).ok()?;
    let conn = ConnParams::from_url(url).ok()?;
    let index = conn
        .hosts
        .iter()
        .position(|(h, p)| h == host && *p == port)?;
    let one = single_host(&cfg, index)?;
    open_config(&one, &tls, None).await.ok()
}

/// Which host of `url` to stream from: the only one, or with several
/// (`host=a,b`, `postgres://a,b/...`) the first that answers and is a
/// primary (`pg_is_in_recovery()` false), as libpq's
/// `target_session_attrs=read-write` picks it. Logical decoding needs the
/// primary, so walbust looks for it whatever `target_session_attrs` says.
/// None answering as a primary (a failover under way) is transient.
pub async fn primary_host(url: &str) -> Result<usize, SourceError> {
    let (cfg, tls) = parse_url(url)?;
    if cfg.get_hosts().len() <= 1 {
        return Ok(0);
    }
    connect_primary(&cfg, &tls, None)
        .await
        .map(|(index, _)| index)
}

/// Connects to the first host of `cfg` that answers and is a primary; its
/// index and the connection. See [`primary_host`].
async fn connect_primary(
    cfg: &tokio_postgres::Config,
    tls: &TlsSettings,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<(usize, Client), SourceError> {
    let count = cfg.get_hosts().len();
    let mut standbys = 0;
    let mut last = None;
    for index in 0..count {
        let Some(one) = single_host(cfg, index) else {
            continue;
        };
        let client = match open_config(&one, tls, notices.clone()).await {
            Ok(client) => client,
            Err(e) if e.is_definite() => return Err(e),
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) if !row.get::<_, bool>(0) => return Ok((index, client)),
            Ok(_) => standbys += 1,
            Err(source) => {
                last = Some(SourceError::Query {
                    what: "ask a host whether it is in recovery",
                    source,
                })
            }
        }
    }
    match last {
        Some(error) if standbys == 0 => Err(error),
        _ => Err(SourceError::NoPrimary {
            hosts: count,
            standbys,
        }),
    }
}

async fn spawn_connection<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let (client, mut connection) = cfg.connect(tls).await?;
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                    if let Some(tx) = &notices {
                        let _ = tx.send(notice.message().to_owned());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %walbust_flow::Chain(&e), "control connection closed");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// Checks the server, the publication and the slot, creating what is missing
/// when `spec.create` is set. `tables` are the tables the rules name.
pub async fn prepare(
    client: &Client,
    spec: &SourceSpec,
    tables: &[TableName],
) -> Result<SlotState, SourceError> {
    prepare_publication(client, spec, tables).await?;
    prepare_slot(client, spec).await
}

/// The first half of [`prepare`]: checks `wal_level` and the publication,
/// creating the publication when it is missing and `spec.create` is set.
/// Checks that must pass before a slot is created go between the halves: a
/// slot created for a start that is then refused would hold WAL on the
/// server until someone drops it.
pub async fn prepare_publication(
    client: &Client,
    spec: &SourceSpec,
    tables: &[TableName],
) -> Result<(), SourceError> {
    check_wal_level(client).await?;
    ensure_publication(client, spec, tables).await
}

/// The second half of [`prepare`]: checks the slot, creating it when it is
/// missing and `spec.create` is set.
pub async fn prepare_slot(client: &Client, spec: &SourceSpec) -> Result<SlotState, SourceError> {
    ensure_slot(client, spec).await
}

async fn check_wal_level(client: &Client) -> Result<(), SourceError> {
    let row = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| SourceError::query("SHOW wal_level", e))?;
    let level: String = row.get(0);
    if level != "logical" {
        return Err(SourceError::WalLevel { actual: level });
    }
    Ok(())
}

async fn ensure_publication(
    client: &Client,
    spec: &SourceSpec,
    tables: &[TableName],
) -> Result<(), SourceError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&spec.publication],
        )
        .await
        .map_err(|e| SourceError::query("look up the publication", e))?
        .is_some();
    if !exists {
        if !spec.create {
            return Err(SourceError::PublicationMissing {
                publication: spec.publication.clone(),
            });
        }
        for table in tables {
            check_table_exists(client, table).await?;
        }
        // Created via the root: a named partition whose ancestor is named
        // too would arrive as the ancestor.
        for table in tables {
            let Some(info) = crate::catalog::table(client, table, None).await? else {
                continue;
            };
            if let Some(root) = info.ancestors.iter().find(|a| tables.contains(a)) {
                return Err(SourceError::PartitionUnderRoot {
                    publication: spec.publication.clone(),
                    table: table.to_string(),
                    root: root.to_string(),
                });
            }
        }
        let sql = if tables.is_empty() {
            format!("CREATE PUBLICATION {}", quote_ident(&spec.publication))
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                quote_ident(&spec.publication),
                table_list(tables)
            )
        };
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| publication_error(e, "create", spec, &sql))?;
        tracing::info!(publication = %spec.publication, tables = tables.len(), "created publication");
        return Ok(());
    }

    let published = published_tables(client, &spec.publication).await?;
    let missing: Vec<&TableName> = tables
        .iter()
        .filter(|t| !published.contains(&(t.schema.clone(), t.name.clone())))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // A partition mismatch is the cause to name, and adding the table would
    // not help.
    if let Some(publication) = crate::catalog::publication(client, &spec.publication).await? {
        check_partitions(client, &publication, &missing).await?;
    }
    if !spec.create {
        return Err(SourceError::TablesNotPublished {
            publication: spec.publication.clone(),
            tables: missing.iter().map(|t| t.to_string()).collect(),
        });
    }
    for table in &missing {
        check_table_exists(client, table).await?;
    }
    let sql = format!(
        "ALTER PUBLICATION {} ADD TABLE {}",
        quote_ident(&spec.publication),
        table_list(missing.iter().copied())
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| publication_error(e, "alter", spec, &sql))?;
    tracing::info!(publication = %spec.publication, added = missing.len(), "added tables to publication");
    Ok(())
}

/// A failed CREATE or ALTER PUBLICATION: a refused privilege says what to
/// run instead.
fn publication_error(
    e: tokio_postgres::Error,
    what: &'static str,
    spec: &SourceSpec,
    sql: &str,
) -> SourceError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        return SourceError::PublicationNotPermitted {
            what,
            publication: spec.publication.clone(),
            sql: sql.to_string(),
            source: e,
        };
    }
    SourceError::query(
        if what == "create" {
            "CREATE PUBLICATION"
        } else {
            "ALTER PUBLICATION ADD TABLE"
        },
        e,
    )
}

/// Refuses the first of `tables` whose changes `publication` would send
/// under another name (see [`partition_mismatch`]).
async fn check_partitions(
    client: &Client,
    publication: &Publication,
    tables: &[&TableName],
) -> Result<(), SourceError> {
    for &table in tables {
        let Some(info) = crate::catalog::table(client, table, None).await? else {
            continue;
        };
        if let Some(problem) = partition_mismatch(publication, &info) {
            return Err(problem);
        }
    }
    Ok(())
}

/// Tables of a publication as `(schema, table)`. Partitions of a published
/// partitioned table are listed under their root when the publication
/// publishes via the root, which is what the rules name.
pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<BTreeSet<(String, String)>, SourceError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| SourceError::query("list the publication's tables", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Checks that publication `name` sends the rules everything they react
/// to and read; see [`withheld`]. Refuses with the first problem. A missing
/// publication passes: the publication checks report it.
pub async fn check_sends(client: &Client, name: &str, rules: &RuleSet) -> Result<(), SourceError> {
    let Some(publication) = crate::catalog::publication(client, name).await? else {
        return Ok(());
    };
    match withheld(&publication, rules).into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// Why `publication` would not send `table`'s changes under the name the
/// rules use for it, if so: a partitioned table whose partitions are
/// published under their own names, or a partition whose changes arrive as
/// a published ancestor's.
pub fn partition_mismatch(publication: &Publication, table: &TableInfo) -> Option<SourceError> {
    if publication.tables.contains(&table.name) {
        return None;
    }
    let leaf_published = table
        .leaves
        .iter()
        .any(|l| publication.tables.contains(&l.table));
    if table.kind == TableKind::Partitioned && !publication.via_root && leaf_published {
        return Some(SourceError::PartitionsUnderOwnNames {
            publication: publication.name.clone(),
            table: table.name.to_string(),
        });
    }
    let root = table
        .ancestors
        .iter()
        .find(|a| publication.tables.contains(a))?;
    publication
        .via_root
        .then(|| SourceError::PartitionUnderRoot {
            publication: publication.name.clone(),
            table: table.name.to_string(),
            root: root.to_string(),
        })
}

/// Binds the rules to the columns publication `publication` sends of each
/// table they name, as the reader will once the table is described: a rule
/// reading a column the table does not have (or the publication leaves
/// out) is refused before anything streams. Only the catalog as it is now
/// counts; a column missing from an older description in the stream falls
/// back instead (see [`crate::relations`]). Tables missing from the catalog
/// pass: the publication checks report them.
pub async fn check_columns(
    client: &Client,
    publication: &Publication,
    rules: &RuleSet,
) -> Result<(), SourceError> {
    for table in rules.tables() {
        let Some(info) = crate::catalog::table(client, &table, Some(&publication.name)).await?
        else {
            continue;
        };
        let columns = info.sent_columns(publication.generated_columns);
        rules
            .bind(&table.schema, &table.name, &columns)
            .map_err(|source| SourceError::RulesDoNotFit {
                table: table.to_string(),
                source,
            })?;
    }
    Ok(())
}

/// What `publication` withholds from the rules, every problem once:
///
/// - operations the rules react to that it does not publish
///   (`publish = 'insert'`): pgoutput drops them without a trace;
/// - a row filter on a table the rules match: pgoutput sends only rows
///   inside it, and turns an UPDATE that crosses its edge into a DELETE of
///   the old row or an INSERT of the new one, so one side's values are
///   never seen;
/// - a column list that leaves out a column the rules read.
///
/// Tables it does not publish are not its business (see [`prepare`]).
pub fn withheld(publication: &Publication, rules: &RuleSet) -> Vec<SourceError> {
    let mut problems = Vec::new();
    let mut missing: Vec<Op> = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    for table in &publication.tables {
        let lacking: Vec<Op> = rules
            .ops_for(&table.schema, &table.name)
            .into_iter()
            .filter(|op| !publication.ops.contains(op))
            .collect();
        if lacking.is_empty() {
            continue;
        }
        missing.extend(lacking);
        tables.push(format!("table {table}"));
    }
    if !missing.is_empty() {
        // Each operation once, in the order Postgres documents them.
        let names = |wanted: &dyn Fn(&Op) -> bool| -> Vec<&'static str> {
            Op::ALL
                .into_iter()
                .filter(|op| wanted(op))
                .map(Op::as_str)
                .collect()
        };
        problems.push(SourceError::OperationsNotPublished {
            publication: publication.name.clone(),
            missing: names(&|op| missing.contains(op)),
            published: names(&|op| publication.ops.contains(op)).join(", "),
            fix: names(&|op| publication.ops.contains(op) || missing.contains(op)).join(", "),
            tables,
        });
    }
    for filter in &publication.filters {
        let table = &filter.table;
        if rules.ops_for(&table.schema, &table.name).is_empty() {
            continue;
        }
        if let Some(row_filter) = &filter.row_filter {
            problems.push(SourceError::RowFilter {
                publication: publication.name.clone(),
                table: table.to_string(),
                filter: row_filter.clone(),
            });
        }
        let Some(list) = &filter.column_list else {
            continue;
        };
        // A column the table lacks altogether is a different problem,
        // reported where the rules are bound to the table.
        let left_out: Vec<String> = rules
            .columns_read(&table.schema, &table.name)
            .into_iter()
            .filter(|c| !list.iter().any(|l| l == c) && filter.columns.iter().any(|t| t == c))
            .map(str::to_owned)
            .collect();
        if !left_out.is_empty() {
            problems.push(SourceError::ColumnList {
                publication: publication.name.clone(),
                table: table.to_string(),
                list: list.clone(),
                missing: left_out,
            });
        }
    }
    problems
}

async fn check_table_exists(client: &Client, table: &TableName) -> Result<(), SourceError> {
    let found = client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| SourceError::query("look up a table", e))?
        .is_some();
    if found {
        Ok(())
    } else {
        Err(SourceError::TableMissing {
            table: table.to_string(),
        })
    }
}

/// Whether the DDL guard's event trigger ([`crate::window`]) is installed
/// and enabled in this database.
pub async fn ddl_guard_installed(client: &Client) -> Result<bool, SourceError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1 AND evtenabled <> 'D')",
            &[&crate::window::GUARD_TRIGGER],
        )
        .await
        .map_err(|e| SourceError::query("look up the DDL guard event trigger", e))?;
    Ok(row.get(0))
}

/// Installs (or replaces) the DDL guard; needs a superuser.
pub async fn install_ddl_guard(client: &Client) -> Result<(), SourceError> {
    client
        .batch_execute(crate::window::GUARD_SQL)
        .await
        .map_err(|e| SourceError::query("install the DDL guard", e))
}

/// Whether replication slot `slot` exists.
pub async fn slot_exists(client: &Client, slot: &str) -> Result<bool, SourceError> {
    Ok(slot_position(client, slot).await?.is_some())
}

/// The `confirmed_flush_lsn` of replication slot `slot` (0 for a physical
/// slot, which has none); `None` when the slot does not exist.
pub async fn slot_position(client: &Client, slot: &str) -> Result<Option<u64>, SourceError> {
    let row = client
        .query_opt(
            "SELECT coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SourceError::query("look up the replication slot", e))?;
    Ok(row.map(|r| walbust_pgoutput::parse_lsn(r.get(0)).unwrap_or(0)))
}

/// Drops `spec.slot` if it exists. While the walsender that streamed it is
/// still exiting this fails with SQLSTATE 55006, which is transient.
pub async fn drop_slot(client: &Client, spec: &SourceSpec) -> Result<(), SourceError> {
    client
        .execute(
            "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(|e| SourceError::query("drop the replication slot", e))?;
    tracing::warn!(slot = %spec.slot, "dropped replication slot");
    Ok(())
}

async fn ensure_slot(client: &Client, spec: &SourceSpec) -> Result<SlotState, SourceError> {
    let row = client
        .query_opt(
            "SELECT s.plugin::text, s.slot_type, d.datname::text, \
                    coalesce(s.wal_status, ''), coalesce(s.confirmed_flush_lsn::text, '0/0'), \
                    current_database()::text \
             FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid \
             WHERE s.slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(|e| SourceError::query("look up the replication slot", e))?;

    let Some(row) = row else {
        if !spec.create {
            return Err(SourceError::SlotMissing {
                slot: spec.slot.clone(),
                create: false,
            });
        }
        if spec.failover {
            require_failover_slots(client).await?;
        }
        // (slot_name, plugin, temporary, twophase, failover): the long form
        // only where `failover` exists, Postgres 17 and later.
        let sql = if spec.failover {
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
        } else {
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
        };
        let row = client
            .query_one(sql, &[&spec.slot])
            .await
            .map_err(|e| SourceError::query("create the replication slot", e))?;
        let lsn: String = row.get(0);
        tracing::info!(slot = %spec.slot, lsn = %lsn, failover = spec.failover, "created replication slot");
        return Ok(SlotState {
            confirmed_flush_lsn: walbust_pgoutput::parse_lsn(&lsn).unwrap_or(0),
            wal_status: "reserved".into(),
            created: true,
            make_failover: false,
        });
    };

    let plugin: Option<String> = row.get(0);
    let slot_type: String = row.get(1);
    let database: Option<String> = row.get(2);
    let wal_status: String = row.get(3);
    let confirmed: String = row.get(4);
    let current_db: String = row.get(5);

    if slot_type != "logical" {
        return Err(SourceError::SlotWrongKind {
            slot: spec.slot.clone(),
            detail: format!("it is a {slot_type} slot"),
        });
    }
    if plugin.as_deref() != Some("pgoutput") {
        return Err(SourceError::SlotWrongKind {
            slot: spec.slot.clone(),
            detail: format!(
                "it uses the output plugin {:?}, walbust needs pgoutput",
                plugin.unwrap_or_default()
            ),
        });
    }
    if database.as_deref() != Some(current_db.as_str()) {
        return Err(SourceError::SlotWrongKind {
            slot: spec.slot.clone(),
            detail: format!(
                "it belongs to database {:?}, not {:?}",
                database.unwrap_or_default(),
                current_db
            ),
        });
    }
    if wal_status == "lost" {
        return Err(SourceError::SlotLost {
            slot: spec.slot.clone(),
        });
    }
    if wal_status == "unreserved" {
        tracing::warn!(slot = %spec.slot, "slot wal_status is 'unreserved': the server is about to remove WAL it still needs (max_slot_wal_keep_size)");
    }
    let make_failover = spec.failover && !slot_is_failover(client, spec).await?;
    Ok(SlotState {
        confirmed_flush_lsn: walbust_pgoutput::parse_lsn(&confirmed).unwrap_or(0),
        wal_status,
        created: false,
        make_failover,
    })
}

/// The server's major version, e.g. 17.
pub async fn server_major(client: &Client) -> Result<u32, SourceError> {
    let version = crate::catalog::server_version(client).await?;
    Ok(u32::try_from(version / 10_000).unwrap_or(0))
}

/// Refuses `source.failover` on a server without failover slots.
async fn require_failover_slots(client: &Client) -> Result<(), SourceError> {
    let major = server_major(client).await?;
    if major < 17 {
        return Err(SourceError::FailoverUnsupported { major });
    }
    Ok(())
}

/// Whether the existing slot of `spec` is a failover slot (Postgres 17+;
/// `source.failover` on an older server is refused).
async fn slot_is_failover(client: &Client, spec: &SourceSpec) -> Result<bool, SourceError> {
    require_failover_slots(client).await?;
    let row = client
        .query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(|e| SourceError::query("look up the slot's failover flag", e))?;
    Ok(row.get(0))
}

fn table_list<'a>(tables: impl IntoIterator<Item = &'a TableName>) -> String {
    tables
        .into_iter()
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Quotes an SQL identifier the way `quote_ident` does in Postgres.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn url_parts_are_extracted_and_password_kept_out_of_debug() {
        let p = ConnParams::from_url("postgres://app:s3cret@db.internal:6543/shop").unwrap();
        assert_eq!(p.host, "db.internal");
        assert_eq!(p.port, 6543);
        assert_eq!(p.user, "app");
        assert_eq!(p.password, "s3cret");
        assert_eq!(p.database, "shop");
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn what_a_publication_withholds_from_the_rules_is_named() {
        let rules = RuleSet::from_yaml(
            "version: 1\nrules:\n  - table: public.items\n    on: [insert, update]\n    keys: [\"item:{id}\"]\n    tags: [\"category:{new.category}\"]\n",
            "rules.yaml",
        )
        .unwrap();
        let items = TableName::new("public", "items");
        let other = TableName::new("public", "other");
        let filter = |table: &TableName, row_filter: Option<&str>, list: &[&str]| {
            crate::catalog::TableFilter {
                table: table.clone(),
                row_filter: row_filter.map(str::to_owned),
                column_list: (!list.is_empty())
                    .then(|| list.iter().map(|c| c.to_string()).collect()),
                columns: ["id", "category", "secret"].map(String::from).to_vec(),
            }
        };
        let mut publication = Publication {
            name: "p".into(),
            all_tables: false,
            via_root: false,
            generated_columns: false,
            tables: [items.clone(), other.clone()].into(),
            ops: vec![Op::Insert, Op::Delete],
            filters: Vec::new(),
        };
        let text = |p: &Publication| -> Vec<String> {
            withheld(p, &rules).iter().map(|e| e.to_string()).collect()
        };

        let found = text(&publication);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("publication \"p\" does not publish update (publish = 'insert, delete'), but rules react to them on table public.items,"),
            "{}",
            found[0]
        );
        assert!(
            found[0].ends_with("ALTER PUBLICATION p SET (publish = 'insert, update, delete')"),
            "{}",
            found[0]
        );

        publication.ops = Op::ALL.to_vec();
        assert!(text(&publication).is_empty());

        // Filters on a table no rule names are its own business.
        publication.filters = vec![filter(&other, Some("(id > 1)"), &["id"])];
        assert!(text(&publication).is_empty());

        publication.filters = vec![filter(&items, Some("(id > 10)"), &["id", "secret"])];
        let found = text(&publication);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("with a row filter (WHERE (id > 10))"),
            "{}",
            found[0]
        );
        assert!(
            found[1].contains(
                "sends only columns id, secret of table public.items, but the rules read category"
            ),
            "{}",
            found[1]
        );

        publication.filters = vec![filter(&items, None, &["id", "category"])];
        assert!(text(&publication).is_empty());
    }

    #[test]
    fn every_host_of_a_multi_host_url_is_kept_with_its_port() {
        let p = ConnParams::from_url(
            "postgres://app:pw@db1:5433,db2:5434/shop?target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(
            p.hosts,
            [("db1".to_owned(), 5433), ("db2".to_owned(), 5434)]
        );
        assert_eq!((p.host.as_str(), p.port), ("db1", 5433));
        // libpq: one port for every host.
        let p = ConnParams::from_url("host=a,b port=6000 user=app dbname=shop").unwrap();
        assert_eq!(p.hosts, [("a".to_owned(), 6000), ("b".to_owned(), 6000)]);
        let p = ConnParams::from_url("postgres://app@db/shop").unwrap();
        assert_eq!(p.hosts, [("db".to_owned(), 5432)]);
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, shown) in [
            (
                "postgres://admin:s3cr@t@db:5432/shop",
                "postgres://admin:***@db:5432/shop",
            ),
            ("postgres://admin@db/shop", "postgres://admin@db/shop"),
            (
                "postgresql://db/shop?user=a&password=s3cr&sslmode=require",
                "postgresql://db/shop?user=a&password=***&sslmode=require",
            ),
            (
                "host=db password=s3cr user=a",
                "host=db password=*** user=a",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn tls_parameters_are_taken_and_unknown_ones_refused_by_name() {
        let p = ConnParams::from_url(
            "postgres://app:pw@db:5433/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(p.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            p.tls.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            (p.host.as_str(), p.port, p.database.as_str()),
            ("db", 5433, "shop")
        );

        let p = ConnParams::from_url(
            "host=db user=app sslmode=require sslcert='/c d.pem' sslkey=/k.pem dbname=shop",
        )
        .unwrap();
        assert_eq!(p.tls.mode, SslMode::Require);
        assert_eq!(
            p.tls.cert.as_deref(),
            Some(std::path::Path::new("/c d.pem"))
        );
        assert_eq!((p.user.as_str(), p.database.as_str()), ("app", "shop"));

        assert_eq!(
            ConnParams::from_url("postgres://db/shop").unwrap().tls.mode,
            SslMode::Prefer
        );
        for (url, expected) in [
            (
                "postgres://app:s3cret@db/shop?sslcompression=1",
                "unknown parameter \"sslcompression\"",
            ),
            (
                "postgres://app:s3cret@db/shop?sslmode=on",
                "sslmode=on is not one of",
            ),
            (
                "postgres://app:s3cret@db/shop?sslcert=/c.pem",
                "sslcert and sslkey go together",
            ),
        ] {
            let err = ConnParams::from_url(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn database_defaults_to_user() {
        let p = ConnParams::from_url("postgresql://app@localhost").unwrap();
        assert_eq!(p.database, "app");
        assert_eq!(p.port, 5432);
    }
}
