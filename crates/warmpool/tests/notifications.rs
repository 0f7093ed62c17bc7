//! Webhook notifications end to end on both backends, with a local receiver: a preset driven into the hard limit
//! is notified once (not once per tick), a receiver that fails at first gets the notification after retries, and
//! a restart of the service (a new reconciler on the same database) neither repeats nor loses it; `recovered`
//! follows once the preset is healthy again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::Json;
use axum::http::StatusCode;
use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;
use warmpool::clock::Clock;
use warmpool::config::{NotificationEvent, WebhookConfig};
use warmpool::notify::{BACKOFF_ENTERED, BACKOFF_LEFT, Notifier, deliver};
use warmpool::reconciler::Reconciler;
use warmpool_core::duration::Duration;

scenarios!(
    hard_limit_is_notified_once_and_retried_until_delivered,
    an_empty_pool_is_notified_after_its_threshold_once,
);

/// A webhook receiver that answers 503 to its first `fail_first` requests and records every request body.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
}

async fn receiver(fail_first: usize) -> Receiver {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let app = {
        let bodies = Arc::clone(&bodies);
        let requests = Arc::clone(&requests);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |Json(body): Json<Value>| {
                let bodies = Arc::clone(&bodies);
                let requests = Arc::clone(&requests);
                async move {
                    if requests.fetch_add(1, Ordering::SeqCst) < fail_first {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    bodies.lock().unwrap().push(body);
                    StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        bodies,
        requests,
    }
}

fn events(bodies: &[Value], event: &str) -> usize {
    bodies.iter().filter(|b| b["event"] == event).count()
}

fn with_notifier<S: Backend>(env: &mut Env<S>, url: &str) {
    with_notifier_after(env, url, Duration::from_secs(3600));
}

fn with_notifier_after<S: Backend>(env: &mut Env<S>, url: &str, pool_empty_after: Duration) {
    let webhook = WebhookConfig {
        url: url.to_owned(),
        events: vec![
            NotificationEvent::HardLimited,
            NotificationEvent::ValidationFailed,
            NotificationEvent::Backoff,
            NotificationEvent::Recovered,
            NotificationEvent::PoolEmpty,
        ],
        pool_empty_after,
    };
    env.reconciler = Reconciler::new(
        Arc::clone(&env.store),
        Arc::clone(&env.clock) as Arc<dyn Clock>,
        env.config.clone(),
        "test-replica".into(),
        env.jobs.clone(),
    )
    .with_notifier(Notifier {
        store: Arc::clone(&env.store),
        webhooks: vec![webhook],
    });
}

/// Starts delivering the environment's outbox; stop it with the token, then await the handle.
fn spawn_delivery<S: Backend>(env: &Env<S>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let delivery = tokio::spawn(deliver(
        Arc::clone(&env.store),
        Arc::clone(&env.clock) as Arc<dyn Clock>,
        StdDuration::from_millis(20),
        stop.clone(),
    ));
    (stop, delivery)
}

/// Advances the manual clock until `done` (retries become due), with a liveness guard.
async fn wait_until<S: Backend>(env: &Env<S>, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        env.advance(secs(5));
        tokio::time::sleep(StdDuration::from_millis(25)).await;
    }
    panic!("not delivered in time");
}

async fn hard_limit_is_notified_once_and_retried_until_delivered<S: Backend>(db: Db<S>) {
    let receiver = receiver(2).await;
    let mut env = Env::new(db, planner(mins(1), mins(60), 1));
    with_notifier(&mut env, &receiver.url);
    let (stop, delivery) = spawn_delivery(&env);

    env.apply(&template("flaky", vec![preset("p", Some(1))]))
        .await;
    env.tick_ok().await;
    assert_eq!(env.finish_all(failed()).await, 1);
    // Many ticks while hard-limited: one notification of each kind, not one per tick.
    for _ in 0..5 {
        env.tick().await;
        env.advance(secs(30));
    }
    wait_until(&env, || {
        events(&receiver.bodies.lock().unwrap(), "hard_limited") == 1
    })
    .await;
    // Entering backoff, then (the failed build's backoff is over by now) leaving it: one `backoff` each.
    wait_until(&env, || {
        events(&receiver.bodies.lock().unwrap(), "backoff") == 2
    })
    .await;
    let details: Vec<Value> = receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["event"] == "backoff")
        .map(|b| b["detail"].clone())
        .collect();
    assert!(
        details.contains(&Value::from(BACKOFF_ENTERED)),
        "{details:?}"
    );
    assert!(details.contains(&Value::from(BACKOFF_LEFT)), "{details:?}");
    assert!(
        receiver.requests.load(Ordering::SeqCst) >= 4,
        "the first two deliveries failed and were retried"
    );
    let hard = receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|b| b["event"] == "hard_limited")
        .cloned()
        .unwrap();
    assert_eq!(hard["template"], "flaky");
    assert_eq!(hard["preset"], "p");
    assert_eq!(hard["status"], "hard_limited");
    assert!(
        hard["at"].is_string() && hard["detail"].is_string(),
        "{hard}"
    );

    // A restart (new reconciler on the same database, new lock holder) repeats nothing.
    stop.cancel();
    delivery.await.unwrap();
    let mut env = env.restart().await;
    with_notifier(&mut env, &receiver.url);
    let (stop, delivery) = spawn_delivery(&env);
    for _ in 0..3 {
        env.tick().await;
        env.advance(secs(30));
    }
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    assert_eq!(events(&receiver.bodies.lock().unwrap(), "hard_limited"), 1);

    // The failed prebuild is deleted by an operator: the limit lifts, a new prebuild is built, and `recovered`
    // is sent once.
    let failed_one = pooled(&env.workspaces("flaky").await)[0].id.clone();
    env.store
        .delete_prebuild(&failed_one, env.now())
        .await
        .unwrap();
    env.finish_all(succeeded()).await;
    env.advance(mins(5));
    env.tick().await;
    env.finish_all(succeeded()).await;
    env.tick().await;
    env.tick().await;
    wait_until(&env, || {
        events(&receiver.bodies.lock().unwrap(), "recovered") == 1
    })
    .await;
    env.tick().await;
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let bodies = receiver.bodies.lock().unwrap().clone();
    assert_eq!(events(&bodies, "recovered"), 1, "{bodies:?}");
    assert_eq!(events(&bodies, "hard_limited"), 1, "{bodies:?}");
    assert_eq!(events(&bodies, "backoff"), 2, "{bodies:?}");
    stop.cancel();
    delivery.await.unwrap();
}

