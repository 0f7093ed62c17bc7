//! Metrics against a real store on both backends, adapted from Coder's `metricscollector_test.go`
//! (reference section 11.5): what each pool gauge and database counter shows for running, failed, ready and
//! claimed prebuilds and for workspaces the pool did not create; deleted templates leaving no series; a template
//! deleted and re-created under the same name; the paused gauge.
//!
//! Differences from Coder, as SPEC says: warmpool has no agents, so a running prebuild is eligible (Coder needs a
//! ready agent); the pause gauge is read from the snapshot of every replica, not only the lock holder's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use support::*;
use warmpool::metrics::{Metrics, render};
use warmpool_store::{ClaimOutcome, ClaimRequest};

scenarios!(
    running_failed_and_claimed_prebuilds,
    workspaces_not_created_by_the_pool_count_only_in_desired,
    deleted_templates_leave_no_series,
    duplicate_template_names_after_delete_and_recreate,
    paused_gauge,
);

async fn scrape<S: Backend>(env: &Env<S>) -> String {
    let counters = env.store.counters().await.unwrap();
    let jobs = env.store.job_counts().await.unwrap();
    let observed = env.reconciler.observed();
    render(&Metrics::default(), &counters, observed.as_deref(), &jobs)
}

/// The value of the series `metric{template="t",preset="p"}`, if the scrape has it.
fn value(text: &str, metric: &str, template: &str, preset: &str) -> Option<f64> {
    let prefix = format!("{metric}{{template=\"{template}\",preset=\"{preset}\"}} ");
    let mut found = text.lines().filter_map(|l| l.strip_prefix(&prefix));
    let first = found.next().map(|v| v.trim().parse().unwrap());
    assert!(found.next().is_none(), "duplicate series {prefix}");
    first
}

async fn running_failed_and_claimed_prebuilds<S: Backend>(db: Db<S>) {
    let env = Env::new(db, planner(mins(1), mins(60), 3));
    env.apply(&template("ok", vec![preset("p", Some(1))])).await;
    env.apply(&template("bad", vec![preset("p", Some(1))]))
        .await;
    env.apply(&template("taken", vec![preset("p", Some(1))]))
        .await;
    env.tick_ok().await;
    // Before any build finished: desired 1, nothing running.
    let text = scrape(&env).await;
    assert_eq!(
        value(&text, "warmpool_prebuilds_desired", "ok", "p"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_running", "ok", "p"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_created_total", "ok", "p"),
        Some(1.0)
    );

    env.finish_each(|job| {
        if job.template == "bad" {
            failed()
        } else {
            succeeded()
        }
    })
    .await;
    let claimed = env
        .store
        .claim(
            &ClaimRequest {
                template: "taken".into(),
                preset: "p".into(),
                owner: "alice".into(),
                name: "alice-1".into(),
            },
            env.now(),
        )
        .await
        .unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed { .. }));
    env.tick().await;
    let text = scrape(&env).await;

    // "prebuild running" (and, without agents, eligible).
    assert_eq!(
        value(&text, "warmpool_prebuilds_created_total", "ok", "p"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_failed_total", "ok", "p"),
        None
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_claimed_total", "ok", "p"),
        None
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_running", "ok", "p"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_eligible", "ok", "p"),
        Some(1.0)
    );
    // "prebuild failed": created 1, failed 1, nothing running; the DB-derived backoff holds it.
    assert_eq!(
        value(&text, "warmpool_prebuilds_created_total", "bad", "p"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_failed_total", "bad", "p"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_running", "bad", "p"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_eligible", "bad", "p"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "warmpool_preset_backoff", "bad", "p"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warmpool_preset_backoff", "ok", "p"),
        Some(0.0)
    );
    // "prebuild claimed": claimed 1, the claimed one no longer running (its replacement is starting).
    assert_eq!(
        value(&text, "warmpool_prebuilds_claimed_total", "taken", "p"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_created_total", "taken", "p"),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_running", "taken", "p"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_eligible", "taken", "p"),
        Some(0.0)
    );
    assert!(!text.contains("alice"), "no owner or workspace in labels");
}

