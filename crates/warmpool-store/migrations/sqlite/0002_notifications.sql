-- Webhook notifications (SPEC section 8). The last state notified per webhook and preset (by names, so a change of
-- version is a change of state like any other), and an outbox of payloads to deliver: both are written in the same
-- transaction, so a restart or a change of lock holder neither repeats nor loses a notification.
CREATE TABLE notification_state (
    webhook       TEXT NOT NULL,
    template_name TEXT NOT NULL,
    preset_name   TEXT NOT NULL,
    state         TEXT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (webhook, template_name, preset_name)
);

CREATE TABLE notification_outbox (
    id              TEXT PRIMARY KEY,
    webhook         TEXT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    gave_up_at      BIGINT,
    last_error      TEXT
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
