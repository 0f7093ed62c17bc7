//! Prometheus metrics (SPEC section 8).
//!
//! Three sources, one scrape:
//! - **counters** (`warmpool_prebuilds_created_total`, `..._failed_total`, `..._claimed_total`,
//!   `warmpool_claims_missed_total`) are rows in the database, incremented in the same transaction as their event
//!   and read at scrape time, so they never go down, survive restarts and agree across replicas;
//! - **gauges** come from this replica's latest snapshot and its plan, for active presets only, so a deleted or
//!   replaced version leaves no stale series; plus the global pause and the job queue by status;
//! - **histograms** (reconciliation, claim and build durations) are observed in this process.
//!
//! A family with no series (no preset has that counter yet) is left out of the scrape.
//! Each scrape builds a fresh registry from these values (the histograms are shared handles), so nothing about a
//! preset outlives it. Labels are bounded: template, preset, and small enums; never a workspace id.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use warmpool_core::model::PresetStatus;
use warmpool_store::{CounterName, CounterValue, JobCounts};

use crate::reconciler::Observed;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PresetLabels {
    pub template: String,
    pub preset: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    pub template: String,
    pub preset: String,
    pub warm: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub template: String,
    pub transition: String,
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub status: String,
}

/// The in-process histograms; cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub reconciliation_duration: Histogram,
    pub claim_duration: Family<ClaimLabels, Histogram>,
    pub build_duration: Family<BuildLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // 0.5 ms .. ~16 s
            reconciliation_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 0.5 ms .. ~4 s for warm claims; cold claims return when queued
            claim_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            // 0.1 s .. ~1 h
            build_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.1, 2.0, 16))
            }),
        }
    }
}

impl Metrics {
    pub fn observe_claim(&self, template: &str, preset: &str, warm: bool, seconds: f64) {
        self.claim_duration
            .get_or_create(&ClaimLabels {
                template: template.to_owned(),
                preset: preset.to_owned(),
                warm: warm.to_string(),
            })
            .observe(seconds);
    }

    pub fn observe_build(&self, template: &str, transition: &str, status: &str, seconds: f64) {
        self.build_duration
            .get_or_create(&BuildLabels {
                template: template.to_owned(),
                transition: transition.to_owned(),
                status: status.to_owned(),
            })
            .observe(seconds);
    }
}

