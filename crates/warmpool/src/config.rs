//! The configuration file (SPEC section 4): reading, validation, defaults.
//!
//! Reading is strict: unknown keys are errors, and every error names the file, the line and the key
//! (`warmpool.toml:14: templates[0].presets[0].ttl: invalid duration "1w" ...`). Shape errors come from serde (with
//! `deny_unknown_fields` and `serde_path_to_error`, so the key path is known); semantic errors come from validation,
//! and their line is found by walking the spanned TOML document along the key path. Relative paths (the database,
//! `data_dir`, a `command[0]` containing `/`) are resolved against the config file's directory. Nothing here
//! starts anything: `warmpool check` and `serve` share this code.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use warmpool_core::duration::Duration;
use warmpool_core::model::PlannerConfig;
use warmpool_core::template::TemplateSpec;

use crate::template_input::{
    FieldError, RawTemplate, count_field, duration_field, is_valid_owner_name, validate_template,
};

/// A configuration that could not be used: where, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `file:line: key: message`.
    #[error("{}:{line}: {}{message}", file.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEvent {
    HardLimited,
    ValidationFailed,
    Backoff,
    Recovered,
    PoolEmpty,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    reconciler: RawReconciler,
    #[serde(default)]
    provisioner: RawProvisioner,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    notifications: RawNotifications,
    #[serde(default)]
    templates: Vec<RawTemplate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    database: Option<String>,
    data_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconciler {
    interval: Option<String>,
    backoff_interval: Option<String>,
    backoff_lookback: Option<String>,
    failure_hard_limit: Option<i64>,
    preset_concurrency: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvisioner {
    workers: Option<i64>,
    lease: Option<String>,
    kill_grace: Option<String>,
    delete_retry: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Role,
    sha256: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    #[serde(default)]
    events: Option<Vec<NotificationEvent>>,
    pool_empty_after: Option<String>,
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database: Database,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub interval: Duration,
    pub planner: PlannerConfig,
    pub preset_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    pub workers: usize,
    pub lease: Duration,
    pub kill_grace: Duration,
    pub delete_retry: Duration,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub events: Vec<NotificationEvent>,
    pub pool_empty_after: Duration,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub reconciler: ReconcilerConfig,
    pub provisioner: ProvisionerConfig,
    pub tokens: Vec<TokenConfig>,
    pub webhooks: Vec<WebhookConfig>,
    pub templates: Vec<TemplateSpec>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_DATABASE: &str = "sqlite://warmpool-data/warmpool.db";
pub const DEFAULT_DATA_DIR: &str = "warmpool-data";

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Splits `templates[0].presets[1].ttl` into its steps.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_owned()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                segs.push(Seg::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    segs
}

/// The span of the deepest element of `path` found in the document.
fn span_of(root: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let mut best = None;
    let mut table: Option<&DeTable<'_>> = Some(root);
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    for seg in path {
        let value = match (seg, table, array) {
            (Seg::Key(key), Some(t), _) => {
                let (k, v) = t
                    .iter()
                    .find(|(k, _)| k.get_ref().as_ref() == key.as_str())?;
                best = Some(k.span());
                v
            }
            (Seg::Index(i), _, Some(a)) => a.get(*i)?,
            _ => return best,
        };
        if matches!(seg, Seg::Index(_)) {
            best = Some(value.span());
        }
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    best
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

fn path_to_string(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// Reads and validates a configuration file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse(file, &text)
}

/// Validates configuration text as if read from `file` (relative paths resolve against its directory).
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let invalid = |line: usize, key: String, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        line,
        key,
        message,
    };
    let document = DeTable::parse(text).map_err(|err| {
        let line = err.span().map_or(1, |s| line_of(text, s.start));
        invalid(line, String::new(), err.message().to_owned())
    })?;
    let deserializer = toml::Deserializer::parse(text).map_err(|err| {
        let line = err.span().map_or(1, |s| line_of(text, s.start));
        invalid(line, String::new(), err.message().to_owned())
    })?;
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = path_to_string(err.path());
        let inner = err.inner();
        let span = inner
            .span()
            .or_else(|| span_of(document.get_ref(), &parse_path(&key)));
        let line = span.map_or(1, |s| line_of(text, s.start));
        invalid(line, key, inner.message().to_owned())
    })?;
    let base_dir = file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    // Builds run in their state directories, so every resolved path must be absolute.
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_owned());
    validate(file, &base_dir, raw).map_err(|err| {
        let line = span_of(document.get_ref(), &parse_path(&err.path))
            .map_or(1, |s| line_of(text, s.start));
        invalid(line, err.path, err.message)
    })
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn parse_database(base: &Path, url: &str) -> Result<Database, FieldError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(FieldError::new(
                "server.database",
                "sqlite:// needs a file path",
            ));
        }
        Ok(Database::Sqlite(resolve(base, path)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Database::Postgres(url.to_owned()))
    } else {
        Err(FieldError::new(
            "server.database",
            format!("{url:?} is neither sqlite://PATH nor postgres://..."),
        ))
    }
}

