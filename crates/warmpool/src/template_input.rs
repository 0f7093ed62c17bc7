//! The outside form of a template: the `[[templates]]` table of the config file and the JSON body of
//! `PUT /api/v1/templates/{name}` (the same fields), validated into a [`TemplateSpec`].
//!
//! Every problem is reported as a [`FieldError`] whose path is relative to the template (`presets[1].ttl`); the
//! config loader prefixes it with `templates[i]` and finds its line, the API puts it in a 400 answer. Validation
//! never panics and checks everything a build would otherwise trip over later: names, ranges, durations, cron
//! patterns, time zones, overlapping schedules, unknown or colliding parameters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warmpool_core::duration::Duration;
use warmpool_core::model::MAX_INSTANCES;
use warmpool_core::schedule::{Cron, Schedule, Scheduling, SchedulingError, parse_timezone};
use warmpool_core::template::{
    ParameterSpec, PoolSpec, PresetSpec, ProvisionerKind, TemplateSpec, parameter_env_name,
};

/// A problem with one field: its path (`presets[0].scheduling.schedules[1].cron`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error, under `prefix` (`templates[0]`).
    pub fn under(self, prefix: &str) -> Self {
        let path = if self.path.is_empty() {
            prefix.to_owned()
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        FieldError { path, ..self }
    }
}

/// Default build timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A template as the config file's `[[templates]]` table and the body of `PUT /api/v1/templates/{name}` give
/// it. Unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TemplateInput)]
pub struct RawTemplate {
    /// Required in the config file; in an API body it may be left out (the path names the template).
    #[serde(default)]
    pub name: Option<String>,
    /// `exec` (the default).
    #[serde(default)]
    pub provisioner: Option<String>,
    /// Required: argv, never passed through a shell. Through the API `command[0]` is absolute or a bare name.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// A duration (`30m`, the default; units `d`, `h`, `m`, `s`, `ms` in descending order).
    #[serde(default)]
    #[schema(example = "30m")]
    pub timeout: Option<String>,
    /// Change it to force a new version when the script changed.
    #[serde(default)]
    pub revision: Option<String>,
    /// Quota of live workspaces of this template, pooled and claimed; changes in place.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000000)]
    pub max_workspaces: Option<i64>,
    /// A claim runs a `start` build with the new owner; changes in place.
    #[serde(default)]
    pub claim_build: Option<bool>,
    #[serde(default)]
    pub parameters: Vec<RawParameter>,
    #[serde(default)]
    pub presets: Vec<RawPreset>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ParameterInput)]
pub struct RawParameter {
    pub name: String,
    #[serde(default)]
    pub required: Option<bool>,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub sensitive: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PresetInput)]
pub struct RawPreset {
    pub name: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Desired prebuilds; absent and no `scheduling` means no pool. Changes in place.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    pub instances: Option<i64>,
    /// A prebuild older than this is replaced (a duration; `0s` means never). Changes in place.
    #[serde(default)]
    #[schema(example = "24h")]
    pub ttl: Option<String>,
    /// Schedules that raise or lower `instances` as time ranges in a time zone. Changes in place.
    #[serde(default)]
    pub scheduling: Option<RawScheduling>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SchedulingInput)]
pub struct RawScheduling {
    /// Required: an IANA time zone name.
    #[serde(default)]
    #[schema(example = "Europe/Berlin")]
    pub timezone: Option<String>,
    #[serde(default)]
    pub schedules: Vec<RawSchedule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ScheduleInput)]
pub struct RawSchedule {
    /// `minute hour day-of-month month day-of-week`; the minute field is `*`; no steps or names.
    #[schema(example = "* 8-18 * * 1-5")]
    pub cron: String,
    #[schema(minimum = 0, maximum = 1000)]
    pub instances: i64,
}

/// `[a-z0-9][a-z0-9-]{0,62}`: template and preset names.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// `[a-z0-9][a-z0-9._-]{0,62}`: owner and workspace names.
pub fn is_valid_owner_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

fn name_field(path: &str, name: &str, what: &str) -> Result<(), FieldError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(FieldError::new(
            path,
            format!(
                "invalid {what} name {name:?} (1-63 characters: a-z, 0-9 and '-', starting with a letter or digit)"
            ),
        ))
    }
}

