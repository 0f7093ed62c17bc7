//! Templates as warmpool applies them: what is built (which creates a new version when it changes) and the pool
//! settings (which change in place on the active version).
//!
//! A [`TemplateSpec`] is the validated form of a `[[templates]]` entry of the config file or the body of
//! `PUT /api/v1/templates/{name}`. [`TemplateSpec::build_definition`] extracts exactly the part whose change makes a
//! new template version (provisioner, command, timeout, revision, parameters, the set of presets and their parameter
//! values); everything else (`instances`, `ttl`, `scheduling`, `max_workspaces`, `claim_build`) is applied in place.
//! Reading and validating the TOML/JSON forms happens at the edges; this module holds the model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::schedule::Scheduling;

/// How builds of a template run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionerKind {
    /// An external command, run without a shell (SPEC section 5).
    Exec,
}

/// One template parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterSpec {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub sensitive: bool,
}

/// A preset's pool: how many prebuilds, for how long, on which schedule. Changes in place.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolSpec {
    /// `None` with no scheduling: the preset has no pool.
    pub instances: Option<u32>,
    /// `None` or zero: no TTL.
    pub ttl: Option<Duration>,
    pub scheduling: Option<Scheduling>,
}

/// One preset of a template.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetSpec {
    pub name: String,
    /// Fixed parameter values (part of what is built).
    pub parameters: BTreeMap<String, String>,
    pub pool: PoolSpec,
}

/// A validated template.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSpec {
    pub name: String,
    pub provisioner: ProvisionerKind,
    /// argv; `command[0]` already resolved against the config file's directory when it contains `/`.
    pub command: Vec<String>,
    pub timeout: Duration,
    pub revision: Option<String>,
    /// Quota: live (not deleted) workspaces of this template, pooled and claimed.
    pub max_workspaces: Option<u32>,
    /// A claim runs a `start` build with the new owner.
    pub claim_build: bool,
    pub parameters: Vec<ParameterSpec>,
    pub presets: Vec<PresetSpec>,
}

/// The part of a template whose change creates a new version. Stored with each version as canonical JSON and
/// compared for equality (field order is fixed by this type, preset parameters are sorted by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDefinition {
    pub provisioner: ProvisionerKind,
    pub command: Vec<String>,
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub parameters: Vec<ParameterSpec>,
    /// Preset name → its parameter values.
    pub presets: BTreeMap<String, BTreeMap<String, String>>,
}

impl TemplateSpec {
    pub fn build_definition(&self) -> BuildDefinition {
        BuildDefinition {
            provisioner: self.provisioner,
            command: self.command.clone(),
            timeout: self.timeout,
            revision: self.revision.clone(),
            parameters: self.parameters.clone(),
            presets: self
                .presets
                .iter()
                .map(|p| (p.name.clone(), p.parameters.clone()))
                .collect(),
        }
    }

    /// The required parameters that a preset gives no value for and that have no default: a preset with any
    /// of these can never build (`validation_failed`).
    pub fn missing_required(&self, preset: &PresetSpec) -> Vec<String> {
        self.parameters
            .iter()
            .filter(|p| {
                p.required && p.default.is_none() && !preset.parameters.contains_key(&p.name)
            })
            .map(|p| p.name.clone())
            .collect()
    }
}

/// The environment variable a parameter reaches the provisioner as: `WARMPOOL_PARAM_` + the name upper-cased,
/// every non-alphanumeric character as `_`.
pub fn parameter_env_name(name: &str) -> String {
    let mut env = String::with_capacity(15 + name.len());
    env.push_str("WARMPOOL_PARAM_");
    env.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    env
}
