// The implementation both backends share, `include!`d by `sqlite.rs` and `postgres.rs` (their module docs describe
// it). One text, compiled once per backend against that backend's concrete sqlx types, so that the SQL and the
// row mapping exist once while each backend keeps its own transaction discipline.
//
// The including module provides:
// - `Db` (the sqlx database) and `ThisStore` (the store type, with an `inner: Arc<Inner>` field);
// - `Inner` with `pool`, `begin_write()` (a `WriteTx`: `conn()`, `commit()`) and `begin_snapshot(conn)`;
// - `for_update!()`: " FOR UPDATE" on PostgreSQL, "" on SQLite (whose writers are serialized by BEGIN IMMEDIATE);
// - `skip_locked!()`: " FOR UPDATE SKIP LOCKED" on PostgreSQL, "" on SQLite;
// - `claim_impl`, `try_lock_impl` and `ThisLock`, which differ between the backends.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;
use warmpool_core::PREBUILDS_OWNER;
use warmpool_core::ids::{PresetId, WorkspaceId};
use warmpool_core::model::{
    CreationFailures, JobStatus, LatestBuild, PlannerConfig, PresetSnapshot, PresetStatus,
    Settings, Snapshot, Transition, WorkspaceSnapshot,
};
use warmpool_core::template::{BuildDefinition, ParameterSpec, PoolSpec, TemplateSpec};

use crate::error::{DbContext, StoreError, is_unique_violation};
use crate::store::{ReconcileLock, Store, StoreResult};
use crate::types::*;
use crate::util::*;

type DbConn = <Db as sqlx::Database>::Connection;
type DbRow = <Db as sqlx::Database>::Row;

const PAUSED_SETTING: &str = "reconciliation_paused";
const LAST_TICK: &str = "last";
const CLAIM_EVENTS_KEPT_MS: i64 = 7 * 24 * 3_600_000;
const IDEMPOTENCY_KEPT_MS: i64 = 24 * 3_600_000;

fn col<'r, T>(row: &'r DbRow, index: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
{
    row.try_get::<T, _>(index).db("reading a column")
}

// ---------------------------------------------------------------------------------------------------------------
// Snapshot

// The snapshot's presets: every preset of an active version with a pool (read directly, through the templates'
// active versions), plus the presets that live prebuilds still point at (inactive versions, deleted templates),
// read by id once the workspaces are known. Presets of old versions without prebuilds are never looked at.
macro_rules! snapshot_preset_columns {
    () => {
        "SELECT p.id, t.name, v.name, p.name, \
                CASE WHEN t.deleted_at IS NULL AND t.active_version_id = p.version_id THEN TRUE ELSE FALSE END, \
                p.instances, p.ttl_ms, p.scheduling_timezone, p.status, p.invalidated_at, \
                p.creation_failures, p.last_creation_failure_at, COALESCE(s.paused, FALSE), v.number \
         FROM presets p \
         JOIN templates t ON t.id = p.template_id \
         JOIN template_versions v ON v.id = p.version_id \
         LEFT JOIN preset_settings s ON s.template_name = t.name AND s.preset_name = p.name "
    };
}

const SNAPSHOT_ACTIVE_PRESETS: &str = concat!(
    snapshot_preset_columns!(),
    "WHERE t.deleted_at IS NULL AND p.version_id = t.active_version_id \
       AND (p.instances IS NOT NULL OR p.scheduling_timezone IS NOT NULL)"
);

const SNAPSHOT_PRESETS_BY_ID: &str = concat!(snapshot_preset_columns!(), "WHERE p.id IN (");

const SNAPSHOT_SCHEDULES_BY_PRESET: &str =
    "SELECT preset_id, cron, instances, position FROM preset_schedules WHERE preset_id IN (";

// No join: a prebuild's builds all run its preset's version (no store operation moves a workspace to another
// version), so its latest build is on the active version exactly when its preset is active, which the presets
// query already says. One pass over the live prebuilds, reading only their own row.
const SNAPSHOT_WORKSPACES: &str = "SELECT w.id, w.preset_id, w.created_at, w.latest_build_number, \
            w.latest_transition, w.latest_status, w.latest_build_created_at, w.latest_picked_up \
     FROM workspaces w \
     WHERE w.owner = 'prebuilds' AND w.deleted_at IS NULL AND w.preset_id IS NOT NULL";

/// `prefix` (ending in `IN (`) for every id, in chunks that stay within both backends' parameter limits.
async fn fetch_by_ids(
    conn: &mut DbConn,
    prefix: &'static str,
    ids: &[&str],
    context: &'static str,
) -> StoreResult<Vec<DbRow>> {
    let mut rows = Vec::new();
    for chunk in ids.chunks(500) {
        let mut query = sqlx::QueryBuilder::<Db>::new(prefix);
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        query.push(")");
        rows.extend(query.build().fetch_all(&mut *conn).await.db(context)?);
    }
    Ok(rows)
}

async fn read_settings(conn: &mut DbConn) -> StoreResult<Settings> {
    let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
        .bind(PAUSED_SETTING)
        .fetch_optional(&mut *conn)
        .await
        .db("reading settings")?;
    Ok(Settings {
        reconciliation_paused: value.as_deref() == Some("true"),
    })
}