pub fn duration_field(path: &str, text: &str) -> Result<Duration, FieldError> {
    Duration::parse(text).map_err(|err| FieldError::new(path, err.to_string()))
}

pub fn count_field(path: &str, value: i64, max: u32) -> Result<u32, FieldError> {
    if value < 0 {
        return Err(FieldError::new(
            path,
            format!("must not be negative, got {value}"),
        ));
    }
    u32::try_from(value)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| FieldError::new(path, format!("{value} is out of range 0-{max}")))
}

/// Validates a template. `name` is the template's name when the caller knows it (the API path); otherwise the
/// body's `name` is required. A `command[0]` containing `/` is resolved against `base_dir` when given.
pub fn validate_template(
    raw: &RawTemplate,
    name: Option<&str>,
    base_dir: Option<&Path>,
) -> Result<TemplateSpec, FieldError> {
    let name = match (name, raw.name.as_deref()) {
        (Some(path_name), Some(body_name)) if path_name != body_name => {
            return Err(FieldError::new(
                "name",
                format!(
                    "{body_name:?} does not match the template named in the path, {path_name:?}"
                ),
            ));
        }
        (Some(name), _) | (None, Some(name)) => name.to_owned(),
        (None, None) => return Err(FieldError::new("name", "required")),
    };
    name_field("name", &name, "template")?;

    let provisioner = match raw.provisioner.as_deref() {
        None | Some("exec") => ProvisionerKind::Exec,
        Some(other) => {
            return Err(FieldError::new(
                "provisioner",
                format!("unknown provisioner {other:?} (expected \"exec\")"),
            ));
        }
    };
    let mut command = match &raw.command {
        Some(command) if !command.is_empty() => command.clone(),
        Some(_) => return Err(FieldError::new("command", "must not be empty")),
        None => return Err(FieldError::new("command", "required")),
    };
    if command[0].is_empty() {
        return Err(FieldError::new("command[0]", "must not be empty"));
    }
    if let Some(i) = command.iter().position(|arg| arg.contains('\0')) {
        return Err(FieldError::new(
            format!("command[{i}]"),
            "must not contain NUL",
        ));
    }
    if command[0].contains('/')
        && let Some(base) = base_dir
    {
        let program = Path::new(&command[0]);
        if program.is_relative() {
            command[0] = base.join(program).to_string_lossy().into_owned();
        }
    }
    let timeout = match &raw.timeout {
        Some(text) => duration_field("timeout", text)?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        return Err(FieldError::new("timeout", "must be greater than 0s"));
    }
    let max_workspaces = raw
        .max_workspaces
        .map(|n| count_field("max_workspaces", n, 1_000_000))
        .transpose()?;

    let mut parameters = Vec::with_capacity(raw.parameters.len());
    let mut env_names: HashMap<String, String> = HashMap::new();
    for (i, p) in raw.parameters.iter().enumerate() {
        let path = format!("parameters[{i}]");
        let valid = !p.name.is_empty()
            && p.name.len() <= 63
            && p.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!(
                    "invalid parameter name {:?} (1-63 characters: letters, digits, '_' and '-')",
                    p.name
                ),
            ));
        }
        if let Some(other) = env_names.insert(parameter_env_name(&p.name), p.name.clone()) {
            let message = if other == p.name {
                format!("duplicate parameter {:?}", p.name)
            } else {
                format!(
                    "parameters {other:?} and {:?} collide: both reach the provisioner as {}",
                    p.name,
                    parameter_env_name(&p.name)
                )
            };
            return Err(FieldError::new(format!("{path}.name"), message));
        }
        parameters.push(ParameterSpec {
            name: p.name.clone(),
            required: p.required.unwrap_or(false),
            default: p.default.clone(),
            sensitive: p.sensitive.unwrap_or(false),
        });
    }
    let declared: HashSet<&str> = parameters.iter().map(|p| p.name.as_str()).collect();

    let mut presets = Vec::with_capacity(raw.presets.len());
    let mut preset_names = HashSet::new();
    for (i, p) in raw.presets.iter().enumerate() {
        let path = format!("presets[{i}]");
        name_field(&format!("{path}.name"), &p.name, "preset")?;
        if !preset_names.insert(p.name.as_str()) {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!("duplicate preset {:?}", p.name),
            ));
        }
        if let Some(unknown) = p.parameters.keys().find(|k| !declared.contains(k.as_str())) {
            return Err(FieldError::new(
                format!("{path}.parameters.{unknown}"),
                "not a parameter of the template",
            ));
        }
        presets.push(PresetSpec {
            name: p.name.clone(),
            parameters: p.parameters.clone(),
            pool: validate_pool(&path, p)?,
        });
    }

    Ok(TemplateSpec {
        name,
        provisioner,
        command,
        timeout,
        revision: raw.revision.clone(),
        max_workspaces,
        claim_build: raw.claim_build.unwrap_or(false),
        parameters,
        presets,
    })
}

