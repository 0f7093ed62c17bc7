//! `/metrics` of the real binary after a real build and a real claim: the build, claim and reconciliation
//! histograms observe them, the database counters count them, and the endpoint needs no token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use api_support::{Server, devbox, tokens};
use serde_json::json;

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn a_real_claim_and_a_real_build_are_observed() {
    let server = Server::start(&devbox(2));
    server.wait_eligible("devbox", "small", 2);
    let answer = server.claim(&json!({"template": "devbox", "preset": "small", "owner": "alice"}));
    assert_eq!(answer.status, 201, "{answer:?}");

    let text = server.get("/metrics").body.as_str().unwrap().to_owned();
    assert_eq!(
        sample(
            &text,
            r#"warmpool_claim_duration_seconds_count{template="devbox",preset="small",warm="true"} "#
        ),
        Some(1.0),
        "{text}"
    );
    let builds = sample(
        &text,
        r#"warmpool_build_duration_seconds_count{template="devbox",transition="start",status="succeeded"} "#,
    )
    .unwrap_or(0.0);
    assert!(builds >= 2.0, "the two pool builds: {text}");
    assert!(sample(&text, "warmpool_reconciliation_duration_seconds_count ").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        sample(
            &text,
            r#"warmpool_prebuilds_claimed_total{template="devbox",preset="small"} "#
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            r#"warmpool_prebuilds_created_total{template="devbox",preset="small"} "#
        )
        .unwrap()
            >= 2.0
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("alice"),
            "labels never carry owners or ids: {line}"
        );
    }
}

#[test]
fn metrics_need_no_token() {
    let server = Server::start(&format!("{}{}", tokens(), devbox(1)));
    let answer = server.send_as(None, "GET", "/metrics", None);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .body
            .as_str()
            .unwrap()
            .contains("# TYPE warmpool_reconciliation_paused gauge")
    );
    assert_eq!(
        server.send_as(None, "GET", "/api/v1/status", None).status,
        401
    );
}