/// The planner's snapshot, read on a connection that is already inside the snapshot transaction: the active
/// presets, the live prebuilds, then by id the presets those point at that are not active, and the schedules of
/// the presets that have some.
async fn read_snapshot(
    conn: &mut DbConn,
    now: chrono::DateTime<chrono::Utc>,
    config: PlannerConfig,
) -> StoreResult<Snapshot> {
    let settings = read_settings(conn).await?;
    let mut preset_rows = sqlx::query(SNAPSHOT_ACTIVE_PRESETS)
        .fetch_all(&mut *conn)
        .await
        .db("reading presets")?;
    let mut workspaces = read_prebuilds(conn).await?;

    let mut known: std::collections::HashSet<String> =
        std::collections::HashSet::with_capacity(preset_rows.len());
    for row in &preset_rows {
        known.insert(row.try_get(0).db("reading a preset")?);
    }
    let mut missing: Vec<&str> = workspaces
        .iter()
        .map(|w| w.preset.as_str())
        .filter(|id| !known.contains(*id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        preset_rows
            .extend(fetch_by_ids(conn, SNAPSHOT_PRESETS_BY_ID, &missing, "reading presets").await?);
    }

    let mut scheduled: Vec<String> = Vec::new();
    for row in &preset_rows {
        let timezone: Option<&str> = row.try_get(7).db("reading a preset")?;
        if timezone.is_some() {
            scheduled.push(row.try_get(0).db("reading a preset")?);
        }
    }
    let mut schedules: HashMap<String, Vec<(i64, String, i64)>> = HashMap::new();
    if !scheduled.is_empty() {
        let ids: Vec<&str> = scheduled.iter().map(String::as_str).collect();
        for row in fetch_by_ids(
            conn,
            SNAPSHOT_SCHEDULES_BY_PRESET,
            &ids,
            "reading preset schedules",
        )
        .await?
        {
            let preset: String = row.try_get(0).db("reading a schedule")?;
            let cron: String = row.try_get(1).db("reading a schedule")?;
            let instances: i64 = row.try_get(2).db("reading a schedule")?;
            let position: i64 = row.try_get(3).db("reading a schedule")?;
            schedules
                .entry(preset)
                .or_default()
                .push((position, cron, instances));
        }
    }

    let mut presets = Vec::with_capacity(preset_rows.len());
    for row in &preset_rows {
        let id: String = row.try_get(0).db("reading a preset")?;
        let timezone: Option<String> = row.try_get(7).db("reading a preset")?;
        let mut list = schedules.remove(&id).unwrap_or_default();
        list.sort_unstable_by_key(|(position, _, _)| *position);
        let list: Vec<(String, i64)> = list.into_iter().map(|(_, cron, n)| (cron, n)).collect();
        let pool = pool_from_parts(
            row.try_get(5).db("reading a preset")?,
            row.try_get(6).db("reading a preset")?,
            timezone.as_deref(),
            &list,
            &format!("preset {id}"),
        )?;
        let status: String = row.try_get(8).db("reading a preset")?;
        let consecutive: i64 = row.try_get(10).db("reading a preset")?;
        let last_failure: Option<i64> = row.try_get(11).db("reading a preset")?;
        let creation_failures = if consecutive > 0 {
            Some(CreationFailures {
                consecutive: to_u32(consecutive, "preset creation_failures")?,
                last_failure_at: opt_from_ms(last_failure, "preset last_creation_failure_at")?,
            })
        } else {
            None
        };
        let version_number: i64 = row.try_get(13).db("reading a preset")?;
        presets.push((
            version_number,
            PresetSnapshot {
                id: PresetId::new(id),
                template: row.try_get(1).db("reading a preset")?,
                template_version: Some(row.try_get(2).db("reading a preset")?),
                preset: row.try_get(3).db("reading a preset")?,
                active: row.try_get(4).db("reading a preset")?,
                instances: pool.instances,
                ttl: pool.ttl,
                invalidated_at: opt_from_ms(
                    row.try_get(9).db("reading a preset")?,
                    "preset invalidated_at",
                )?,
                scheduling: pool.scheduling,
                status: parse_preset_status(&status)?,
                paused: row.try_get(12).db("reading a preset")?,
                creation_failures,
            },
        ));
    }
    let active: HashMap<&str, bool> = presets
        .iter()
        .map(|(_, p)| (p.id.as_str(), p.active))
        .collect();
    for w in &mut workspaces {
        w.latest_build.active_version = active.get(w.preset.as_str()).copied().unwrap_or(false);
    }
    drop(active);
    // Templates by name, versions by number, presets by name: a stable order for people and for diffs.
    presets.sort_unstable_by(|(va, a), (vb, b)| {
        (a.template.as_str(), *va, a.preset.as_str()).cmp(&(
            b.template.as_str(),
            *vb,
            b.preset.as_str(),
        ))
    });
    workspaces.sort_unstable_by(|a, b| a.id.cmp(&b.id));

    Ok(Snapshot {
        now,
        config,
        settings,
        presets: presets.into_iter().map(|(_, p)| p).collect(),
        workspaces,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Records

macro_rules! workspace_select {
    () => {
        "SELECT w.id, w.name, w.owner, w.template_id, t.name AS template_name, v.name AS version_name, \
                w.preset_id, p.name AS preset_name, w.created_at, w.claimed_at, w.deleted_at, w.outputs, \
                w.latest_build_id, w.latest_build_number, w.latest_transition, w.latest_status, \
                w.latest_build_created_at, w.latest_picked_up \
         FROM workspaces w \
         JOIN templates t ON t.id = w.template_id \
         JOIN template_versions v ON v.id = w.latest_version_id \
         LEFT JOIN presets p ON p.id = w.preset_id "
    };
}

macro_rules! build_select {
    () => {
        "SELECT b.id, b.workspace_id, b.number, b.transition, b.status, v.name AS version_name, b.preset_id, \
                b.initiator, b.is_prebuild, b.is_claim, b.created_at, b.started_at, b.completed_at, b.attempts, \
                b.error, b.not_before \
         FROM builds b JOIN template_versions v ON v.id = b.version_id "
    };
}

fn workspace_from_row(row: &DbRow) -> StoreResult<WorkspaceRecord> {
    let outputs: Option<String> = col(row, "outputs")?;
    let outputs = outputs
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::corrupt(format!("workspace outputs: {e}")))?;
    let transition: String = col(row, "latest_transition")?;
    let status: String = col(row, "latest_status")?;
    Ok(WorkspaceRecord {
        id: WorkspaceId::new(col::<String>(row, "id")?),
        name: col(row, "name")?,
        owner: col(row, "owner")?,
        template_id: TemplateId::new(col::<String>(row, "template_id")?),
        template: col(row, "template_name")?,
        template_version: col(row, "version_name")?,
        preset_id: col::<Option<String>>(row, "preset_id")?.map(PresetId::new),
        preset: col(row, "preset_name")?,
        created_at: from_ms(col(row, "created_at")?, "workspace created_at")?,
        claimed_at: opt_from_ms(col(row, "claimed_at")?, "workspace claimed_at")?,
        deleted_at: opt_from_ms(col(row, "deleted_at")?, "workspace deleted_at")?,
        outputs,
        latest_build: LatestBuildRecord {
            id: BuildId::new(col::<String>(row, "latest_build_id")?),
            number: to_u64(col(row, "latest_build_number")?, "build number")?,
            transition: parse_transition(&transition)?,
            status: parse_job_status(&status)?,
            created_at: from_ms(col(row, "latest_build_created_at")?, "build created_at")?,
            picked_up: col(row, "latest_picked_up")?,
        },
    })
}

fn build_from_row(row: &DbRow) -> StoreResult<BuildRecord> {
    let transition: String = col(row, "transition")?;
    let status: String = col(row, "status")?;
    Ok(BuildRecord {
        id: BuildId::new(col::<String>(row, "id")?),
        workspace_id: WorkspaceId::new(col::<String>(row, "workspace_id")?),
        number: to_u64(col(row, "number")?, "build number")?,
        transition: parse_transition(&transition)?,
        status: parse_job_status(&status)?,
        template_version: col(row, "version_name")?,
        preset_id: col::<Option<String>>(row, "preset_id")?.map(PresetId::new),
        initiator: col(row, "initiator")?,
        is_prebuild: col(row, "is_prebuild")?,
        is_claim: col(row, "is_claim")?,
        created_at: from_ms(col(row, "created_at")?, "build created_at")?,
        started_at: opt_from_ms(col(row, "started_at")?, "build started_at")?,
        completed_at: opt_from_ms(col(row, "completed_at")?, "build completed_at")?,
        attempts: to_u32(col(row, "attempts")?, "build attempts")?,
        error: col(row, "error")?,
        not_before: opt_from_ms(col(row, "not_before")?, "build not_before")?,
    })
}

async fn load_workspace(conn: &mut DbConn, id: &str) -> StoreResult<Option<WorkspaceRecord>> {
    let row = sqlx::query(concat!(workspace_select!(), "WHERE w.id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .db("reading a workspace")?;
    row.as_ref().map(workspace_from_row).transpose()
}

async fn load_build(conn: &mut DbConn, id: &str) -> StoreResult<Option<BuildRecord>> {
    let row = sqlx::query(concat!(build_select!(), "WHERE b.id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .db("reading a build")?;
    row.as_ref().map(build_from_row).transpose()
}

async fn must_load_workspace(conn: &mut DbConn, id: &str) -> StoreResult<WorkspaceRecord> {
    load_workspace(conn, id)
        .await?
        .ok_or_else(|| StoreError::not_found(format!("workspace {id}")))
}

async fn must_load_build(conn: &mut DbConn, id: &str) -> StoreResult<BuildRecord> {
    load_build(conn, id)
        .await?
        .ok_or_else(|| StoreError::not_found(format!("build {id}")))
}

/// Every template (or the one named), with versions, parameters and presets, in six set-based queries.
async fn load_templates(conn: &mut DbConn, name: Option<&str>) -> StoreResult<Vec<TemplateInfo>> {
    let template_rows = sqlx::query(
        "SELECT id, name, active_version_id, max_workspaces, claim_build, applied_by, created_at, updated_at, \
                deleted_at \
         FROM templates t WHERE (CAST($1 AS TEXT) IS NULL OR t.name = $1) ORDER BY t.name",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .db("reading templates")?;
    if template_rows.is_empty() {
        return Ok(Vec::new());
    }
    let version_rows = sqlx::query(
        "SELECT v.id, v.template_id, v.number, v.name, v.definition, v.applied_by, v.created_at \
         FROM template_versions v JOIN templates t ON t.id = v.template_id \
         WHERE (CAST($1 AS TEXT) IS NULL OR t.name = $1) ORDER BY v.template_id, v.number",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .db("reading template versions")?;
    let parameter_rows = sqlx::query(
        "SELECT tp.version_id, tp.name, tp.required, tp.default_value, tp.sensitive \
         FROM template_parameters tp \
         JOIN template_versions v ON v.id = tp.version_id JOIN templates t ON t.id = v.template_id \
         WHERE (CAST($1 AS TEXT) IS NULL OR t.name = $1) ORDER BY tp.version_id, tp.position",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .db("reading template parameters")?;
    let preset_rows = sqlx::query(
        "SELECT p.id, p.version_id, p.name, p.instances, p.ttl_ms, p.scheduling_timezone, p.status, \
                p.invalidated_at, p.creation_failures, p.last_creation_failure_at, \
                COALESCE(s.paused, FALSE) AS paused \
         FROM presets p JOIN templates t ON t.id = p.template_id \
         LEFT JOIN preset_settings s ON s.template_name = t.name AND s.preset_name = p.name \
         WHERE (CAST($1 AS TEXT) IS NULL OR t.name = $1) ORDER BY p.version_id, p.name",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .db("reading presets")?;
    let preset_parameter_rows = sqlx::query(
        "SELECT pp.preset_id, pp.name, pp.value FROM preset_parameters pp \
         JOIN presets p ON p.id = pp.preset_id JOIN templates t ON t.id = p.template_id \
         WHERE (CAST($1 AS TEXT) IS NULL OR t.name = $1) ORDER BY pp.preset_id, pp.name",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .db("reading preset parameters")?;
    let schedule_rows = sqlx::query(
        "SELECT s.preset_id, s.cron, s.instances FROM preset_schedules s \
         JOIN presets p ON p.id = s.preset_id JOIN templates t ON t.id = p.template_id \
         WHERE (CAST($1 AS TEXT) IS NULL OR t.name = $1) ORDER BY s.preset_id, s.position",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .db("reading preset schedules")?;

    let mut schedules: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for row in &schedule_rows {
        schedules
            .entry(col(row, "preset_id")?)
            .or_default()
            .push((col(row, "cron")?, col(row, "instances")?));
    }
    let mut preset_parameters: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for row in &preset_parameter_rows {
        preset_parameters
            .entry(col(row, "preset_id")?)
            .or_default()
            .insert(col(row, "name")?, col(row, "value")?);
    }
    let mut presets: HashMap<String, Vec<PresetInfo>> = HashMap::new();
    for row in &preset_rows {
        let id: String = col(row, "id")?;
        let timezone: Option<String> = col(row, "scheduling_timezone")?;
        let pool = pool_from_parts(
            col(row, "instances")?,
            col(row, "ttl_ms")?,
            timezone.as_deref(),
            schedules.get(&id).map(Vec::as_slice).unwrap_or(&[]),
            &format!("preset {id}"),
        )?;
        let status: String = col(row, "status")?;
        let info = PresetInfo {
            parameters: preset_parameters.remove(&id).unwrap_or_default(),
            id: PresetId::new(id),
            name: col(row, "name")?,
            pool,
            status: parse_preset_status(&status)?,
            invalidated_at: opt_from_ms(col(row, "invalidated_at")?, "preset invalidated_at")?,
            creation_failures: CreationFailures {
                consecutive: to_u32(col(row, "creation_failures")?, "preset creation_failures")?,
                last_failure_at: opt_from_ms(
                    col(row, "last_creation_failure_at")?,
                    "preset last_creation_failure_at",
                )?,
            },
            paused: col(row, "paused")?,
        };
        presets
            .entry(col(row, "version_id")?)
            .or_default()
            .push(info);
    }
    let mut parameters: HashMap<String, Vec<ParameterSpec>> = HashMap::new();
    for row in &parameter_rows {
        parameters
            .entry(col(row, "version_id")?)
            .or_default()
            .push(ParameterSpec {
                name: col(row, "name")?,
                required: col(row, "required")?,
                default: col(row, "default_value")?,
                sensitive: col(row, "sensitive")?,
            });
    }
    let mut active_by_template: HashMap<String, Option<String>> = HashMap::new();
    for row in &template_rows {
        active_by_template.insert(col(row, "id")?, col(row, "active_version_id")?);
    }
    let mut versions: HashMap<String, Vec<VersionInfo>> = HashMap::new();
    for row in &version_rows {
        let id: String = col(row, "id")?;
        let template_id: String = col(row, "template_id")?;
        let definition: String = col(row, "definition")?;
        let definition: BuildDefinition = serde_json::from_str(&definition)
            .map_err(|e| StoreError::corrupt(format!("version {id} definition: {e}")))?;
        let applied_by: String = col(row, "applied_by")?;
        let active = active_by_template
            .get(&template_id)
            .is_some_and(|a| a.as_deref() == Some(id.as_str()));
        let info = VersionInfo {
            number: to_u32(col(row, "number")?, "version number")?,
            name: col(row, "name")?,
            active,
            applied_by: AppliedBy::parse(&applied_by)
                .ok_or_else(|| StoreError::corrupt(format!("applied_by {applied_by:?}")))?,
            created_at: from_ms(col(row, "created_at")?, "version created_at")?,
            definition,
            parameters: parameters.remove(&id).unwrap_or_default(),
            presets: presets.remove(&id).unwrap_or_default(),
            id: VersionId::new(id),
        };
        versions.entry(template_id).or_default().push(info);
    }
    let mut out = Vec::with_capacity(template_rows.len());
    for row in &template_rows {
        let id: String = col(row, "id")?;
        let versions = versions.remove(&id).unwrap_or_default();
        let applied_by: String = col(row, "applied_by")?;
        let max: Option<i64> = col(row, "max_workspaces")?;
        out.push(TemplateInfo {
            active_version: versions.iter().find(|v| v.active).map(|v| v.name.clone()),
            id: TemplateId::new(id),
            name: col(row, "name")?,
            max_workspaces: max.map(|m| to_u32(m, "max_workspaces")).transpose()?,
            claim_build: col(row, "claim_build")?,
            applied_by: AppliedBy::parse(&applied_by)
                .ok_or_else(|| StoreError::corrupt(format!("applied_by {applied_by:?}")))?,
            created_at: from_ms(col(row, "created_at")?, "template created_at")?,
            updated_at: from_ms(col(row, "updated_at")?, "template updated_at")?,
            deleted_at: opt_from_ms(col(row, "deleted_at")?, "template deleted_at")?,
            versions,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// Shared write steps

/// The preset of a template's active version, by names, with what a claim or a cold create needs.
#[derive(Debug)]
struct ActivePreset {
    preset_id: String,
    preset_name: String,
    template_id: String,
    template_name: String,
    version_id: String,
    ttl_ms: Option<i64>,
    invalidated_at: Option<i64>,
    // Read by the SQLite claim (PostgreSQL's claim statement reads it itself).
    #[allow(dead_code)]
    claim_build: bool,
    max_workspaces: Option<i64>,
}

async fn resolve_active_preset(
    conn: &mut DbConn,
    template: &str,
    preset: &str,
) -> StoreResult<Option<ActivePreset>> {
    let row = sqlx::query(concat!(
        "SELECT p.id, p.name, t.id, t.name, p.version_id, p.ttl_ms, p.invalidated_at, t.claim_build, \
                t.max_workspaces \
         FROM templates t JOIN presets p ON p.version_id = t.active_version_id \
         WHERE t.name = $1 AND p.name = $2 AND t.deleted_at IS NULL",
        for_update!()
    ))
    .bind(template)
    .bind(preset)
    .fetch_optional(&mut *conn)
    .await
    .db("reading the active preset")?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(ActivePreset {
        preset_id: row.try_get(0).db("reading the active preset")?,
        preset_name: row.try_get(1).db("reading the active preset")?,
        template_id: row.try_get(2).db("reading the active preset")?,
        template_name: row.try_get(3).db("reading the active preset")?,
        version_id: row.try_get(4).db("reading the active preset")?,
        ttl_ms: row.try_get(5).db("reading the active preset")?,
        invalidated_at: row.try_get(6).db("reading the active preset")?,
        claim_build: row.try_get(7).db("reading the active preset")?,
        max_workspaces: row.try_get(8).db("reading the active preset")?,
    }))
}

async fn name_taken(conn: &mut DbConn, owner: &str, name: &str) -> StoreResult<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM workspaces WHERE owner = $1 AND name = $2 AND deleted_at IS NULL",
    )
    .bind(owner)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .db("checking a workspace name")?;
    Ok(found.is_some())
}

/// Refuses a new workspace when the template's quota of live workspaces is full. The caller holds the
/// template's row lock (PostgreSQL) or the write lock (SQLite), so concurrent creators cannot overrun it.
async fn check_quota(
    conn: &mut DbConn,
    template_id: &str,
    template_name: &str,
    max: Option<i64>,
) -> StoreResult<()> {
    let Some(max) = max else { return Ok(()) };
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM workspaces WHERE template_id = $1 AND deleted_at IS NULL",
    )
    .bind(template_id)
    .fetch_one(&mut *conn)
    .await
    .db("counting live workspaces")?;
    if live >= max {
        return Err(StoreError::QuotaExceeded {
            template: template_name.to_owned(),
            max: to_u32(max, "max_workspaces")?,
        });
    }
    Ok(())
}

async fn bump_counter(
    conn: &mut DbConn,
    name: CounterName,
    template: &str,
    preset: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO metric_counters (name, template_name, preset_name, shard, value) VALUES ($1, $2, $3, $4, 1) \
         ON CONFLICT (name, template_name, preset_name, shard) DO UPDATE SET value = metric_counters.value + 1",
    )
    .bind(name.as_str())
    .bind(template)
    .bind(preset)
    .bind(counter_shard())
    .execute(&mut *conn)
    .await
    .db("counting an event")?;
    Ok(())
}

// Used by the SQLite claim (PostgreSQL's claim statement writes the event itself).
#[allow(dead_code)]
async fn record_claim_event(
    conn: &mut DbConn,
    preset: &ActivePreset,
    kind: ClaimEventKind,
    now: i64,
    now_dt: chrono::DateTime<chrono::Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO claim_events (id, preset_id, template_name, preset_name, kind, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id(now_dt))
    .bind(&preset.preset_id)
    .bind(&preset.template_name)
    .bind(&preset.preset_name)
    .bind(kind.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await
    .db("recording a claim event")?;
    let counter = match kind {
        ClaimEventKind::ClaimSucceeded => CounterName::PrebuildsClaimed,
        ClaimEventKind::ClaimMissed => CounterName::ClaimsMissed,
    };
    bump_counter(conn, counter, &preset.template_name, &preset.preset_name).await
}

/// A build row to insert.
#[derive(Debug)]
struct NewBuild<'a> {
    id: String,
    workspace_id: &'a str,
    number: i64,
    transition: Transition,
    version_id: &'a str,
    preset_id: Option<&'a str>,
    initiator: &'a str,
    is_prebuild: bool,
    is_claim: bool,
    /// Reconciler jobs queue after user jobs.
    from_reconciler: bool,
    status: JobStatus,
    completed_at: Option<i64>,
    now: i64,
}

async fn insert_build(conn: &mut DbConn, b: &NewBuild<'_>) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO builds (id, workspace_id, number, transition, version_id, preset_id, initiator, is_prebuild, \
                             is_claim, created_at, status, priority, attempts, completed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13)",
    )
    .bind(&b.id)
    .bind(b.workspace_id)
    .bind(b.number)
    .bind(b.transition.as_str())
    .bind(b.version_id)
    .bind(b.preset_id)
    .bind(b.initiator)
    .bind(b.is_prebuild)
    .bind(b.is_claim)
    .bind(b.now)
    .bind(b.status.as_str())
    .bind(job_priority(b.from_reconciler, b.transition))
    .bind(b.completed_at)
    .execute(&mut *conn)
    .await
    .db("inserting a build")?;
    sqlx::query(
        "UPDATE workspaces SET latest_build_id = $1, latest_build_number = $2, latest_transition = $3, \
                latest_status = $4, latest_build_created_at = $5, latest_version_id = $6, latest_picked_up = FALSE, \
                updated_at = $5 \
         WHERE id = $7",
    )
    .bind(&b.id)
    .bind(b.number)
    .bind(b.transition.as_str())
    .bind(b.status.as_str())
    .bind(b.now)
    .bind(b.version_id)
    .bind(b.workspace_id)
    .execute(&mut *conn)
    .await
    .db("pointing a workspace at its latest build")?;
    Ok(())
}

/// Inserts a workspace together with its first build (`start`, pending).
#[allow(clippy::too_many_arguments)]
async fn insert_workspace_with_start(
    conn: &mut DbConn,
    preset: &ActivePreset,
    owner: &str,
    name: &str,
    from_reconciler: bool,
    now: i64,
    now_dt: chrono::DateTime<chrono::Utc>,
) -> StoreResult<(String, String)> {
    let workspace_id = new_id(now_dt);
    let build_id = new_id(now_dt);
    let inserted = sqlx::query(
        "INSERT INTO workspaces (id, template_id, preset_id, owner, name, created_at, updated_at, latest_build_id, \
                                 latest_build_number, latest_transition, latest_status, latest_build_created_at, \
                                 latest_version_id, latest_picked_up) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, 1, 'start', 'pending', $6, $8, FALSE)",
    )
    .bind(&workspace_id)
    .bind(&preset.template_id)
    .bind(&preset.preset_id)
    .bind(owner)
    .bind(name)
    .bind(now)
    .bind(&build_id)
    .bind(&preset.version_id)
    .execute(&mut *conn)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::NameTaken {
                owner: owner.to_owned(),
                name: name.to_owned(),
            });
        }
        other => other.db("inserting a workspace")?,
    };
    insert_build(
        conn,
        &NewBuild {
            id: build_id.clone(),
            workspace_id: &workspace_id,
            number: 1,
            transition: Transition::Start,
            version_id: &preset.version_id,
            preset_id: Some(&preset.preset_id),
            initiator: owner,
            is_prebuild: owner == PREBUILDS_OWNER,
            is_claim: false,
            from_reconciler,
            status: JobStatus::Pending,
            completed_at: None,
            now,
        },
    )
    .await?;
    Ok((workspace_id, build_id))
}

/// The latest-build state of a live workspace, locked for a new build.
#[derive(Debug)]
struct LiveWorkspace {
    owner: String,
    number: i64,
    status: JobStatus,
    version_id: String,
    preset_id: Option<String>,
}

async fn lock_live_workspace(conn: &mut DbConn, id: &str) -> StoreResult<LiveWorkspace> {
    let row = sqlx::query(concat!(
        "SELECT owner, latest_build_number, latest_status, latest_version_id, preset_id \
         FROM workspaces WHERE id = $1 AND deleted_at IS NULL",
        for_update!()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .db("reading a workspace")?;
    let Some(row) = row else {
        return Err(StoreError::not_found(format!("workspace {id}")));
    };
    let status: String = row.try_get(2).db("reading a workspace")?;
    Ok(LiveWorkspace {
        owner: row.try_get(0).db("reading a workspace")?,
        number: row.try_get(1).db("reading a workspace")?,
        status: parse_job_status(&status)?,
        version_id: row.try_get(3).db("reading a workspace")?,
        preset_id: row.try_get(4).db("reading a workspace")?,
    })
}

fn build_in_progress(status: JobStatus) -> bool {
    matches!(
        status,
        JobStatus::Pending | JobStatus::Running | JobStatus::Canceling
    )
}

/// Counts `prebuilds_failed` when the failed build is a prebuild's first build.
async fn count_first_build_failure(
    conn: &mut DbConn,
    number: i64,
    is_prebuild: bool,
    transition: Transition,
    preset_id: Option<&str>,
) -> StoreResult<()> {
    if number != 1 || !is_prebuild || transition != Transition::Start {
        return Ok(());
    }
    let Some(preset_id) = preset_id else {
        return Ok(());
    };
    let names = sqlx::query(
        "SELECT t.name, p.name FROM presets p JOIN templates t ON t.id = p.template_id WHERE p.id = $1",
    )
    .bind(preset_id)
    .fetch_optional(&mut *conn)
    .await
    .db("reading a preset's names")?;
    if let Some(row) = names {
        let template: String = row.try_get(0).db("reading a preset's names")?;
        let preset: String = row.try_get(1).db("reading a preset's names")?;
        bump_counter(conn, CounterName::PrebuildsFailed, &template, &preset).await?;
    }
    Ok(())
}

async fn insert_presets(
    conn: &mut DbConn,
    spec: &TemplateSpec,
    template_id: &str,
    version_id: &str,
    now: i64,
    now_dt: chrono::DateTime<chrono::Utc>,
) -> StoreResult<()> {
    for (position, p) in spec.parameters.iter().enumerate() {
        sqlx::query(
            "INSERT INTO template_parameters (version_id, position, name, required, default_value, sensitive) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(version_id)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(&p.name)
        .bind(p.required)
        .bind(p.default.as_deref())
        .bind(p.sensitive)
        .execute(&mut *conn)
        .await
        .db("inserting a template parameter")?;
    }
    for preset in &spec.presets {
        let preset_id = new_id(now_dt);
        let status = if spec.missing_required(preset).is_empty() {
            PresetStatus::Healthy
        } else {
            PresetStatus::ValidationFailed
        };
        sqlx::query(
            "INSERT INTO presets (id, template_id, version_id, name, instances, ttl_ms, scheduling_timezone, status, \
                                  creation_failures, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $9)",
        )
        .bind(&preset_id)
        .bind(template_id)
        .bind(version_id)
        .bind(&preset.name)
        .bind(preset.pool.instances.map(i64::from))
        .bind(ttl_column(&preset.pool))
        .bind(preset.pool.scheduling.as_ref().map(|s| s.timezone().name()))
        .bind(status.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await
        .db("inserting a preset")?;
        for (name, value) in &preset.parameters {
            sqlx::query(
                "INSERT INTO preset_parameters (preset_id, name, value) VALUES ($1, $2, $3)",
            )
            .bind(&preset_id)
            .bind(name)
            .bind(value)
            .execute(&mut *conn)
            .await
            .db("inserting a preset parameter")?;
        }
        insert_schedules(conn, &preset_id, &preset.pool).await?;
    }
    Ok(())
}

fn ttl_column(pool: &PoolSpec) -> Option<i64> {
    pool.ttl
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn insert_schedules(conn: &mut DbConn, preset_id: &str, pool: &PoolSpec) -> StoreResult<()> {
    let Some(scheduling) = &pool.scheduling else {
        return Ok(());
    };
    for (position, s) in scheduling.schedules().iter().enumerate() {
        sqlx::query(
            "INSERT INTO preset_schedules (preset_id, position, cron, instances) VALUES ($1, $2, $3, $4)",
        )
        .bind(preset_id)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(&s.cron_text)
        .bind(i64::from(s.instances))
        .execute(&mut *conn)
        .await
        .db("inserting a preset schedule")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Operations

impl Inner {
    async fn apply_template(
        &self,
        spec: &TemplateSpec,
        applied_by: AppliedBy,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<ApplyResult> {
        let now = ms(now_dt);
        let definition = spec.build_definition();
        let definition_json = serde_json::to_string(&definition)
            .map_err(|e| StoreError::Invalid(format!("template {}: {e}", spec.name)))?;
        let max_workspaces = spec.max_workspaces.map(i64::from);
        let mut tx = self.begin_write().await?;
        let created = sqlx::query(
            "INSERT INTO templates (id, name, claim_build, max_workspaces, applied_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(new_id(now_dt))
        .bind(&spec.name)
        .bind(spec.claim_build)
        .bind(max_workspaces)
        .bind(applied_by.as_str())
        .bind(now)
        .execute(tx.conn())
        .await
        .db("inserting a template")?
        .rows_affected()
            == 1;
        let row = sqlx::query(concat!(
            "SELECT id, active_version_id, last_version_number, max_workspaces, claim_build, applied_by, deleted_at \
             FROM templates WHERE name = $1",
            for_update!()
        ))
        .bind(&spec.name)
        .fetch_one(tx.conn())
        .await
        .db("reading a template")?;
        let template_id: String = row.try_get(0).db("reading a template")?;
        let active_version_id: Option<String> = row.try_get(1).db("reading a template")?;
        let last_number: i64 = row.try_get(2).db("reading a template")?;
        let old_max: Option<i64> = row.try_get(3).db("reading a template")?;
        let old_claim_build: bool = row.try_get(4).db("reading a template")?;
        let old_applied_by: String = row.try_get(5).db("reading a template")?;
        let deleted_at: Option<i64> = row.try_get(6).db("reading a template")?;

        let same_definition = match &active_version_id {
            None => false,
            Some(version_id) => {
                let stored: String =
                    sqlx::query_scalar("SELECT definition FROM template_versions WHERE id = $1")
                        .bind(version_id)
                        .fetch_one(tx.conn())
                        .await
                        .db("reading the active version")?;
                serde_json::from_str::<BuildDefinition>(&stored).ok() == Some(definition.clone())
            }
        };

        let mut settings_changed = created
            || old_max != max_workspaces
            || old_claim_build != spec.claim_build
            || old_applied_by != applied_by.as_str()
            || deleted_at.is_some();
        let outcome = match (&active_version_id, same_definition) {
            (Some(version_id), true) => {
                // Same build definition: the pools change in place.
                let current = load_templates(tx.conn(), Some(&spec.name)).await?;
                let current_presets: HashMap<&str, &PresetInfo> = current
                    .iter()
                    .flat_map(|t| &t.versions)
                    .filter(|v| v.id.as_str() == version_id)
                    .flat_map(|v| &v.presets)
                    .map(|p| (p.name.as_str(), p))
                    .collect();
                for preset in &spec.presets {
                    let Some(existing) = current_presets.get(preset.name.as_str()) else {
                        continue;
                    };
                    if existing.pool == preset.pool {
                        continue;
                    }
                    settings_changed = true;
                    sqlx::query(
                        "UPDATE presets SET instances = $1, ttl_ms = $2, scheduling_timezone = $3, updated_at = $4 \
                         WHERE id = $5",
                    )
                    .bind(preset.pool.instances.map(i64::from))
                    .bind(ttl_column(&preset.pool))
                    .bind(preset.pool.scheduling.as_ref().map(|s| s.timezone().name()))
                    .bind(now)
                    .bind(existing.id.as_str())
                    .execute(tx.conn())
                    .await
                    .db("updating a preset's pool")?;
                    sqlx::query("DELETE FROM preset_schedules WHERE preset_id = $1")
                        .bind(existing.id.as_str())
                        .execute(tx.conn())
                        .await
                        .db("replacing a preset's schedules")?;
                    insert_schedules(tx.conn(), existing.id.as_str(), &preset.pool).await?;
                }
                sqlx::query(
                    "UPDATE templates SET max_workspaces = $1, claim_build = $2, applied_by = $3, deleted_at = NULL, \
                            updated_at = $4 WHERE id = $5",
                )
                .bind(max_workspaces)
                .bind(spec.claim_build)
                .bind(applied_by.as_str())
                .bind(now)
                .bind(&template_id)
                .execute(tx.conn())
                .await
                .db("updating a template")?;
                ApplyOutcome::Unchanged
            }
            _ => {
                settings_changed = true;
                let number = last_number + 1;
                let version_id = new_id(now_dt);
                sqlx::query(
                    "INSERT INTO template_versions (id, template_id, number, name, definition, applied_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&version_id)
                .bind(&template_id)
                .bind(number)
                .bind(format!("v{number}"))
                .bind(&definition_json)
                .bind(applied_by.as_str())
                .bind(now)
                .execute(tx.conn())
                .await
                .db("inserting a template version")?;
                insert_presets(tx.conn(), spec, &template_id, &version_id, now, now_dt).await?;
                sqlx::query(
                    "UPDATE templates SET active_version_id = $1, last_version_number = $2, max_workspaces = $3, \
                            claim_build = $4, applied_by = $5, deleted_at = NULL, updated_at = $6 WHERE id = $7",
                )
                .bind(&version_id)
                .bind(number)
                .bind(max_workspaces)
                .bind(spec.claim_build)
                .bind(applied_by.as_str())
                .bind(now)
                .bind(&template_id)
                .execute(tx.conn())
                .await
                .db("activating a template version")?;
                if created {
                    ApplyOutcome::Created
                } else {
                    ApplyOutcome::NewVersion
                }
            }
        };
        let template = load_templates(tx.conn(), Some(&spec.name))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::not_found(format!("template {}", spec.name)))?;
        tx.commit().await?;
        Ok(ApplyResult {
            outcome,
            settings_changed,
            template,
        })
    }

    async fn delete_template(
        &self,
        name: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let exists: Option<i64> = sqlx::query_scalar(
            "UPDATE templates SET deleted_at = COALESCE(deleted_at, $1), updated_at = $1 WHERE name = $2 \
             RETURNING CAST(1 AS BIGINT)",
        )
        .bind(ms(now))
        .bind(name)
        .fetch_optional(tx.conn())
        .await
        .db("deleting a template")?;
        if exists.is_none() {
            return Err(StoreError::not_found(format!("template {name}")));
        }
        tx.commit().await
    }

    async fn list_templates(&self, name: Option<&str>) -> StoreResult<Vec<TemplateInfo>> {
        let mut conn = self.pool.acquire().await.db("connecting")?;
        load_templates(&mut conn, name).await
    }

    async fn active_preset(&self, template: &str, preset: &str) -> StoreResult<Option<PresetInfo>> {
        let templates = self.list_templates(Some(template)).await?;
        Ok(templates
            .into_iter()
            .filter(|t| t.deleted_at.is_none())
            .flat_map(|t| t.versions)
            .filter(|v| v.active)
            .flat_map(|v| v.presets)
            .find(|p| p.name == preset))
    }

    async fn set_preset_paused(
        &self,
        template: &str,
        preset: &str,
        paused: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if resolve_active_preset(tx.conn(), template, preset)
            .await?
            .is_none()
        {
            return Err(StoreError::not_found(format!("preset {template}/{preset}")));
        }
        sqlx::query(
            "INSERT INTO preset_settings (template_name, preset_name, paused, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (template_name, preset_name) DO UPDATE SET paused = excluded.paused, \
                                                                   updated_at = excluded.updated_at",
        )
        .bind(template)
        .bind(preset)
        .bind(paused)
        .bind(ms(now))
        .execute(tx.conn())
        .await
        .db("pausing a preset")?;
        tx.commit().await
    }

    async fn invalidate_preset(
        &self,
        template: &str,
        preset: &str,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<u64> {
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        let Some(active) = resolve_active_preset(tx.conn(), template, preset).await? else {
            return Err(StoreError::not_found(format!("preset {template}/{preset}")));
        };
        let since = unexpired_since(now, active.ttl_ms, active.invalidated_at);
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM workspaces WHERE preset_id = $1 AND owner = 'prebuilds' AND deleted_at IS NULL \
               AND latest_transition = 'start' AND latest_status = 'succeeded' \
               AND created_at >= $2 AND created_at < $3",
        )
        .bind(&active.preset_id)
        .bind(since)
        .bind(now)
        .fetch_one(tx.conn())
        .await
        .db("counting prebuilds to invalidate")?;
        sqlx::query("UPDATE presets SET invalidated_at = $1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&active.preset_id)
            .execute(tx.conn())
            .await
            .db("invalidating a preset")?;
        tx.commit().await?;
        to_u64(count, "invalidated count")
    }

    async fn update_preset(
        &self,
        preset: &PresetId,
        sql: &'static str,
        bind_status: Option<PresetStatus>,
        now: chrono::DateTime<chrono::Utc>,
        context: &'static str,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let mut query = sqlx::query(sql).bind(preset.as_str()).bind(ms(now));
        if let Some(status) = bind_status {
            query = query.bind(status.as_str());
        }
        let done = query.execute(tx.conn()).await.db(context)?.rows_affected();
        if done == 0 {
            return Err(StoreError::not_found(format!("preset {preset}")));
        }
        tx.commit().await
    }

    async fn set_reconciliation_paused(
        &self,
        paused: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(PAUSED_SETTING)
        .bind(if paused { "true" } else { "false" })
        .bind(ms(now))
        .execute(tx.conn())
        .await
        .db("writing settings")?;
        tx.commit().await
    }

    async fn create_prebuild(
        &self,
        preset: &PresetId,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<CreatedPrebuild> {
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        // Lock the template row first: the quota check below must see every concurrent creator's workspace.
        let row = sqlx::query(concat!(
            "SELECT t.id, t.name, t.max_workspaces, t.active_version_id, t.deleted_at, t.claim_build FROM templates t \
             WHERE t.id = (SELECT template_id FROM presets WHERE id = $1)",
            for_update!()
        ))
        .bind(preset.as_str())
        .fetch_optional(tx.conn())
        .await
        .db("reading a preset's template")?;
        let Some(row) = row else {
            return Err(StoreError::not_found(format!("preset {preset}")));
        };
        let template_id: String = row.try_get(0).db("reading a preset's template")?;
        let template_name: String = row.try_get(1).db("reading a preset's template")?;
        let max_workspaces: Option<i64> = row.try_get(2).db("reading a preset's template")?;
        let active_version: Option<String> = row.try_get(3).db("reading a preset's template")?;
        let deleted_at: Option<i64> = row.try_get(4).db("reading a preset's template")?;
        let claim_build: bool = row.try_get(5).db("reading a preset's template")?;
        let preset_row = sqlx::query(
            "SELECT name, version_id, ttl_ms, invalidated_at FROM presets WHERE id = $1",
        )
        .bind(preset.as_str())
        .fetch_one(tx.conn())
        .await
        .db("reading a preset")?;
        let active = ActivePreset {
            preset_id: preset.as_str().to_owned(),
            preset_name: preset_row.try_get(0).db("reading a preset")?,
            template_id,
            template_name,
            version_id: preset_row.try_get(1).db("reading a preset")?,
            ttl_ms: preset_row.try_get(2).db("reading a preset")?,
            invalidated_at: preset_row.try_get(3).db("reading a preset")?,
            claim_build,
            max_workspaces,
        };
        if deleted_at.is_some() || active_version.as_deref() != Some(active.version_id.as_str()) {
            return Err(StoreError::Inactive(preset.clone()));
        }
        check_quota(
            tx.conn(),
            &active.template_id,
            &active.template_name,
            active.max_workspaces,
        )
        .await?;
        let name = prebuild_name(&active.preset_name);
        let (workspace_id, build_id) = insert_workspace_with_start(
            tx.conn(),
            &active,
            PREBUILDS_OWNER,
            &name,
            true,
            now,
            now_dt,
        )
        .await?;
        bump_counter(
            tx.conn(),
            CounterName::PrebuildsCreated,
            &active.template_name,
            &active.preset_name,
        )
        .await?;
        sqlx::query(
            "UPDATE presets SET creation_failures = 0, last_creation_failure_at = NULL \
             WHERE id = $1 AND creation_failures > 0",
        )
        .bind(preset.as_str())
        .execute(tx.conn())
        .await
        .db("clearing a preset's creation failures")?;
        let workspace = must_load_workspace(tx.conn(), &workspace_id).await?;
        let build = must_load_build(tx.conn(), &build_id).await?;
        tx.commit().await?;
        Ok(CreatedPrebuild { workspace, build })
    }

    async fn delete_prebuild(
        &self,
        workspace: &WorkspaceId,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<BuildRecord> {
        let mut tx = self.begin_write().await?;
        let live = lock_live_workspace(tx.conn(), workspace.as_str()).await?;
        if live.owner != PREBUILDS_OWNER {
            return Err(StoreError::NotPrebuild(workspace.clone()));
        }
        if build_in_progress(live.status) {
            return Err(StoreError::Conflict(workspace.clone()));
        }
        let build_id = new_id(now_dt);
        insert_build(
            tx.conn(),
            &NewBuild {
                id: build_id.clone(),
                workspace_id: workspace.as_str(),
                number: live.number + 1,
                transition: Transition::Delete,
                version_id: &live.version_id,
                preset_id: live.preset_id.as_deref(),
                initiator: PREBUILDS_OWNER,
                is_prebuild: true,
                is_claim: false,
                from_reconciler: true,
                status: JobStatus::Pending,
                completed_at: None,
                now: ms(now_dt),
            },
        )
        .await?;
        let build = must_load_build(tx.conn(), &build_id).await?;
        tx.commit().await?;
        Ok(build)
    }

    async fn cancel_pending_prebuilds(
        &self,
        preset: &PresetId,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<WorkspaceId>> {
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        // Coder's UpdatePrebuildProvisionerJobWithCancel: the criteria are in the UPDATE, so a job a worker took in
        // the meantime is not touched.
        let rows = sqlx::query(
            "UPDATE builds SET status = 'canceled', canceled_at = $2, completed_at = $2 \
             WHERE preset_id = $1 AND number = 1 AND transition = 'start' AND status = 'pending' \
               AND attempts = 0 AND lease_owner IS NULL AND is_prebuild = TRUE AND initiator = 'prebuilds' \
               AND EXISTS (SELECT 1 FROM workspaces w JOIN templates t ON t.id = w.template_id \
                           WHERE w.id = builds.workspace_id AND w.owner = 'prebuilds' AND w.deleted_at IS NULL \
                             AND w.latest_build_id = builds.id \
                             AND (t.deleted_at IS NOT NULL OR t.active_version_id IS NULL \
                                  OR t.active_version_id <> builds.version_id)) \
             RETURNING workspace_id, version_id",
        )
        .bind(preset.as_str())
        .bind(now)
        .fetch_all(tx.conn())
        .await
        .db("canceling pending prebuilds")?;
        let mut canceled = Vec::with_capacity(rows.len());
        for row in &rows {
            let workspace_id: String = row.try_get(0).db("canceling pending prebuilds")?;
            let version_id: String = row.try_get(1).db("canceling pending prebuilds")?;
            // The orphan delete: nothing was ever built, so the delete is complete at once and runs nothing.
            insert_build(
                tx.conn(),
                &NewBuild {
                    id: new_id(now_dt),
                    workspace_id: &workspace_id,
                    number: 2,
                    transition: Transition::Delete,
                    version_id: &version_id,
                    preset_id: Some(preset.as_str()),
                    initiator: PREBUILDS_OWNER,
                    is_prebuild: true,
                    is_claim: false,
                    from_reconciler: true,
                    status: JobStatus::Succeeded,
                    completed_at: Some(now),
                    now,
                },
            )
            .await?;
            sqlx::query("UPDATE workspaces SET deleted_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&workspace_id)
                .execute(tx.conn())
                .await
                .db("deleting a canceled prebuild")?;
            canceled.push(WorkspaceId::new(workspace_id));
        }
        tx.commit().await?;
        canceled.sort();
        Ok(canceled)
    }

    async fn create_workspace(
        &self,
        request: &ClaimRequest,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<(WorkspaceRecord, BuildRecord)> {
        check_owner(&request.owner)?;
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        let Some(active) =
            resolve_active_preset(tx.conn(), &request.template, &request.preset).await?
        else {
            return Err(StoreError::not_found(format!(
                "preset {}/{}",
                request.template, request.preset
            )));
        };
        if name_taken(tx.conn(), &request.owner, &request.name).await? {
            return Err(StoreError::NameTaken {
                owner: request.owner.clone(),
                name: request.name.clone(),
            });
        }
        check_quota(
            tx.conn(),
            &active.template_id,
            &active.template_name,
            active.max_workspaces,
        )
        .await?;
        let (workspace_id, build_id) = insert_workspace_with_start(
            tx.conn(),
            &active,
            &request.owner,
            &request.name,
            false,
            now,
            now_dt,
        )
        .await?;
        let workspace = must_load_workspace(tx.conn(), &workspace_id).await?;
        let build = must_load_build(tx.conn(), &build_id).await?;
        tx.commit().await?;
        Ok((workspace, build))
    }

    async fn enqueue_build(
        &self,
        workspace: &WorkspaceId,
        transition: Transition,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<BuildRecord> {
        let mut tx = self.begin_write().await?;
        let live = lock_live_workspace(tx.conn(), workspace.as_str()).await?;
        if build_in_progress(live.status) {
            return Err(StoreError::Conflict(workspace.clone()));
        }
        let build_id = new_id(now_dt);
        insert_build(
            tx.conn(),
            &NewBuild {
                id: build_id.clone(),
                workspace_id: workspace.as_str(),
                number: live.number + 1,
                transition,
                version_id: &live.version_id,
                preset_id: live.preset_id.as_deref(),
                initiator: &live.owner,
                is_prebuild: live.owner == PREBUILDS_OWNER,
                is_claim: false,
                from_reconciler: false,
                status: JobStatus::Pending,
                completed_at: None,
                now: ms(now_dt),
            },
        )
        .await?;
        let build = must_load_build(tx.conn(), &build_id).await?;
        tx.commit().await?;
        Ok(build)
    }

    async fn list_workspaces(&self, filter: &WorkspaceFilter) -> StoreResult<Vec<WorkspaceRecord>> {
        let rows = sqlx::query(concat!(
            workspace_select!(),
            "WHERE (CAST($1 AS TEXT) IS NULL OR w.owner = $1) \
               AND (CAST($2 AS TEXT) IS NULL OR t.name = $2) \
               AND (CAST($3 AS TEXT) IS NULL OR p.name = $3) \
               AND ($4 OR w.deleted_at IS NULL) \
             ORDER BY w.created_at, w.id"
        ))
        .bind(filter.owner.as_deref())
        .bind(filter.template.as_deref())
        .bind(filter.preset.as_deref())
        .bind(filter.include_deleted)
        .fetch_all(&self.pool)
        .await
        .db("listing workspaces")?;
        rows.iter().map(workspace_from_row).collect()
    }

    async fn acquire_job(
        &self,
        worker: &str,
        lease: chrono::TimeDelta,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Option<AcquiredJob>> {
        let now = ms(now_dt);
        let expires_at = now_dt + lease;
        let token = new_token();
        let mut tx = self.begin_write().await?;
        let taken = sqlx::query(concat!(
            "UPDATE builds SET status = 'running', lease_owner = $1, lease_token = $2, lease_expires_at = $3, \
                    attempts = attempts + 1, started_at = COALESCE(started_at, $4), process_pgid = NULL, \
                    process_boot_id = NULL, process_start_time = NULL \
             WHERE status = 'pending' AND id = ( \
                 SELECT id FROM builds WHERE status = 'pending' AND (not_before IS NULL OR not_before <= $4) \
                 ORDER BY priority, created_at, id LIMIT 1",
            skip_locked!(),
            ") RETURNING id, workspace_id"
        ))
        .bind(worker)
        .bind(&token)
        .bind(ms(expires_at))
        .bind(now)
        .fetch_optional(tx.conn())
        .await
        .db("acquiring a job")?;
        let Some(taken) = taken else {
            return Ok(None);
        };
        let build_id: String = taken.try_get(0).db("acquiring a job")?;
        let workspace_id: String = taken.try_get(1).db("acquiring a job")?;
        sqlx::query(
            "UPDATE workspaces SET latest_status = 'running', latest_picked_up = TRUE, updated_at = $1 \
             WHERE id = $2 AND latest_build_id = $3",
        )
        .bind(now)
        .bind(&workspace_id)
        .bind(&build_id)
        .execute(tx.conn())
        .await
        .db("marking a workspace's build running")?;
        let build = must_load_build(tx.conn(), &build_id).await?;
        let context = sqlx::query(
            "SELECT w.name, w.owner, t.name, v.name, p.name, v.definition, b.version_id, b.preset_id \
             FROM builds b JOIN workspaces w ON w.id = b.workspace_id JOIN templates t ON t.id = w.template_id \
             JOIN template_versions v ON v.id = b.version_id LEFT JOIN presets p ON p.id = b.preset_id \
             WHERE b.id = $1",
        )
        .bind(&build_id)
        .fetch_one(tx.conn())
        .await
        .db("reading a job's context")?;
        let version_id: String = context.try_get(6).db("reading a job's context")?;
        let preset_id: Option<String> = context.try_get(7).db("reading a job's context")?;
        let definition: String = context.try_get(5).db("reading a job's context")?;
        let definition: BuildDefinition = serde_json::from_str(&definition)
            .map_err(|e| StoreError::corrupt(format!("version {version_id} definition: {e}")))?;
        let declared = sqlx::query(
            "SELECT name, default_value, sensitive FROM template_parameters WHERE version_id = $1 ORDER BY position",
        )
        .bind(&version_id)
        .fetch_all(tx.conn())
        .await
        .db("reading a job's parameters")?;
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        if let Some(preset_id) = &preset_id {
            let rows =
                sqlx::query("SELECT name, value FROM preset_parameters WHERE preset_id = $1")
                    .bind(preset_id)
                    .fetch_all(tx.conn())
                    .await
                    .db("reading a job's parameters")?;
            for row in &rows {
                values.insert(col(row, "name")?, col(row, "value")?);
            }
        }
        let mut parameters = Vec::with_capacity(declared.len() + values.len());
        for row in &declared {
            let name: String = col(row, "name")?;
            let default: Option<String> = col(row, "default_value")?;
            let sensitive: bool = col(row, "sensitive")?;
            if let Some(value) = values.remove(&name).or(default) {
                parameters.push(JobParameter {
                    name,
                    value,
                    sensitive,
                });
            }
        }
        parameters.extend(values.into_iter().map(|(name, value)| JobParameter {
            name,
            value,
            sensitive: false,
        }));
        tx.commit().await?;
        Ok(Some(AcquiredJob {
            build,
            workspace_name: context.try_get(0).db("reading a job's context")?,
            owner: context.try_get(1).db("reading a job's context")?,
            template: context.try_get(2).db("reading a job's context")?,
            template_version: context.try_get(3).db("reading a job's context")?,
            preset: context.try_get(4).db("reading a job's context")?,
            definition,
            parameters,
            lease: Lease { token, expires_at },
        }))
    }

    async fn renew_lease(
        &self,
        job: &JobId,
        token: &str,
        lease: chrono::TimeDelta,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<chrono::DateTime<chrono::Utc>> {
        let expires_at = now + lease;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE builds SET lease_expires_at = $1 WHERE id = $2 AND lease_token = $3 AND status = 'running'",
        )
        .bind(ms(expires_at))
        .bind(job.as_str())
        .bind(token)
        .execute(tx.conn())
        .await
        .db("renewing a lease")?
        .rows_affected();
        if done == 0 {
            return Err(StoreError::StaleLease(job.clone()));
        }
        tx.commit().await?;
        Ok(expires_at)
    }

    async fn record_job_process(
        &self,
        job: &JobId,
        token: &str,
        process: &ProcessRecord,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE builds SET process_pgid = $1, process_boot_id = $2, process_start_time = $3 \
             WHERE id = $4 AND lease_token = $5 AND status = 'running'",
        )
        .bind(process.pgid)
        .bind(&process.boot_id)
        .bind(process.start_time)
        .bind(job.as_str())
        .bind(token)
        .execute(tx.conn())
        .await
        .db("recording a job's process")?
        .rows_affected();
        if done == 0 {
            return Err(StoreError::StaleLease(job.clone()));
        }
        tx.commit().await
    }

    async fn complete_job(
        &self,
        job: &JobId,
        token: &str,
        outcome: &JobOutcome,
        log: &str,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let now = ms(now_dt);
        let (status, error, not_before, completed_at, canceled_at) = match outcome {
            JobOutcome::Succeeded { .. } => (JobStatus::Succeeded, None, None, Some(now), None),
            JobOutcome::Failed { error } => (
                JobStatus::Failed,
                Some(error.as_str()),
                None,
                Some(now),
                None,
            ),
            JobOutcome::Canceled => (JobStatus::Canceled, None, None, Some(now), Some(now)),
            JobOutcome::RetryAt { error, at } => (
                JobStatus::Pending,
                Some(error.as_str()),
                Some(ms(*at)),
                None,
                None,
            ),
        };
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE builds SET status = $1, error = $2, not_before = $3, completed_at = $4, canceled_at = $5, \
                    log = $6, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
             WHERE id = $7 AND lease_token = $8 AND status = 'running' \
             RETURNING workspace_id, number, transition, is_prebuild, preset_id",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(not_before)
        .bind(completed_at)
        .bind(canceled_at)
        .bind(log_tail(log))
        .bind(job.as_str())
        .bind(token)
        .fetch_optional(tx.conn())
        .await
        .db("completing a job")?;
        let Some(row) = row else {
            return Err(StoreError::StaleLease(job.clone()));
        };
        let workspace_id: String = row.try_get(0).db("completing a job")?;
        let number: i64 = row.try_get(1).db("completing a job")?;
        let transition: String = row.try_get(2).db("completing a job")?;
        let transition = parse_transition(&transition)?;
        let is_prebuild: bool = row.try_get(3).db("completing a job")?;
        let preset_id: Option<String> = row.try_get(4).db("completing a job")?;
        let outputs = match (outcome, transition) {
            (JobOutcome::Succeeded { outputs: Some(v) }, Transition::Start) => Some(v.to_string()),
            _ => None,
        };
        sqlx::query(
            "UPDATE workspaces SET latest_status = $1, updated_at = $2, \
                    outputs = CASE WHEN $3 THEN $4 ELSE outputs END, \
                    deleted_at = CASE WHEN $5 THEN $2 ELSE deleted_at END \
             WHERE id = $6 AND latest_build_id = $7",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(transition == Transition::Start && status == JobStatus::Succeeded)
        .bind(outputs)
        .bind(transition == Transition::Delete && status == JobStatus::Succeeded)
        .bind(&workspace_id)
        .bind(job.as_str())
        .execute(tx.conn())
        .await
        .db("recording a build's result on its workspace")?;
        if status == JobStatus::Failed {
            count_first_build_failure(
                tx.conn(),
                number,
                is_prebuild,
                transition,
                preset_id.as_deref(),
            )
            .await?;
        }
        tx.commit().await
    }

    async fn expired_leases(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<ExpiredLease>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, transition, attempts, lease_owner, lease_expires_at, process_pgid, \
                    process_boot_id, process_start_time \
             FROM builds WHERE status = 'running' AND lease_expires_at < $1 ORDER BY lease_expires_at, id",
        )
        .bind(ms(now))
        .fetch_all(&self.pool)
        .await
        .db("finding expired leases")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let transition: String = col(row, "transition")?;
            let pgid: Option<i64> = col(row, "process_pgid")?;
            let boot_id: Option<String> = col(row, "process_boot_id")?;
            let start_time: Option<i64> = col(row, "process_start_time")?;
            out.push(ExpiredLease {
                build_id: BuildId::new(col::<String>(row, "id")?),
                workspace_id: WorkspaceId::new(col::<String>(row, "workspace_id")?),
                transition: parse_transition(&transition)?,
                attempts: to_u32(col(row, "attempts")?, "build attempts")?,
                lease_owner: col(row, "lease_owner")?,
                lease_expires_at: from_ms(col(row, "lease_expires_at")?, "lease_expires_at")?,
                process: match (pgid, boot_id, start_time) {
                    (Some(pgid), Some(boot_id), Some(start_time)) => Some(ProcessRecord {
                        pgid,
                        boot_id,
                        start_time,
                    }),
                    _ => None,
                },
            });
        }
        Ok(out)
    }

    async fn requeue_expired(
        &self,
        job: &JobId,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<RequeueOutcome> {
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "SELECT workspace_id, number, transition, attempts, is_prebuild, preset_id FROM builds \
             WHERE id = $1 AND status = 'running' AND lease_expires_at < $2",
            for_update!()
        ))
        .bind(job.as_str())
        .bind(now)
        .fetch_optional(tx.conn())
        .await
        .db("reading an expired job")?;
        let Some(row) = row else {
            return Ok(RequeueOutcome::NotExpired);
        };
        let workspace_id: String = row.try_get(0).db("reading an expired job")?;
        let number: i64 = row.try_get(1).db("reading an expired job")?;
        let transition: String = row.try_get(2).db("reading an expired job")?;
        let transition = parse_transition(&transition)?;
        let attempts: i64 = row.try_get(3).db("reading an expired job")?;
        let is_prebuild: bool = row.try_get(4).db("reading an expired job")?;
        let preset_id: Option<String> = row.try_get(5).db("reading an expired job")?;
        let give_up = transition != Transition::Delete && attempts >= i64::from(MAX_RUNS);
        let (status, outcome) = if give_up {
            (JobStatus::Failed, RequeueOutcome::Failed)
        } else {
            (JobStatus::Pending, RequeueOutcome::Requeued)
        };
        let error = give_up.then(|| format!("the build's worker was lost {attempts} times"));
        sqlx::query(
            "UPDATE builds SET status = $1, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, \
                    completed_at = $2, error = COALESCE($3, error) WHERE id = $4",
        )
        .bind(status.as_str())
        .bind(give_up.then_some(now))
        .bind(error)
        .bind(job.as_str())
        .execute(tx.conn())
        .await
        .db("requeueing an expired job")?;
        sqlx::query(
            "UPDATE workspaces SET latest_status = $1, updated_at = $2 WHERE id = $3 AND latest_build_id = $4",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(&workspace_id)
        .bind(job.as_str())
        .execute(tx.conn())
        .await
        .db("requeueing an expired job")?;
        if give_up {
            count_first_build_failure(
                tx.conn(),
                number,
                is_prebuild,
                transition,
                preset_id.as_deref(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn expire_all_leases(&self, now: chrono::DateTime<chrono::Utc>) -> StoreResult<u64> {
        let now = ms(now);
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE builds SET lease_expires_at = $1 - 1 \
             WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at >= $1)",
        )
        .bind(now)
        .execute(tx.conn())
        .await
        .db("expiring leases")?
        .rows_affected();
        tx.commit().await?;
        Ok(done)
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        let mut conn = self.pool.acquire().await.db("connecting")?;
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM builds GROUP BY status")
            .fetch_all(&mut *conn)
            .await
            .db("counting jobs")?;
        let mut counts = JobCounts::default();
        for row in &rows {
            counts
                .by_status
                .insert(col(row, "status")?, to_u64(col(row, "n")?, "job count")?);
        }
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(created_at) FROM builds WHERE status = 'pending'")
                .fetch_one(&mut *conn)
                .await
                .db("finding the oldest pending job")?;
        counts.oldest_pending_at = opt_from_ms(oldest, "oldest pending job")?;
        let failing: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM builds WHERE status = 'pending' AND transition = 'delete' AND error IS NOT NULL",
        )
        .fetch_one(&mut *conn)
        .await
        .db("counting failing deletes")?;
        counts.failing_deletes = to_u64(failing, "failing deletes")?;
        Ok(counts)
    }

    async fn counters(&self) -> StoreResult<Vec<CounterValue>> {
        let rows = sqlx::query(
            "SELECT name, template_name, preset_name, CAST(SUM(value) AS BIGINT) AS total FROM metric_counters \
             GROUP BY name, template_name, preset_name ORDER BY name, template_name, preset_name",
        )
        .fetch_all(&self.pool)
        .await
        .db("reading counters")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = col(row, "name")?;
            out.push(CounterValue {
                name: CounterName::parse(&name)
                    .ok_or_else(|| StoreError::corrupt(format!("counter {name:?}")))?,
                template: col(row, "template_name")?,
                preset: col(row, "preset_name")?,
                value: to_u64(col(row, "total")?, "counter value")?,
            });
        }
        Ok(out)
    }

    async fn claim_events(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<ClaimEvent>> {
        let rows = sqlx::query(
            "SELECT preset_id, template_name, preset_name, kind, created_at FROM claim_events \
             WHERE created_at >= $1 ORDER BY created_at, id",
        )
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await
        .db("reading claim events")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: String = col(row, "kind")?;
            out.push(ClaimEvent {
                preset_id: PresetId::new(col::<String>(row, "preset_id")?),
                template: col(row, "template_name")?,
                preset: col(row, "preset_name")?,
                kind: ClaimEventKind::parse(&kind)
                    .ok_or_else(|| StoreError::corrupt(format!("claim event kind {kind:?}")))?,
                at: from_ms(col(row, "created_at")?, "claim event created_at")?,
            });
        }
        Ok(out)
    }

    async fn idempotency_begin(
        &self,
        owner: &str,
        key: &str,
        request: &serde_json::Value,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<IdempotencyBegin> {
        let now = ms(now_dt);
        let request_text = request.to_string();
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (owner, key, request, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner, key) DO NOTHING",
        )
        .bind(owner)
        .bind(key)
        .bind(&request_text)
        .bind(now)
        .execute(tx.conn())
        .await
        .db("recording an idempotency key")?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            return Ok(IdempotencyBegin::Started);
        }
        let row = sqlx::query(concat!(
            "SELECT request, status, response, created_at FROM idempotency_keys WHERE owner = $1 AND key = $2",
            for_update!()
        ))
        .bind(owner)
        .bind(key)
        .fetch_one(tx.conn())
        .await
        .db("reading an idempotency key")?;
        let created_at: i64 = col(&row, "created_at")?;
        if created_at < now - IDEMPOTENCY_KEPT_MS {
            sqlx::query(
                "UPDATE idempotency_keys SET request = $1, status = NULL, response = NULL, created_at = $2 \
                 WHERE owner = $3 AND key = $4",
            )
            .bind(&request_text)
            .bind(now)
            .bind(owner)
            .bind(key)
            .execute(tx.conn())
            .await
            .db("renewing an idempotency key")?;
            tx.commit().await?;
            return Ok(IdempotencyBegin::Started);
        }
        let stored: String = col(&row, "request")?;
        let stored: serde_json::Value = serde_json::from_str(&stored)
            .map_err(|e| StoreError::corrupt(format!("idempotency request: {e}")))?;
        let status: Option<i64> = col(&row, "status")?;
        let response: Option<String> = col(&row, "response")?;
        tx.commit().await?;
        if &stored != request {
            return Ok(IdempotencyBegin::Conflict);
        }
        match (status, response) {
            (Some(status), Some(body)) => Ok(IdempotencyBegin::Replay {
                status: u16::try_from(status)
                    .map_err(|_| StoreError::corrupt(format!("idempotency status {status}")))?,
                body: serde_json::from_str(&body)
                    .map_err(|e| StoreError::corrupt(format!("idempotency response: {e}")))?,
            }),
            _ => Ok(IdempotencyBegin::InFlight),
        }
    }

    async fn idempotency_finish(
        &self,
        owner: &str,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE idempotency_keys SET status = $1, response = $2 WHERE owner = $3 AND key = $4",
        )
        .bind(i64::from(status))
        .bind(body.to_string())
        .bind(owner)
        .bind(key)
        .execute(tx.conn())
        .await
        .db("storing an idempotent answer")?
        .rows_affected();
        if done == 0 {
            return Err(StoreError::not_found(format!("idempotency key {key}")));
        }
        tx.commit().await
    }

    async fn idempotency_release(&self, owner: &str, key: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND status IS NULL",
        )
        .bind(owner)
        .bind(key)
        .execute(tx.conn())
        .await
        .db("releasing an idempotency key")?;
        tx.commit().await
    }

    async fn prune(&self, now: chrono::DateTime<chrono::Utc>) -> StoreResult<()> {
        let now = ms(now);
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM claim_events WHERE created_at < $1")
            .bind(now - CLAIM_EVENTS_KEPT_MS)
            .execute(tx.conn())
            .await
            .db("pruning claim events")?;
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(now - IDEMPOTENCY_KEPT_MS)
            .execute(tx.conn())
            .await
            .db("pruning idempotency keys")?;
        tx.commit().await
    }

    async fn record_tick(&self, tick: &TickRecord) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO reconciler_ticks (name, replica_id, started_at, finished_at, summary) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET replica_id = excluded.replica_id, started_at = excluded.started_at, \
                                             finished_at = excluded.finished_at, summary = excluded.summary",
        )
        .bind(LAST_TICK)
        .bind(&tick.replica_id)
        .bind(ms(tick.started_at))
        .bind(ms(tick.finished_at))
        .bind(tick.summary.to_string())
        .execute(tx.conn())
        .await
        .db("recording a tick")?;
        tx.commit().await
    }

    async fn last_tick(&self) -> StoreResult<Option<TickRecord>> {
        let row = sqlx::query("SELECT replica_id, started_at, finished_at, summary FROM reconciler_ticks WHERE name = $1")
            .bind(LAST_TICK)
            .fetch_optional(&self.pool)
            .await
            .db("reading the last tick")?;
        let Some(row) = row else { return Ok(None) };
        let summary: String = col(&row, "summary")?;
        Ok(Some(TickRecord {
            replica_id: col(&row, "replica_id")?,
            started_at: from_ms(col(&row, "started_at")?, "tick started_at")?,
            finished_at: from_ms(col(&row, "finished_at")?, "tick finished_at")?,
            summary: serde_json::from_str(&summary)
                .map_err(|e| StoreError::corrupt(format!("tick summary: {e}")))?,
        }))
    }
}

/// The `start` build that follows a claim of a `claim_build` template, with the new owner.
async fn insert_claim_build(
    conn: &mut DbConn,
    workspace_id: &str,
    owner: &str,
    now_dt: chrono::DateTime<chrono::Utc>,
) -> StoreResult<BuildRecord> {
    let live = lock_live_workspace(conn, workspace_id).await?;
    let id = new_id(now_dt);
    insert_build(
        conn,
        &NewBuild {
            id: id.clone(),
            workspace_id,
            number: live.number + 1,
            transition: Transition::Start,
            version_id: &live.version_id,
            preset_id: live.preset_id.as_deref(),
            initiator: owner,
            is_prebuild: false,
            is_claim: true,
            from_reconciler: false,
            status: JobStatus::Pending,
            completed_at: None,
            now: ms(now_dt),
        },
    )
    .await?;
    must_load_build(conn, &id).await
}

fn check_owner(owner: &str) -> StoreResult<()> {
    if owner == PREBUILDS_OWNER {
        return Err(StoreError::Invalid(format!(
            "owner: {PREBUILDS_OWNER:?} is reserved for the pool"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The trait

impl Store for ThisStore {
    type Lock = ThisLock;

    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .db("pinging the database")?;
        Ok(())
    }

    async fn try_lock_reconciliation(&self) -> StoreResult<Option<ThisLock>> {
        try_lock_impl(&self.inner).await
    }

    async fn snapshot(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        config: PlannerConfig,
    ) -> StoreResult<Snapshot> {
        let mut conn = self.inner.pool.acquire().await.db("connecting")?;
        snapshot_on(&mut conn, now, config).await
    }

    async fn record_tick(&self, tick: &TickRecord) -> StoreResult<()> {
        self.inner.record_tick(tick).await
    }

    async fn last_tick(&self) -> StoreResult<Option<TickRecord>> {
        self.inner.last_tick().await
    }

    async fn apply_template(
        &self,
        spec: &TemplateSpec,
        applied_by: AppliedBy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<ApplyResult> {
        self.inner.apply_template(spec, applied_by, now).await
    }

    async fn delete_template(
        &self,
        name: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner.delete_template(name, now).await
    }

    async fn list_templates(&self) -> StoreResult<Vec<TemplateInfo>> {
        self.inner.list_templates(None).await
    }

    async fn get_template(&self, name: &str) -> StoreResult<Option<TemplateInfo>> {
        Ok(self
            .inner
            .list_templates(Some(name))
            .await?
            .into_iter()
            .next())
    }

    async fn active_preset(&self, template: &str, preset: &str) -> StoreResult<Option<PresetInfo>> {
        self.inner.active_preset(template, preset).await
    }

    async fn set_preset_paused(
        &self,
        template: &str,
        preset: &str,
        paused: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner
            .set_preset_paused(template, preset, paused, now)
            .await
    }

    async fn invalidate_preset(
        &self,
        template: &str,
        preset: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<u64> {
        self.inner.invalidate_preset(template, preset, now).await
    }

    async fn set_preset_status(
        &self,
        preset: &PresetId,
        status: PresetStatus,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner
            .update_preset(
                preset,
                "UPDATE presets SET updated_at = $2, status = $3 WHERE id = $1",
                Some(status),
                now,
                "setting a preset's status",
            )
            .await
    }

    async fn record_creation_failure(
        &self,
        preset: &PresetId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner
            .update_preset(
                preset,
                "UPDATE presets SET creation_failures = creation_failures + 1, last_creation_failure_at = $2 \
                 WHERE id = $1",
                None,
                now,
                "recording a creation failure",
            )
            .await
    }

    async fn record_creation_success(
        &self,
        preset: &PresetId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner
            .update_preset(
                preset,
                "UPDATE presets SET creation_failures = 0, last_creation_failure_at = NULL, \
                        updated_at = CASE WHEN creation_failures > 0 THEN $2 ELSE updated_at END \
                 WHERE id = $1",
                None,
                now,
                "clearing creation failures",
            )
            .await
    }

    async fn settings(&self) -> StoreResult<Settings> {
        let mut conn = self.inner.pool.acquire().await.db("connecting")?;
        read_settings(&mut conn).await
    }

    async fn set_reconciliation_paused(
        &self,
        paused: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner.set_reconciliation_paused(paused, now).await
    }

    async fn create_prebuild(
        &self,
        preset: &PresetId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<CreatedPrebuild> {
        self.inner.create_prebuild(preset, now).await
    }

    async fn delete_prebuild(
        &self,
        workspace: &WorkspaceId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<BuildRecord> {
        self.inner.delete_prebuild(workspace, now).await
    }

    async fn cancel_pending_prebuilds(
        &self,
        preset: &PresetId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<WorkspaceId>> {
        self.inner.cancel_pending_prebuilds(preset, now).await
    }

    async fn claim(
        &self,
        request: &ClaimRequest,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<ClaimOutcome> {
        check_owner(&request.owner)?;
        claim_impl(&self.inner, request, now).await
    }

    async fn create_workspace(
        &self,
        request: &ClaimRequest,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<(WorkspaceRecord, BuildRecord)> {
        self.inner.create_workspace(request, now).await
    }

    async fn enqueue_build(
        &self,
        workspace: &WorkspaceId,
        transition: Transition,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<BuildRecord> {
        self.inner.enqueue_build(workspace, transition, now).await
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> StoreResult<Option<WorkspaceRecord>> {
        let mut conn = self.inner.pool.acquire().await.db("connecting")?;
        load_workspace(&mut conn, id.as_str()).await
    }

    async fn list_workspaces(&self, filter: &WorkspaceFilter) -> StoreResult<Vec<WorkspaceRecord>> {
        self.inner.list_workspaces(filter).await
    }

    async fn list_builds(&self, workspace: &WorkspaceId) -> StoreResult<Vec<BuildRecord>> {
        let rows = sqlx::query(concat!(
            build_select!(),
            "WHERE b.workspace_id = $1 ORDER BY b.number DESC"
        ))
        .bind(workspace.as_str())
        .fetch_all(&self.inner.pool)
        .await
        .db("listing builds")?;
        rows.iter().map(build_from_row).collect()
    }

    async fn get_build(&self, id: &BuildId) -> StoreResult<Option<BuildRecord>> {
        let mut conn = self.inner.pool.acquire().await.db("connecting")?;
        load_build(&mut conn, id.as_str()).await
    }

    async fn build_log(&self, id: &BuildId) -> StoreResult<Option<String>> {
        let row: Option<Option<String>> =
            sqlx::query_scalar("SELECT log FROM builds WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.inner.pool)
                .await
                .db("reading a build log")?;
        Ok(row.map(Option::unwrap_or_default))
    }

    async fn acquire_job(
        &self,
        worker: &str,
        lease: chrono::TimeDelta,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Option<AcquiredJob>> {
        self.inner.acquire_job(worker, lease, now).await
    }

    async fn renew_lease(
        &self,
        job: &JobId,
        token: &str,
        lease: chrono::TimeDelta,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<chrono::DateTime<chrono::Utc>> {
        self.inner.renew_lease(job, token, lease, now).await
    }

    async fn record_job_process(
        &self,
        job: &JobId,
        token: &str,
        process: &ProcessRecord,
    ) -> StoreResult<()> {
        self.inner.record_job_process(job, token, process).await
    }

    async fn complete_job(
        &self,
        job: &JobId,
        token: &str,
        outcome: &JobOutcome,
        log: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner.complete_job(job, token, outcome, log, now).await
    }

    async fn expired_leases(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<ExpiredLease>> {
        self.inner.expired_leases(now).await
    }

    async fn requeue_expired(
        &self,
        job: &JobId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<RequeueOutcome> {
        self.inner.requeue_expired(job, now).await
    }

    async fn expire_all_leases(&self, now: chrono::DateTime<chrono::Utc>) -> StoreResult<u64> {
        self.inner.expire_all_leases(now).await
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        self.inner.job_counts().await
    }

    async fn counters(&self) -> StoreResult<Vec<CounterValue>> {
        self.inner.counters().await
    }

    async fn claim_events(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<ClaimEvent>> {
        self.inner.claim_events(since).await
    }

    async fn idempotency_begin(
        &self,
        owner: &str,
        key: &str,
        request: &serde_json::Value,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<IdempotencyBegin> {
        self.inner.idempotency_begin(owner, key, request, now).await
    }

    async fn idempotency_finish(
        &self,
        owner: &str,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> StoreResult<()> {
        self.inner
            .idempotency_finish(owner, key, status, body)
            .await
    }

    async fn idempotency_release(&self, owner: &str, key: &str) -> StoreResult<()> {
        self.inner.idempotency_release(owner, key).await
    }

    async fn prune(&self, now: chrono::DateTime<chrono::Utc>) -> StoreResult<()> {
        self.inner.prune(now).await
    }

    async fn notification_states(&self) -> StoreResult<Vec<NotificationState>> {
        self.inner.notification_states().await
    }

    async fn record_notifications(
        &self,
        changes: &[NotificationChange],
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner.record_notifications(changes, now).await
    }

    async fn take_notifications(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> StoreResult<Vec<PendingNotification>> {
        self.inner.take_notifications(now, lease, limit).await
    }

    async fn finish_notification(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        self.inner.finish_notification(id, outcome, now).await
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Notifications

impl Inner {
    async fn notification_states(&self) -> StoreResult<Vec<NotificationState>> {
        let rows = sqlx::query(
            "SELECT webhook, template_name, preset_name, state FROM notification_state \
             ORDER BY webhook, template_name, preset_name",
        )
        .fetch_all(&self.pool)
        .await
        .db("reading notification states")?;
        rows.iter()
            .map(|row| {
                let state: String = col(row, "state")?;
                Ok(NotificationState {
                    webhook: col(row, "webhook")?,
                    template: col(row, "template_name")?,
                    preset: col(row, "preset_name")?,
                    state: serde_json::from_str(&state)
                        .map_err(|e| StoreError::corrupt(format!("notification state: {e}")))?,
                })
            })
            .collect()
    }

    async fn record_notifications(
        &self,
        changes: &[NotificationChange],
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        for change in changes {
            sqlx::query(
                "INSERT INTO notification_state (webhook, template_name, preset_name, state, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (webhook, template_name, preset_name) \
                 DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(&change.webhook)
            .bind(&change.template)
            .bind(&change.preset)
            .bind(change.state.to_string())
            .bind(now)
            .execute(tx.conn())
            .await
            .db("writing a notification state")?;
            for payload in &change.payloads {
                sqlx::query(
                    "INSERT INTO notification_outbox (id, webhook, payload, attempts, next_attempt_at, created_at) \
                     VALUES ($1, $2, $3, 0, $4, $5)",
                )
                .bind(new_id(now_dt))
                .bind(&change.webhook)
                .bind(payload.to_string())
                .bind(now)
                .bind(now)
                .execute(tx.conn())
                .await
                .db("queueing a notification")?;
            }
        }
        tx.commit().await
    }

    async fn take_notifications(
        &self,
        now_dt: chrono::DateTime<chrono::Utc>,
        lease: chrono::TimeDelta,
        limit: u32,
    ) -> StoreResult<Vec<PendingNotification>> {
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        // The criteria are in the UPDATE itself: a row another replica took meanwhile is not taken again.
        let rows = sqlx::query(
            "UPDATE notification_outbox SET lease_until = $1 \
             WHERE id IN (SELECT id FROM notification_outbox \
                          WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $2 \
                            AND (lease_until IS NULL OR lease_until < $2) \
                          ORDER BY created_at, id LIMIT $3) \
               AND delivered_at IS NULL AND gave_up_at IS NULL AND (lease_until IS NULL OR lease_until < $2) \
             RETURNING id, webhook, payload, attempts, created_at",
        )
        .bind(now + lease.num_milliseconds())
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(tx.conn())
        .await
        .db("taking notifications")?;
        tx.commit().await?;
        let mut taken = rows
            .iter()
            .map(|row| {
                let payload: String = col(row, "payload")?;
                Ok(PendingNotification {
                    id: col(row, "id")?,
                    webhook: col(row, "webhook")?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| StoreError::corrupt(format!("notification payload: {e}")))?,
                    attempts: to_u32(col(row, "attempts")?, "notification attempts")?,
                    created_at: from_ms(col(row, "created_at")?, "notification created_at")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        taken.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(taken)
    }

    async fn finish_notification(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now_dt: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<()> {
        let now = ms(now_dt);
        let mut tx = self.begin_write().await?;
        let query = match outcome {
            DeliveryOutcome::Delivered => sqlx::query(
                "UPDATE notification_outbox SET delivered_at = $1, lease_until = NULL, attempts = attempts + 1 \
                 WHERE id = $2",
            )
            .bind(now)
            .bind(id),
            DeliveryOutcome::RetryAt { at, error } => sqlx::query(
                "UPDATE notification_outbox SET next_attempt_at = $1, lease_until = NULL, attempts = attempts + 1, \
                        last_error = $2 WHERE id = $3",
            )
            .bind(ms(*at))
            .bind(error)
            .bind(id),
            DeliveryOutcome::GaveUp { error } => sqlx::query(
                "UPDATE notification_outbox SET gave_up_at = $1, lease_until = NULL, attempts = attempts + 1, \
                        last_error = $2 WHERE id = $3",
            )
            .bind(now)
            .bind(error)
            .bind(id),
        };
        query
            .execute(tx.conn())
            .await
            .db("finishing a notification")?;
        tx.commit().await
    }
}

/// The snapshot on one connection, in the backend's snapshot transaction.
async fn snapshot_on(
    conn: &mut DbConn,
    now: chrono::DateTime<chrono::Utc>,
    config: PlannerConfig,
) -> StoreResult<Snapshot> {
    let mut tx = begin_snapshot(conn).await?;
    let snapshot = read_snapshot(&mut tx, now, config).await?;
    tx.commit().await.db("ending the snapshot transaction")?;
    Ok(snapshot)
}

impl ReconcileLock for ThisLock {
    async fn snapshot(
        &mut self,
        now: chrono::DateTime<chrono::Utc>,
        config: PlannerConfig,
    ) -> StoreResult<Snapshot> {
        self.snapshot_impl(now, config).await
    }

    async fn release(self) -> StoreResult<()> {
        self.release_impl().await
    }
}
