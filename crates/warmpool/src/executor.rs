//! The executor: carries out one preset's planned actions against the store, each write its own short
//! transaction. It makes no decisions the planner did not make; it only guards against the world having moved
//! since the snapshot (a prebuild claimed meanwhile, a build already in progress, a version replaced).
//!
//! Creation follows the seed's backoff, made durable: every failed creation attempt (the database refused it, or
//! the template's `max_workspaces` quota is full) increments the preset's persisted failure record, and every
//! successful one clears it (the store does that in the creating transaction). As in the seed, a `create N` makes
//! all N attempts; the record holds creation from the next tick on, which the planner decides. A preset that can
//! never build — a required parameter without a value — is stored as `validation_failed` when its version is
//! created (the store knows both parameter lists then, and they never change), so the planner holds its creates
//! until a new version; the executor never re-checks it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tracing::{debug, error, info, warn};
use warmpool_core::plan::{Action, PresetPlan};
use warmpool_store::{Store, StoreError};

/// What executing one preset's plan did.
#[derive(Debug, Default, Clone)]
pub struct PresetResult {
    /// Per action type (`create`, `delete`, ...): how many prebuilds or writes it touched.
    pub done: BTreeMap<&'static str, u64>,
    /// Errors, each a whole cause chain on one line.
    pub errors: Vec<String>,
    /// Something was written (a tick is worth triggering again once builds finish).
    pub wrote: bool,
}

/// An error with its whole cause chain, on one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Executes `plan.actions` in order. Errors are collected, logged once here with their cause chain, and never stop
/// the other actions.
pub async fn execute_preset<S: Store>(
    store: &S,
    plan: &PresetPlan,
    now: DateTime<Utc>,
) -> PresetResult {
    let mut result = PresetResult::default();
    let preset = &plan.id;
    let fail = |result: &mut PresetResult, what: &str, err: &StoreError| {
        let line = format!("{}/{}: {what}: {}", plan.template, plan.preset, chain(err));
        error!(template = %plan.template, preset = %plan.preset, error = %line, "action failed");
        result.errors.push(line);
    };
    for action in &plan.actions {
        match action {
            Action::SetStatus { status } => {
                match store.set_preset_status(preset, *status, now).await {
                    Ok(()) => {
                        info!(template = %plan.template, preset = %plan.preset, status = status.as_str(), "preset status changed");
                        *result.done.entry("set_status").or_default() += 1;
                        result.wrote = true;
                    }
                    Err(err) => fail(&mut result, "set status", &err),
                }
            }
            Action::Backoff { until } => {
                warn!(template = %plan.template, preset = %plan.preset, until = %until, "backing off after failed builds");
                *result.done.entry("backoff").or_default() += 1;
            }
            Action::CancelPending => match store.cancel_pending_prebuilds(preset, now).await {
                Ok(canceled) => {
                    if !canceled.is_empty() {
                        info!(template = %plan.template, preset = %plan.preset, count = canceled.len(), "canceled pending builds of an inactive version");
                        result.wrote = true;
                    }
                    *result.done.entry("cancel_pending").or_default() += canceled.len() as u64;
                }
                Err(err) => fail(&mut result, "cancel pending", &err),
            },
            Action::Delete { workspaces, reason } => {
                for id in workspaces {
                    match store.delete_prebuild(id, now).await {
                        Ok(_) => {
                            info!(template = %plan.template, preset = %plan.preset, workspace = %id, reason = reason.as_str(), "deleting prebuild");
                            *result.done.entry("delete").or_default() += 1;
                            result.wrote = true;
                        }
                        Err(StoreError::NotPrebuild(_)) => {
                            info!(workspace = %id, "not deleted: claimed since the snapshot");
                        }
                        Err(StoreError::Conflict(_)) => {
                            debug!(workspace = %id, "not deleted: a build is in progress");
                        }
                        Err(err) => fail(&mut result, &format!("delete {id}"), &err),
                    }
                }
            }
            Action::Create { count } => {
                // Defend against a plan that asks for more than the target (it never should).
                let count = (*count).min(plan.state.desired);
                for _ in 0..count {
                    match store.create_prebuild(preset, now).await {
                        Ok(created) => {
                            info!(template = %plan.template, preset = %plan.preset, workspace = %created.workspace.id, "creating prebuild");
                            *result.done.entry("create").or_default() += 1;
                            result.wrote = true;
                        }
                        Err(StoreError::Inactive(_)) => {
                            info!(template = %plan.template, preset = %plan.preset, "not created: the version changed since the snapshot");
                            break;
                        }
                        Err(err) => {
                            fail(&mut result, "create prebuild", &err);
                            if let Err(record) = store.record_creation_failure(preset, now).await {
                                fail(&mut result, "record the creation failure", &record);
                            }
                            result.wrote = true;
                            // As in the seed, the remaining attempts of this action are still made: each
                            // failure adds one to the record and a success clears it. The record holds
                            // creation from the next tick on.
                        }
                    }
                }
            }
        }
    }
    result
}