fn validate_pool(path: &str, p: &RawPreset) -> Result<PoolSpec, FieldError> {
    let instances = p
        .instances
        .map(|n| count_field(&format!("{path}.instances"), n, MAX_INSTANCES))
        .transpose()?;
    let ttl = p
        .ttl
        .as_deref()
        .map(|t| duration_field(&format!("{path}.ttl"), t))
        .transpose()?
        .filter(|t| !t.is_zero());
    let scheduling = match &p.scheduling {
        None => None,
        Some(s) => {
            let spath = format!("{path}.scheduling");
            let mut schedules = Vec::with_capacity(s.schedules.len());
            for (j, raw) in s.schedules.iter().enumerate() {
                let jpath = format!("{spath}.schedules[{j}]");
                let cron = Cron::parse(&raw.cron)
                    .map_err(|e| FieldError::new(format!("{jpath}.cron"), e.to_string()))?;
                let instances =
                    count_field(&format!("{jpath}.instances"), raw.instances, MAX_INSTANCES)?;
                schedules.push(Schedule {
                    cron_text: raw.cron.clone(),
                    cron,
                    instances,
                });
            }
            let timezone = match s.timezone.as_deref() {
                Some(tz) if !tz.is_empty() => parse_timezone(tz)
                    .map_err(|e| FieldError::new(format!("{spath}.timezone"), e.to_string()))?,
                _ => return Err(FieldError::new(format!("{spath}.timezone"), "required")),
            };
            Some(
                Scheduling::new(timezone, schedules).map_err(|err| match err {
                    SchedulingError::Overlap { index, .. } => {
                        FieldError::new(format!("{spath}.schedules[{index}]"), err.to_string())
                    }
                    SchedulingError::UnknownTimeZone(_) => {
                        FieldError::new(format!("{spath}.timezone"), err.to_string())
                    }
                })?,
            )
        }
    };
    Ok(PoolSpec {
        instances,
        ttl,
        scheduling,
    })
}

/// The outside form of a validated template (what `warmpool apply` sends): the inverse of [`validate_template`].
pub fn raw_from_spec(spec: &TemplateSpec) -> RawTemplate {
    RawTemplate {
        name: Some(spec.name.clone()),
        provisioner: Some(
            match spec.provisioner {
                ProvisionerKind::Exec => "exec",
            }
            .to_owned(),
        ),
        command: Some(spec.command.clone()),
        timeout: Some(spec.timeout.to_string()),
        revision: spec.revision.clone(),
        max_workspaces: spec.max_workspaces.map(i64::from),
        claim_build: Some(spec.claim_build),
        parameters: spec
            .parameters
            .iter()
            .map(|p| RawParameter {
                name: p.name.clone(),
                required: Some(p.required),
                default: p.default.clone(),
                sensitive: Some(p.sensitive),
            })
            .collect(),
        presets: spec
            .presets
            .iter()
            .map(|p| RawPreset {
                name: p.name.clone(),
                parameters: p.parameters.clone(),
                instances: p.pool.instances.map(i64::from),
                ttl: p.pool.ttl.map(|t| t.to_string()),
                scheduling: p.pool.scheduling.as_ref().map(|s| RawScheduling {
                    timezone: Some(s.timezone().name().to_owned()),
                    schedules: s
                        .schedules()
                        .iter()
                        .map(|s| RawSchedule {
                            cron: s.cron_text.clone(),
                            instances: i64::from(s.instances),
                        })
                        .collect(),
                }),
            })
            .collect(),
    }
}