/// `0` or `1`.
fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// The text exposition of one scrape.
pub fn render(
    metrics: &Metrics,
    counters: &[CounterValue],
    observed: Option<&Observed>,
    jobs: &JobCounts,
) -> String {
    let mut registry = Registry::default();

    let mut counter_families: BTreeMap<CounterName, Family<PresetLabels, Counter>> =
        BTreeMap::new();
    for name in [
        CounterName::PrebuildsCreated,
        CounterName::PrebuildsFailed,
        CounterName::PrebuildsClaimed,
        CounterName::ClaimsMissed,
    ] {
        counter_families.insert(name, Family::default());
    }
    for c in counters {
        if let Some(family) = counter_families.get(&c.name) {
            family
                .get_or_create(&PresetLabels {
                    template: c.template.clone(),
                    preset: c.preset.clone(),
                })
                .inc_by(c.value);
        }
    }
    for (name, family) in counter_families {
        let (metric, help) = match name {
            CounterName::PrebuildsCreated => (
                "warmpool_prebuilds_created",
                "Prebuilds created by the reconciler",
            ),
            CounterName::PrebuildsFailed => (
                "warmpool_prebuilds_failed",
                "Prebuilds whose first build failed",
            ),
            CounterName::PrebuildsClaimed => (
                "warmpool_prebuilds_claimed",
                "Prebuilds handed to a user by a claim",
            ),
            CounterName::ClaimsMissed => (
                "warmpool_claims_missed",
                "Claims that found no ready prebuild",
            ),
        };
        registry.register(metric, help, family);
    }

    let desired = Family::<PresetLabels, Gauge>::default();
    let running = Family::<PresetLabels, Gauge>::default();
    let eligible = Family::<PresetLabels, Gauge>::default();
    let hard_limited = Family::<PresetLabels, Gauge>::default();
    let validation_failed = Family::<PresetLabels, Gauge>::default();
    let backoff = Family::<PresetLabels, Gauge>::default();
    let paused = Gauge::<i64>::default();
    if let Some(observed) = observed {
        paused.set(flag(observed.snapshot.settings.reconciliation_paused));
        for (preset, entry) in observed.snapshot.presets.iter().zip(&observed.plan.presets) {
            if !preset.active {
                continue;
            }
            let labels = PresetLabels {
                template: preset.template.clone(),
                preset: preset.preset.clone(),
            };
            desired
                .get_or_create(&labels)
                .set(i64::from(entry.state.desired));
            running
                .get_or_create(&labels)
                .set(i64::from(entry.state.actual));
            eligible
                .get_or_create(&labels)
                .set(i64::from(entry.state.eligible));
            hard_limited
                .get_or_create(&labels)
                .set(flag(entry.status == PresetStatus::HardLimited));
            validation_failed
                .get_or_create(&labels)
                .set(flag(entry.status == PresetStatus::ValidationFailed));
            let backing_off = entry.backoff_until().is_some();
            backoff.get_or_create(&labels).set(flag(backing_off));
        }
    }
    registry.register(
        "warmpool_prebuilds_desired",
        "Prebuilds the preset should have now",
        desired,
    );
    registry.register(
        "warmpool_prebuilds_running",
        "Running prebuilds of the preset, expired ones included",
        running,
    );
    registry.register(
        "warmpool_prebuilds_eligible",
        "Ready, unexpired prebuilds a claim can take",
        eligible,
    );
    registry.register(
        "warmpool_preset_hard_limited",
        "1 while the preset's newest builds all failed up to the hard limit",
        hard_limited,
    );
    registry.register(
        "warmpool_preset_validation_failed",
        "1 when the preset can never build (a required parameter has no value)",
        validation_failed,
    );
    registry.register(
        "warmpool_preset_backoff",
        "1 while the failed-build backoff or the creation-failure backoff holds the preset",
        backoff,
    );
    registry.register(
        "warmpool_reconciliation_paused",
        "1 while reconciliation is paused",
        paused,
    );

    let job_family = Family::<JobLabels, Gauge>::default();
    for (status, count) in &jobs.by_status {
        job_family
            .get_or_create(&JobLabels {
                status: status.clone(),
            })
            .set(i64::try_from(*count).unwrap_or(i64::MAX));
    }
    registry.register("warmpool_jobs", "Build jobs by status", job_family);

    registry.register(
        "warmpool_reconciliation_duration_seconds",
        "How long reconciliation ticks took",
        metrics.reconciliation_duration.clone(),
    );
    registry.register(
        "warmpool_claim_duration_seconds",
        "How long claims took to answer",
        metrics.claim_duration.clone(),
    );
    registry.register(
        "warmpool_build_duration_seconds",
        "How long builds ran",
        metrics.build_duration.clone(),
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> Observed {
        let snapshot = warmpool_core::snapshot_json::from_json(
            r#"{
            "now": "2025-06-02T03:00:00Z",
            "config": {"failure_hard_limit": 1},
            "presets": [
                {"id": "a", "template": "devbox", "preset": "small", "active": true, "instances": 2},
                {"id": "b", "template": "devbox", "preset": "old", "active": false, "instances": 2},
                {"id": "c", "template": "ci", "preset": "runner", "active": true, "instances": 1}
            ],
            "workspaces": [
                {"id": "w1", "owner": "prebuilds", "preset": "a", "created_at": "2025-06-02T01:00:00Z",
                 "latest_build": {"number": 1, "transition": "start", "status": "succeeded", "created_at": "2025-06-02T01:00:00Z"}},
                {"id": "w2", "owner": "prebuilds", "preset": "b", "created_at": "2025-06-02T01:00:00Z",
                 "latest_build": {"number": 1, "transition": "start", "status": "succeeded", "created_at": "2025-06-02T01:00:00Z"}},
                {"id": "w3", "owner": "prebuilds", "preset": "c", "created_at": "2025-06-02T02:59:00Z",
                 "latest_build": {"number": 1, "transition": "start", "status": "failed", "created_at": "2025-06-02T02:59:00Z"}}
            ]}"#,
        )
        .unwrap();
        let plan = warmpool_core::plan(&snapshot);
        Observed { snapshot, plan }
    }

    #[test]
    fn every_family_has_help_and_type_and_only_active_presets_have_gauges() {
        let metrics = Metrics::default();
        metrics.observe_claim("devbox", "small", true, 0.002);
        metrics.observe_build("devbox", "start", "succeeded", 1.5);
        metrics.reconciliation_duration.observe(0.01);
        let counter = |name, value| CounterValue {
            name,
            template: "devbox".into(),
            preset: "small".into(),
            value,
        };
        let counters = vec![
            counter(CounterName::PrebuildsCreated, 7),
            counter(CounterName::PrebuildsFailed, 2),
            counter(CounterName::PrebuildsClaimed, 4),
            counter(CounterName::ClaimsMissed, 1),
        ];
        let jobs = JobCounts {
            by_status: [("succeeded".to_owned(), 3)].into_iter().collect(),
            oldest_pending_at: None,
            failing_deletes: 0,
        };
        let text = render(&metrics, &counters, Some(&observed()), &jobs);
        for family in [
            "warmpool_prebuilds_created",
            "warmpool_prebuilds_failed",
            "warmpool_prebuilds_claimed",
            "warmpool_claims_missed",
            "warmpool_prebuilds_desired",
            "warmpool_prebuilds_running",
            "warmpool_prebuilds_eligible",
            "warmpool_preset_hard_limited",
            "warmpool_preset_validation_failed",
            "warmpool_preset_backoff",
            "warmpool_reconciliation_paused",
            "warmpool_jobs",
            "warmpool_reconciliation_duration_seconds",
            "warmpool_claim_duration_seconds",
            "warmpool_build_duration_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "no HELP for {family}:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "no TYPE for {family}:\n{text}"
            );
        }
        assert!(
            text.contains(
                r#"warmpool_prebuilds_created_total{template="devbox",preset="small"} 7"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"warmpool_prebuilds_desired{template="devbox",preset="small"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"warmpool_prebuilds_running{template="devbox",preset="small"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"warmpool_prebuilds_eligible{template="devbox",preset="small"} 1"#),
            "{text}"
        );
        // The failed runner: hard-limited at limit 1, and backing off.
        assert!(
            text.contains(r#"warmpool_preset_hard_limited{template="ci",preset="runner"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"warmpool_preset_backoff{template="ci",preset="runner"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"warmpool_preset_backoff{template="devbox",preset="small"} 0"#),
            "{text}"
        );
        // The inactive preset has no series at all.
        assert!(!text.contains(r#"preset="old""#), "{text}");
        assert!(
            text.contains(r#"warmpool_jobs{status="succeeded"} 3"#),
            "{text}"
        );
        assert!(text.contains("warmpool_reconciliation_paused 0"), "{text}");
        assert!(
            text.contains(r#"warmpool_claim_duration_seconds_count{template="devbox",preset="small",warm="true"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("w1") && !text.contains("w3"),
            "no workspace ids in labels"
        );
    }
}

/// What the `/metrics` endpoint reads.
#[derive(Debug)]
pub struct MetricsState<S: warmpool_store::Store> {
    pub store: std::sync::Arc<S>,
    pub reconciler: std::sync::Arc<crate::reconciler::Reconciler<S>>,
    pub metrics: Metrics,
}

/// `GET /metrics`: no auth (SPEC section 6).
pub fn router<S: warmpool_store::Store>(state: std::sync::Arc<MetricsState<S>>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    async fn scrape<S: warmpool_store::Store>(
        axum::extract::State(state): axum::extract::State<std::sync::Arc<MetricsState<S>>>,
    ) -> axum::response::Response {
        let counters = state.store.counters().await;
        let jobs = state.store.job_counts().await;
        match (counters, jobs) {
            (Ok(counters), Ok(jobs)) => {
                let observed = state.reconciler.observed();
                let body = render(&state.metrics, &counters, observed.as_deref(), &jobs);
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %crate::executor::chain(&err), "metrics scrape failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable\n",
                )
                    .into_response()
            }
        }
    }

    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape::<S>))
        .with_state(state)
}
