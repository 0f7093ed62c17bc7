//! The notification outbox and states, on both backends: states and payloads are written together, a payload is
//! handed to one deliverer at a time (under a lease), retried when told so, and never again once delivered or
//! given up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use warmpool_store::{DeliveryOutcome, NotificationChange, Store};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-02T00:00:00Z")
        .unwrap()
        .to_utc()
}

async fn outbox_round_trip<S: Store>(store: &S) {
    let lease = TimeDelta::seconds(30);
    assert!(store.notification_states().await.unwrap().is_empty());
    let change = |state: &str, payloads: Vec<serde_json::Value>| NotificationChange {
        webhook: "http://127.0.0.1:9/hook".into(),
        template: "devbox".into(),
        preset: "small".into(),
        state: json!({"status": state}),
        payloads,
    };
    store
        .record_notifications(
            &[change(
                "hard_limited",
                vec![json!({"event": "hard_limited", "n": 1})],
            )],
            t0(),
        )
        .await
        .unwrap();
    let states = store.notification_states().await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].state, json!({"status": "hard_limited"}));

    // Taken once, under a lease: a second taker gets nothing until the lease ends.
    let taken = store.take_notifications(t0(), lease, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].payload, json!({"event": "hard_limited", "n": 1}));
    assert_eq!(taken[0].attempts, 0);
    assert!(
        store
            .take_notifications(t0(), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A lost deliverer: after its lease, the payload is taken again.
    let again = store
        .take_notifications(t0() + TimeDelta::seconds(31), lease, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);

    // Retry later: not due before `at`, due at `at`, with the attempt counted.
    let at = t0() + TimeDelta::seconds(40);
    store
        .finish_notification(
            &again[0].id,
            &DeliveryOutcome::RetryAt {
                at,
                error: "503".into(),
            },
            t0(),
        )
        .await
        .unwrap();
    assert!(
        store
            .take_notifications(at - TimeDelta::milliseconds(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = store.take_notifications(at, lease, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    store
        .finish_notification(&due[0].id, &DeliveryOutcome::Delivered, at)
        .await
        .unwrap();
    assert!(
        store
            .take_notifications(at + TimeDelta::hours(2), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A new state replaces the old one; a change without payloads queues nothing; given up is never retried.
    store
        .record_notifications(
            &[
                change("healthy", vec![json!({"event": "recovered"})]),
                change("healthy", vec![]),
            ],
            at,
        )
        .await
        .unwrap();
    let states = store.notification_states().await.unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].state, json!({"status": "healthy"}));
    let taken = store.take_notifications(at, lease, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    store
        .finish_notification(
            &taken[0].id,
            &DeliveryOutcome::GaveUp {
                error: "timeout".into(),
            },
            at,
        )
        .await
        .unwrap();
    assert!(
        store
            .take_notifications(at + TimeDelta::hours(2), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_round_trip() {
    let (store, _dir) = warmpool_store::testing::sqlite_store().await.unwrap();
    outbox_round_trip(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_outbox_round_trip() {
    let Some(store) = warmpool_store::testing::pg::test_store(4).await.unwrap() else {
        return;
    };
    outbox_round_trip(&store).await;
}
