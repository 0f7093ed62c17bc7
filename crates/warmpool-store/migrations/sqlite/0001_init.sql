-- warmpool schema, SQLite. Kept column for column identical to migrations/postgres (a test checks it).
-- Every timestamp is BIGINT Unix milliseconds, written from the `now` the caller passes in: SQL never reads a clock.
-- Every id is TEXT (a UUID v7 minted by the store). Booleans are BOOLEAN.

CREATE TABLE templates (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    active_version_id   TEXT REFERENCES template_versions (id),
    last_version_number BIGINT NOT NULL DEFAULT 0,
    max_workspaces      BIGINT,
    claim_build         BOOLEAN NOT NULL DEFAULT FALSE,
    applied_by          TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    deleted_at          BIGINT
);

CREATE TABLE template_versions (
    id          TEXT PRIMARY KEY,
    template_id TEXT NOT NULL REFERENCES templates (id),
    number      BIGINT NOT NULL,
    name        TEXT NOT NULL,
    definition  TEXT NOT NULL,
    applied_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (template_id, number)
);

CREATE TABLE template_parameters (
    version_id    TEXT NOT NULL REFERENCES template_versions (id),
    position      BIGINT NOT NULL,
    name          TEXT NOT NULL,
    required      BOOLEAN NOT NULL,
    default_value TEXT,
    sensitive     BOOLEAN NOT NULL,
    PRIMARY KEY (version_id, name)
);

CREATE TABLE presets (
    id                       TEXT PRIMARY KEY,
    template_id              TEXT NOT NULL REFERENCES templates (id),
    version_id               TEXT NOT NULL REFERENCES template_versions (id),
    name                     TEXT NOT NULL,
    instances                BIGINT,
    ttl_ms                   BIGINT,
    scheduling_timezone      TEXT,
    status                   TEXT NOT NULL DEFAULT 'healthy',
    invalidated_at           BIGINT,
    creation_failures        BIGINT NOT NULL DEFAULT 0,
    last_creation_failure_at BIGINT,
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL,
    UNIQUE (version_id, name)
);

CREATE TABLE preset_parameters (
    preset_id TEXT NOT NULL REFERENCES presets (id),
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (preset_id, name)
);

CREATE TABLE preset_schedules (
    preset_id TEXT NOT NULL REFERENCES presets (id),
    position  BIGINT NOT NULL,
    cron      TEXT NOT NULL,
    instances BIGINT NOT NULL,
    PRIMARY KEY (preset_id, position)
);

-- Per-preset pause, kept by names so that it survives new versions.
CREATE TABLE preset_settings (
    template_name TEXT NOT NULL,
    preset_name   TEXT NOT NULL,
    paused        BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (template_name, preset_name)
);

-- latest_* mirror the workspace's highest-numbered build and are updated in the same transaction as it, so the
-- snapshot and the claim never look for "the latest build" (latest_build_id has no foreign key: builds reference
-- workspaces, and both rows are written together).
CREATE TABLE workspaces (
    id                      TEXT PRIMARY KEY,
    template_id             TEXT NOT NULL REFERENCES templates (id),
    preset_id               TEXT REFERENCES presets (id),
    owner                   TEXT NOT NULL,
    name                    TEXT NOT NULL,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL,
    claimed_at              BIGINT,
    deleted_at              BIGINT,
    outputs                 TEXT,
    latest_build_id         TEXT NOT NULL,
    latest_build_number     BIGINT NOT NULL,
    latest_transition       TEXT NOT NULL,
    latest_status           TEXT NOT NULL,
    latest_build_created_at BIGINT NOT NULL,
    latest_version_id       TEXT NOT NULL REFERENCES template_versions (id),
    latest_picked_up        BOOLEAN NOT NULL
);

CREATE UNIQUE INDEX workspaces_owner_name ON workspaces (owner, name) WHERE deleted_at IS NULL;
-- The claim: an index probe on one preset's ready prebuilds, oldest first.
CREATE INDEX workspaces_ready_prebuilds ON workspaces (preset_id, created_at, id)
    WHERE owner = 'prebuilds' AND deleted_at IS NULL AND latest_transition = 'start' AND latest_status = 'succeeded';
-- The snapshot and the preset filter: live prebuilds by preset.
CREATE INDEX workspaces_prebuilds ON workspaces (preset_id) WHERE owner = 'prebuilds' AND deleted_at IS NULL;
-- The quota: live workspaces of a template.
CREATE INDEX workspaces_live_by_template ON workspaces (template_id) WHERE deleted_at IS NULL;

-- A build and its provisioner job are one row: a build has exactly one job.
CREATE TABLE builds (
    id                 TEXT PRIMARY KEY,
    workspace_id       TEXT NOT NULL REFERENCES workspaces (id),
    number             BIGINT NOT NULL,
    transition         TEXT NOT NULL,
    version_id         TEXT NOT NULL REFERENCES template_versions (id),
    preset_id          TEXT REFERENCES presets (id),
    initiator          TEXT NOT NULL,
    is_prebuild        BOOLEAN NOT NULL,
    is_claim           BOOLEAN NOT NULL,
    created_at         BIGINT NOT NULL,
    status             TEXT NOT NULL,
    priority           BIGINT NOT NULL,
    not_before         BIGINT,
    attempts           BIGINT NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_token        TEXT,
    lease_expires_at   BIGINT,
    process_pgid       BIGINT,
    process_boot_id    TEXT,
    process_start_time BIGINT,
    started_at         BIGINT,
    completed_at       BIGINT,
    canceled_at        BIGINT,
    error              TEXT,
    log                TEXT,
    UNIQUE (workspace_id, number)
);

-- The queue: runnable jobs in acquisition order (priority = user before prebuild; delete, stop, start).
CREATE INDEX builds_queue ON builds (priority, created_at, id) WHERE status = 'pending';
CREATE INDEX builds_leases ON builds (lease_expires_at) WHERE status = 'running';
CREATE INDEX builds_pending_first ON builds (preset_id) WHERE status = 'pending' AND number = 1;

CREATE TABLE claim_events (
    id            TEXT PRIMARY KEY,
    preset_id     TEXT NOT NULL REFERENCES presets (id),
    template_name TEXT NOT NULL,
    preset_name   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX claim_events_created ON claim_events (created_at);
CREATE INDEX claim_events_preset ON claim_events (preset_id, created_at);

-- Monotonic counters of SPEC section 8, summed over shards at scrape time (shards keep concurrent claims off
-- one hot row).
CREATE TABLE metric_counters (
    name          TEXT NOT NULL,
    template_name TEXT NOT NULL,
    preset_name   TEXT NOT NULL,
    shard         BIGINT NOT NULL,
    value         BIGINT NOT NULL,
    PRIMARY KEY (name, template_name, preset_name, shard)
);

CREATE TABLE idempotency_keys (
    owner      TEXT NOT NULL,
    key        TEXT NOT NULL,
    request    TEXT NOT NULL,
    status     BIGINT,
    response   TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE reconciler_ticks (
    name        TEXT PRIMARY KEY,
    replica_id  TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    summary     TEXT NOT NULL
);
