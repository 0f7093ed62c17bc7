//! Webhook notifications (SPEC section 8): a preset entering `hard_limited` or `validation_failed`, entering or
//! leaving backoff (event `backoff`, told apart by `detail`), a
//! pool with `desired > 0` staying without an eligible prebuild for `pool_empty_after`, and `recovered` when a
//! preset that was notified about is again healthy, not backing off, with an eligible prebuild.
//!
//! Two halves:
//! - [`Notifier::observe`] runs inside the reconciler's tick, under the reconciliation lock, on the tick's
//!   snapshot and plan. It compares each active preset's condition with the last state notified (stored per
//!   webhook and preset) and writes the new states and the payloads they send in one transaction. Because the
//!   state lives in the database and only the lock holder writes it, a restart or a change of lock holder neither
//!   repeats nor loses a notification. It never talks to a webhook, so it never blocks the reconciler on one.
//! - [`deliver`] runs in every `serve` process: it takes due payloads from the outbox under a short lease, POSTs
//!   them, and retries failures with exponential backoff from 1 s to 5 min for up to 1 h.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use warmpool_core::model::PresetStatus;
use warmpool_core::plan::{TargetSource, format_timestamp};
use warmpool_store::{DeliveryOutcome, NotificationChange, Store, StoreError};

use crate::clock::Clock;
use crate::config::{NotificationEvent, WebhookConfig};
use crate::executor::chain;
use crate::reconciler::Observed;

/// The first retry of a failed delivery; doubling up to [`MAX_RETRY`].
pub const FIRST_RETRY: TimeDelta = TimeDelta::seconds(1);
pub const MAX_RETRY: TimeDelta = TimeDelta::minutes(5);
/// The `detail` of the `backoff` event when a preset enters, and when it leaves, backoff.
pub const BACKOFF_ENTERED: &str = "backoff started: creation is held after failures";
pub const BACKOFF_LEFT: &str = "backoff ended";
/// A payload not delivered this long after it was queued is given up.
pub const GIVE_UP_AFTER: TimeDelta = TimeDelta::hours(1);

/// What was last notified for one webhook and preset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct State {
    status: PresetStatus,
    backoff: bool,
    /// Since when the pool has had no eligible prebuild while `desired > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    empty_since: Option<DateTime<Utc>>,
    /// `pool_empty` was sent for the current empty spell.
    #[serde(default)]
    empty_notified: bool,
    /// Something bad was notified since the last `recovered`.
    #[serde(default)]
    troubled: bool,
}

/// Computes notifications from ticks; see the module docs.
#[derive(Debug)]
pub struct Notifier<S: Store> {
    pub store: Arc<S>,
    pub webhooks: Vec<WebhookConfig>,
}

fn event_name(event: NotificationEvent) -> &'static str {
    match event {
        NotificationEvent::HardLimited => "hard_limited",
        NotificationEvent::ValidationFailed => "validation_failed",
        NotificationEvent::Backoff => "backoff",
        NotificationEvent::Recovered => "recovered",
        NotificationEvent::PoolEmpty => "pool_empty",
    }
}

impl<S: Store> Notifier<S> {
    /// Records the state changes of this tick and queues their payloads. Errors are logged, never fatal.
    pub async fn observe(&self, observed: &Observed, now: DateTime<Utc>) {
        if self.webhooks.is_empty() {
            return;
        }
        if let Err(err) = self.try_observe(observed, now).await {
            warn!(error = %chain(&err), "cannot record notifications");
        }
    }

