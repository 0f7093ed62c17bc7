//! A throw-away PostgreSQL cluster per test process, and a fresh database per test.
//!
//! The cluster is made from the local server binaries (`WARMPOOL_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`) with `initdb -A trust` in a temporary directory, `fsync=off`, listening only on a
//! unix socket in that directory. PostgreSQL refuses to run as root, so as root every server command runs as the
//! `postgres` user (`runuser -u postgres --`) in a directory that user owns. A migrated `warmpool_template`
//! database is made once; each test gets `CREATE DATABASE test_N TEMPLATE warmpool_template`.
//!
//! When the binaries are missing, [`test_store`] answers `Ok(None)` after printing that the test is skipped,
//! unless `WARMPOOL_TEST_POSTGRES=required`, when it is an error. Clean-up: a watchdog process (in its own process
//! group, so a Ctrl-C of the tests does not take it down first) waits for the test process to exit, then stops the
//! cluster with `pg_ctl stop -m immediate` and removes the directory, so no clusters accumulate.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

use crate::postgres::{MIGRATOR, PgStore};

/// What went wrong while making a test database.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "PostgreSQL server binaries not found (looked for initdb in $WARMPOOL_PG_BIN and /usr/lib/postgresql/*/bin), \
         and WARMPOOL_TEST_POSTGRES=required: install postgresql-15 (apt-get install postgresql-15)"
    )]
    Missing,
    #[error("could not start the test PostgreSQL cluster: {0}")]
    Cluster(String),
    #[error("could not prepare a test database: {context}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not open the test store")]
    Store(#[source] crate::StoreError),
}

/// The running test cluster of this process.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// The directory holding the server's unix socket (`host` for clients).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server binaries (`pgbench` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Connection options for a database of the cluster, as the superuser `postgres`.
    pub fn options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.dir)
            .port(self.port)
            .username("postgres")
            .database(database)
    }

    /// A command for one of the cluster's binaries, run as `postgres` when we are root.
    pub fn command(&self, program: &str) -> Command {
        command_as(&self.bin.join(program), self.as_postgres)
    }
}

fn command_as(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

static CLUSTER: OnceLock<Result<Option<Cluster>, String>> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
static CREATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

const TEMPLATE_DB: &str = "warmpool_template";

fn required() -> bool {
    std::env::var("WARMPOOL_TEST_POSTGRES").is_ok_and(|v| v == "required")
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WARMPOOL_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_ids() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres"))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .ok_or_else(|| "there is no postgres user to run the server as".to_owned())
}

fn start_cluster() -> Result<Option<Cluster>, String> {
    let Some(bin) = find_bin() else {
        return Ok(None);
    };
    let as_postgres = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!(
        "warmpool-pg-{pid}-{}",
        crate::util::random_suffix(6)
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if as_postgres {
        let (uid, gid) = postgres_ids()?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let port = 5432;
    let cluster = Cluster {
        bin,
        dir: dir.clone(),
        port,
        as_postgres,
    };

    // The watchdog first, so that even a failed start is cleaned up when this process ends.
    let pg_ctl = cluster.bin.join("pg_ctl");
    let stop = if as_postgres {
        format!(
            "runuser -u postgres -- '{}' -D '{}' -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "'{}' -D '{}' -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{}'",
        dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not start the clean-up watchdog: {e}"))?;

    let mut initdb = cluster.command("initdb");
    initdb.arg("-D").arg(&data).args([
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    run(initdb, "initdb")?;
    let conf = format!(
        "\n# warmpool test cluster\nfsync = off\nfull_page_writes = off\nlisten_addresses = ''\n\
         unix_socket_directories = '{}'\nport = {port}\nmax_connections = 200\nshared_buffers = 256MB\n",
        dir.display()
    );
    let conf_path = data.join("postgresql.conf");
    let mut text =
        std::fs::read_to_string(&conf_path).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    text.push_str(&conf);
    std::fs::write(&conf_path, text).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    let mut start = cluster.command("pg_ctl");
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "start"])
        .stdout(Stdio::null());
    run(start, "pg_ctl start")?;
    Ok(Some(cluster))
}

/// This process's cluster: `Ok(None)` when the binaries are missing and PostgreSQL is not required.
pub fn cluster() -> Result<Option<&'static Cluster>, HarnessError> {
    match CLUSTER.get_or_init(start_cluster) {
        Ok(Some(cluster)) => Ok(Some(cluster)),
        Ok(None) if required() => Err(HarnessError::Missing),
        Ok(None) => Ok(None),
        Err(e) => Err(HarnessError::Cluster(e.clone())),
    }
}

async fn admin(cluster: &Cluster) -> Result<PgConnection, HarnessError> {
    PgConnection::connect_with(&cluster.options("postgres"))
        .await
        .map_err(|source| HarnessError::Database {
            context: "connecting to the test cluster".into(),
            source,
        })
}

async fn ensure_template(cluster: &Cluster) -> Result<(), HarnessError> {
    TEMPLATE
        .get_or_try_init(|| async {
            let mut conn = admin(cluster).await?;
            conn.execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {TEMPLATE_DB}"
            )))
            .await
            .map_err(|source| HarnessError::Database {
                context: "creating the template database".into(),
                source,
            })?;
            conn.close().await.ok();
            let mut template = PgConnection::connect_with(&cluster.options(TEMPLATE_DB))
                .await
                .map_err(|source| HarnessError::Database {
                    context: "connecting to the template database".into(),
                    source,
                })?;
            MIGRATOR.run(&mut template).await.map_err(|e| {
                HarnessError::Store(crate::StoreError::Migrate {
                    backend: "postgres",
                    source: e,
                })
            })?;
            template.close().await.ok();
            Ok(())
        })
        .await
        .map(|_| ())
}

/// A fresh, migrated, empty database: its name and connection options. `Ok(None)` (after saying so on stderr)
/// when PostgreSQL is not installed and not required.
pub async fn test_database() -> Result<Option<(String, PgConnectOptions)>, HarnessError> {
    let Some(cluster) = cluster()? else {
        eprintln!(
            "PostgreSQL server binaries not found: skipping this PostgreSQL test (set WARMPOOL_TEST_POSTGRES=required to fail instead)"
        );
        return Ok(None);
    };
    ensure_template(cluster).await?;
    let name = format!("test_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    {
        let _serial = CREATE.lock().await;
        let mut conn = admin(cluster).await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"
        )))
        .await
        .map_err(|source| HarnessError::Database {
            context: format!("creating {name}"),
            source,
        })?;
        conn.close().await.ok();
    }
    let options = cluster.options(&name);
    Ok(Some((name, options)))
}

/// A [`PgStore`] on a fresh database with a pool of `max_connections`; `Ok(None)` as for [`test_database`].
pub async fn test_store(max_connections: u32) -> Result<Option<PgStore>, HarnessError> {
    let Some((_, options)) = test_database().await? else {
        return Ok(None);
    };
    PgStore::connect_with(options, max_connections)
        .await
        .map(Some)
        .map_err(HarnessError::Store)
}