async fn an_empty_pool_is_notified_after_its_threshold_once<S: Backend>(db: Db<S>) {
    let receiver = receiver(0).await;
    let mut env = Env::new(db, planner(mins(1), mins(60), 3));
    with_notifier_after(&mut env, &receiver.url, Duration::from_secs(300));
    let (stop, delivery) = spawn_delivery(&env);
    env.apply(&template("slow", vec![preset("p", Some(1))]))
        .await;
    // The build never finishes: no eligible prebuild. Nothing is sent before `pool_empty_after`.
    env.tick_ok().await;
    env.advance(mins(4));
    env.tick_ok().await;
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    assert_eq!(events(&receiver.bodies.lock().unwrap(), "pool_empty"), 0);
    // Past it: one `pool_empty`, however many ticks follow.
    env.advance(mins(2));
    for _ in 0..3 {
        env.tick_ok().await;
        env.advance(secs(10));
    }
    wait_until(&env, || {
        events(&receiver.bodies.lock().unwrap(), "pool_empty") == 1
    })
    .await;
    let body = receiver
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|b| b["event"] == "pool_empty")
        .cloned()
        .unwrap();
    assert_eq!(body["template"], "slow");
    // The build finishes: `recovered`, once.
    env.finish_all(succeeded()).await;
    env.tick_ok().await;
    env.tick_ok().await;
    wait_until(&env, || {
        events(&receiver.bodies.lock().unwrap(), "recovered") == 1
    })
    .await;
    env.tick_ok().await;
    tokio::time::sleep(StdDuration::from_millis(150)).await;
    let bodies = receiver.bodies.lock().unwrap().clone();
    assert_eq!(events(&bodies, "pool_empty"), 1, "{bodies:?}");
    assert_eq!(events(&bodies, "recovered"), 1, "{bodies:?}");
    stop.cancel();
    delivery.await.unwrap();
}