    async fn try_observe(&self, observed: &Observed, now: DateTime<Utc>) -> Result<(), StoreError> {
        let stored = self.store.notification_states().await?;
        let mut changes = Vec::new();
        for webhook in &self.webhooks {
            for (preset, entry) in observed.snapshot.presets.iter().zip(&observed.plan.presets) {
                if !preset.active || entry.state.target_source == TargetSource::None {
                    continue;
                }
                let previous: State = stored
                    .iter()
                    .find(|s| {
                        s.webhook == webhook.url
                            && s.template == preset.template
                            && s.preset == preset.preset
                    })
                    .and_then(|s| serde_json::from_value(s.state.clone()).ok())
                    .unwrap_or_default();
                let backoff = entry.backoff_until().is_some();
                let empty = entry.state.desired > 0 && entry.state.eligible == 0;
                let mut next = State {
                    status: entry.status,
                    backoff,
                    empty_since: if empty {
                        previous.empty_since.or(Some(now))
                    } else {
                        None
                    },
                    empty_notified: empty && previous.empty_notified,
                    troubled: previous.troubled,
                };
                let mut events: Vec<(NotificationEvent, String)> = Vec::new();
                if next.status == PresetStatus::HardLimited
                    && previous.status != PresetStatus::HardLimited
                {
                    events.push((
                        NotificationEvent::HardLimited,
                        "the newest builds all failed".into(),
                    ));
                }
                if next.status == PresetStatus::ValidationFailed
                    && previous.status != PresetStatus::ValidationFailed
                {
                    events.push((
                        NotificationEvent::ValidationFailed,
                        "a required parameter has no value".into(),
                    ));
                }
                if next.backoff && !previous.backoff {
                    events.push((NotificationEvent::Backoff, BACKOFF_ENTERED.into()));
                }
                if let Some(since) = next.empty_since
                    && !next.empty_notified
                    && now - since >= webhook.pool_empty_after.to_time_delta()
                {
                    next.empty_notified = true;
                    events.push((
                        NotificationEvent::PoolEmpty,
                        format!("no eligible prebuild since {}", format_timestamp(&since)),
                    ));
                }
                if !events.is_empty() {
                    next.troubled = true;
                }
                // Leaving backoff is a change of state too, but not trouble: it does not hold back `recovered`.
                if previous.backoff && !next.backoff {
                    events.push((NotificationEvent::Backoff, BACKOFF_LEFT.into()));
                }
                let only_left_backoff =
                    events.iter().all(|(e, _)| *e == NotificationEvent::Backoff) && !next.backoff;
                if only_left_backoff
                    && previous.troubled
                    && next.status == PresetStatus::Healthy
                    && !next.backoff
                    && entry.state.eligible > 0
                {
                    next.troubled = false;
                    events.push((
                        NotificationEvent::Recovered,
                        "healthy with an eligible prebuild".into(),
                    ));
                }
                if next == previous && events.is_empty() {
                    continue;
                }
                let payloads = events
                    .into_iter()
                    .filter(|(event, _)| webhook.events.contains(event))
                    .map(|(event, detail)| {
                        json!({
                            "event": event_name(event),
                            "template": preset.template,
                            "preset": preset.preset,
                            "status": next.status.as_str(),
                            "at": format_timestamp(&now),
                            "detail": detail,
                        })
                    })
                    .collect::<Vec<Value>>();
                for payload in &payloads {
                    info!(webhook = %webhook.url, payload = %payload, "notification queued");
                }
                changes.push(NotificationChange {
                    webhook: webhook.url.clone(),
                    template: preset.template.clone(),
                    preset: preset.preset.clone(),
                    state: serde_json::to_value(&next).unwrap_or(Value::Null),
                    payloads,
                });
            }
        }
        self.store.record_notifications(&changes, now).await
    }
}

/// The wait before the next attempt after `attempts` failed ones (1 s, 2 s, 4 s, ... 5 min).
pub fn retry_delay(attempts: u32) -> TimeDelta {
    let doublings = attempts.min(20);
    FIRST_RETRY
        .checked_mul(1 << doublings)
        .unwrap_or(MAX_RETRY)
        .min(MAX_RETRY)
}

/// Delivers due payloads until `stop`: polls the outbox every `every`.
pub async fn deliver<S: Store>(
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    every: StdDuration,
    stop: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(StdDuration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(err) => {
            warn!(error = %err, "cannot create the webhook client; notifications are not delivered");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let due = match store
            .take_notifications(clock.now(), TimeDelta::seconds(30), 16)
            .await
        {
            Ok(due) => due,
            Err(err) => {
                warn!(error = %chain(&err), "cannot read the notification outbox");
                continue;
            }
        };
        for pending in due {
            let result = http
                .post(&pending.webhook)
                .json(&pending.payload)
                .send()
                .await;
            let now = clock.now();
            let error = match result {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("the webhook answered {}", response.status())),
                Err(err) => Some(format!("cannot reach the webhook: {err}")),
            };
            let outcome = match error {
                None => DeliveryOutcome::Delivered,
                Some(error) if now - pending.created_at >= GIVE_UP_AFTER => {
                    warn!(webhook = %pending.webhook, error = %error, "notification given up after an hour");
                    DeliveryOutcome::GaveUp { error }
                }
                Some(error) => {
                    warn!(webhook = %pending.webhook, error = %error, attempts = pending.attempts + 1, "notification not delivered; retrying");
                    DeliveryOutcome::RetryAt {
                        at: now + retry_delay(pending.attempts),
                        error,
                    }
                }
            };
            if let Err(err) = store.finish_notification(&pending.id, &outcome, now).await {
                warn!(error = %chain(&err), "cannot record a notification's delivery");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_one_second_to_five_minutes() {
        assert_eq!(retry_delay(0), TimeDelta::seconds(1));
        assert_eq!(retry_delay(1), TimeDelta::seconds(2));
        assert_eq!(retry_delay(5), TimeDelta::seconds(32));
        assert_eq!(retry_delay(9), TimeDelta::minutes(5));
        assert_eq!(retry_delay(1000), TimeDelta::minutes(5));
    }
}