fn parse_sha256(path: &str, hex: &str) -> Result<[u8; 32], FieldError> {
    let bad = || {
        FieldError::new(
            path,
            "must be 64 hexadecimal characters (the SHA-256 of the token)",
        )
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

fn optional_duration(
    path: &str,
    text: Option<&String>,
    default: Duration,
) -> Result<Duration, FieldError> {
    text.map_or(Ok(default), |t| duration_field(path, t))
}

fn validate(file: &Path, base: &Path, raw: RawConfig) -> Result<Config, FieldError> {
    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        FieldError::new(
            "server.listen",
            format!("{listen_text:?} is not an address like 127.0.0.1:7080"),
        )
    })?;
    let database = parse_database(
        base,
        raw.server.database.as_deref().unwrap_or(DEFAULT_DATABASE),
    )?;
    let data_dir = resolve(
        base,
        raw.server.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR),
    );

    let level = raw.log.level.unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(FieldError::new(
            "log.level",
            format!("{level:?} is not a level or filter (e.g. \"info\")"),
        ));
    }

    let defaults = PlannerConfig::default();
    let r = &raw.reconciler;
    let interval = optional_duration(
        "reconciler.interval",
        r.interval.as_ref(),
        Duration::from_secs(30),
    )?;
    if interval.is_zero() {
        return Err(FieldError::new(
            "reconciler.interval",
            "must be greater than 0s",
        ));
    }
    let planner = PlannerConfig {
        backoff_interval: optional_duration(
            "reconciler.backoff_interval",
            r.backoff_interval.as_ref(),
            defaults.backoff_interval,
        )?,
        backoff_lookback: optional_duration(
            "reconciler.backoff_lookback",
            r.backoff_lookback.as_ref(),
            defaults.backoff_lookback,
        )?,
        failure_hard_limit: r
            .failure_hard_limit
            .map(|n| count_field("reconciler.failure_hard_limit", n, 1000))
            .transpose()?
            .unwrap_or(defaults.failure_hard_limit),
    };
    let preset_concurrency = r
        .preset_concurrency
        .map(|n| count_field("reconciler.preset_concurrency", n, 64))
        .transpose()?
        .unwrap_or(5) as usize;
    if preset_concurrency == 0 {
        return Err(FieldError::new(
            "reconciler.preset_concurrency",
            "must be at least 1",
        ));
    }

    let p = &raw.provisioner;
    let provisioner = ProvisionerConfig {
        workers: p
            .workers
            .map(|n| count_field("provisioner.workers", n, 256))
            .transpose()?
            .unwrap_or(4) as usize,
        lease: optional_duration(
            "provisioner.lease",
            p.lease.as_ref(),
            Duration::from_secs(30),
        )?,
        kill_grace: optional_duration(
            "provisioner.kill_grace",
            p.kill_grace.as_ref(),
            Duration::from_secs(10),
        )?,
        delete_retry: optional_duration(
            "provisioner.delete_retry",
            p.delete_retry.as_ref(),
            Duration::from_secs(30),
        )?,
    };
    if provisioner.lease.as_millis() < 300 {
        return Err(FieldError::new(
            "provisioner.lease",
            "must be at least 300ms",
        ));
    }
    if provisioner.delete_retry.is_zero() {
        return Err(FieldError::new(
            "provisioner.delete_retry",
            "must be greater than 0s",
        ));
    }

    let mut tokens: Vec<TokenConfig> = Vec::with_capacity(raw.auth.tokens.len());
    for (i, t) in raw.auth.tokens.iter().enumerate() {
        let path = format!("auth.tokens[{i}]");
        if !is_valid_owner_name(&t.name) || t.name == warmpool_core::PREBUILDS_OWNER {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!(
                    "invalid token name {:?} (a-z, 0-9, '.', '_', '-'; not \"prebuilds\")",
                    t.name
                ),
            ));
        }
        if tokens.iter().any(|other| other.name == t.name) {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!("duplicate token name {:?}", t.name),
            ));
        }
        tokens.push(TokenConfig {
            name: t.name.clone(),
            role: t.role,
            sha256: parse_sha256(&format!("{path}.sha256"), &t.sha256)?,
        });
    }
    if tokens.is_empty() && !listen.ip().is_loopback() {
        return Err(FieldError::new(
            "server.listen",
            format!(
                "{listen} is not a loopback address; without [[auth.tokens]] warmpool only listens on loopback"
            ),
        ));
    }

    let mut webhooks = Vec::with_capacity(raw.notifications.webhooks.len());
    for (i, w) in raw.notifications.webhooks.iter().enumerate() {
        let path = format!("notifications.webhooks[{i}]");
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            return Err(FieldError::new(
                format!("{path}.url"),
                format!("{:?} is not an http(s) URL", w.url),
            ));
        }
        webhooks.push(WebhookConfig {
            url: w.url.clone(),
            events: w.events.clone().unwrap_or_else(|| {
                vec![
                    NotificationEvent::HardLimited,
                    NotificationEvent::ValidationFailed,
                    NotificationEvent::Backoff,
                    NotificationEvent::Recovered,
                    NotificationEvent::PoolEmpty,
                ]
            }),
            pool_empty_after: optional_duration(
                &format!("{path}.pool_empty_after"),
                w.pool_empty_after.as_ref(),
                Duration::from_secs(300),
            )?,
        });
    }

    let mut templates: Vec<TemplateSpec> = Vec::with_capacity(raw.templates.len());
    for (i, t) in raw.templates.iter().enumerate() {
        let prefix = format!("templates[{i}]");
        let spec = validate_template(t, None, Some(base)).map_err(|e| e.under(&prefix))?;
        if templates.iter().any(|other| other.name == spec.name) {
            return Err(FieldError::new(
                format!("{prefix}.name"),
                format!("duplicate template {:?}", spec.name),
            ));
        }
        templates.push(spec);
    }

    Ok(Config {
        file: file.to_owned(),
        server: ServerConfig {
            listen,
            database,
            data_dir,
        },
        log: LogConfig {
            format: raw.log.format.unwrap_or_default(),
            level,
        },
        reconciler: ReconcilerConfig {
            interval,
            planner,
            preset_concurrency,
        },
        provisioner,
        tokens,
        webhooks,
        templates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_split_into_steps() {
        assert_eq!(
            parse_path("templates[0].presets[12].scheduling.schedules[1].cron"),
            vec![
                Seg::Key("templates".into()),
                Seg::Index(0),
                Seg::Key("presets".into()),
                Seg::Index(12),
                Seg::Key("scheduling".into()),
                Seg::Key("schedules".into()),
                Seg::Index(1),
                Seg::Key("cron".into()),
            ]
        );
        assert_eq!(parse_path(""), vec![]);
    }
}