async fn workspaces_not_created_by_the_pool_count_only_in_desired<S: Backend>(db: Db<S>) {
    let env = Env::new(db, planner(mins(1), mins(60), 3));
    // A pool of 0 and a cold claim: the user's workspace is built, but it is not a prebuild.
    env.apply(&template("cold", vec![preset("p", Some(0))]))
        .await;
    let request = ClaimRequest {
        template: "cold".into(),
        preset: "p".into(),
        owner: "bob".into(),
        name: "bob-1".into(),
    };
    assert!(matches!(
        env.store.claim(&request, env.now()).await.unwrap(),
        ClaimOutcome::PoolEmpty
    ));
    env.store
        .create_workspace(&request, env.now())
        .await
        .unwrap();
    env.finish_all(succeeded()).await;
    env.tick_ok().await;
    let text = scrape(&env).await;
    assert_eq!(
        value(&text, "warmpool_prebuilds_desired", "cold", "p"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_running", "cold", "p"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_eligible", "cold", "p"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "warmpool_prebuilds_created_total", "cold", "p"),
        None
    );
    assert_eq!(
        value(&text, "warmpool_claims_missed_total", "cold", "p"),
        Some(1.0)
    );
}

async fn deleted_templates_leave_no_series<S: Backend>(db: Db<S>) {
    let env = Env::new(db, planner(mins(1), mins(60), 3));
    env.apply(&template("gone", vec![preset("p", Some(1))]))
        .await;
    env.tick_ok().await;
    env.finish_all(succeeded()).await;
    env.tick_ok().await;
    let text = scrape(&env).await;
    assert_eq!(
        value(&text, "warmpool_prebuilds_running", "gone", "p"),
        Some(1.0)
    );

    env.store.delete_template("gone", env.now()).await.unwrap();
    env.tick_ok().await;
    let text = scrape(&env).await;
    for gauge in [
        "warmpool_prebuilds_desired",
        "warmpool_prebuilds_running",
        "warmpool_prebuilds_eligible",
        "warmpool_preset_hard_limited",
        "warmpool_preset_validation_failed",
        "warmpool_preset_backoff",
    ] {
        assert_eq!(
            value(&text, gauge, "gone", "p"),
            None,
            "{gauge} of a deleted template:\n{text}"
        );
    }
}

async fn duplicate_template_names_after_delete_and_recreate<S: Backend>(db: Db<S>) {
    let env = Env::new(db, planner(mins(1), mins(60), 3));
    env.apply(&template("twice", vec![preset("p", Some(1))]))
        .await;
    env.tick_ok().await;
    env.finish_all(succeeded()).await;
    env.tick_ok().await;
    assert_eq!(
        value(
            &scrape(&env).await,
            "warmpool_prebuilds_desired",
            "twice",
            "p"
        ),
        Some(1.0)
    );

    env.store.delete_template("twice", env.now()).await.unwrap();
    env.tick_ok().await;
    assert_eq!(
        value(
            &scrape(&env).await,
            "warmpool_prebuilds_desired",
            "twice",
            "p"
        ),
        None
    );

    // The same names again: one series each (`value` refuses duplicates), no leftovers of the first.
    let mut again = template("twice", vec![preset("p", Some(2))]);
    again.revision = Some("2".into());
    env.apply(&again).await;
    env.tick_ok().await;
    let text = scrape(&env).await;
    assert_eq!(
        value(&text, "warmpool_prebuilds_desired", "twice", "p"),
        Some(2.0)
    );
    assert!(value(&text, "warmpool_prebuilds_running", "twice", "p").is_some());
}

async fn paused_gauge<S: Backend>(db: Db<S>) {
    let env = Env::new(db, planner(mins(1), mins(60), 3));
    env.tick_ok().await;
    assert!(
        scrape(&env)
            .await
            .contains("\nwarmpool_reconciliation_paused 0\n")
    );
    env.store
        .set_reconciliation_paused(true, env.now())
        .await
        .unwrap();
    env.tick_ok().await;
    assert!(
        scrape(&env)
            .await
            .contains("\nwarmpool_reconciliation_paused 1\n")
    );
    env.store
        .set_reconciliation_paused(false, env.now())
        .await
        .unwrap();
    env.tick_ok().await;
    assert!(
        scrape(&env)
            .await
            .contains("\nwarmpool_reconciliation_paused 0\n")
    );
}
