//! Black-box tests of claims (SPEC section 6) against the real binary over HTTP: the warm path (201, the oldest
//! ready prebuild, ownership and name moved), the cold path (`fallback = build`, 202, built for the user), an empty
//! pool (`fallback = none`, 409 `pool_empty`), idempotent replay and its conflict, the refill that a claim
//! triggers within a second (the reconciler's interval is an hour, so only the claim's trigger explains it), 200
//! concurrent claims on a paused pool of 100 (exactly 100 distinct warm workspaces, 100 `pool_empty`), and
//! `claim_build` templates (a `start` build with the new owner and `WARMPOOL_IS_PREBUILD_CLAIM=true`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use std::collections::HashSet;

use api_support::{Server, devbox};
use serde_json::{Value, json};

fn ts(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

#[test]
fn warm_claim_hands_over_the_oldest_ready_prebuild_and_the_pool_refills_within_a_second() {
    let server = Server::start(&devbox(2));
    server.wait_eligible("devbox", "small", 2);
    let mut pool = server.prebuilds();
    pool.sort_by(|a, b| {
        (a["created_at"].as_str(), a["id"].as_str())
            .cmp(&(b["created_at"].as_str(), b["id"].as_str()))
    });
    let oldest = pool[0]["id"].as_str().unwrap().to_owned();
    let ids: HashSet<String> = pool
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect();

    let answer = server.claim(
        &json!({"template": "devbox", "preset": "small", "owner": "alice", "name": "alice-1"}),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(answer.body["warm"], json!(true));
    assert!(
        answer.body.get("build").is_none(),
        "no claim build without claim_build: {answer:?}"
    );
    let ws = &answer.body["workspace"];
    assert_eq!(
        ws["id"],
        json!(oldest),
        "the oldest ready prebuild is handed out"
    );
    assert_eq!(ws["owner"], json!("alice"));
    assert_eq!(ws["name"], json!("alice-1"));
    assert_eq!(ws["status"], json!("running"));
    assert_eq!(ws["ready"], json!(true));
    assert_eq!(ws["template"], json!("devbox"));
    assert_eq!(ws["preset"], json!("small"));
    assert_eq!(ws["template_version"], json!("v1"));
    assert!(ws["claimed_at"].is_string(), "{ws}");
    // The outputs are the prebuild's: built in the pool, before the claim.
    assert_eq!(ws["outputs"]["owner"], json!("prebuilds"));
    assert_eq!(ws["outputs"]["prebuild"], json!("true"));

    // The claim triggers a tick at once: the replacement prebuild is created within a second of the claim, by
    // the server's own clock (the interval is an hour, so no periodic tick explains it).
    let claimed_at = ts(ws["claimed_at"].as_str().unwrap());
    let mut replacement = None;
    server.wait_for("a replacement prebuild", || {
        let pool = server.prebuilds();
        replacement = pool
            .iter()
            .find(|w| !ids.contains(w["id"].as_str().unwrap()))
            .cloned();
        replacement.is_some()
    });
    let created_at = ts(replacement.unwrap()["created_at"].as_str().unwrap());
    let delay = created_at - claimed_at;
    assert!(
        delay >= chrono::TimeDelta::zero() && delay < chrono::TimeDelta::seconds(1),
        "replaced {delay} after the claim"
    );
    server.wait_eligible("devbox", "small", 2);

    // The claimed workspace is alice's now, and shows so.
    let shown = server.get_ok(&format!("/api/v1/workspaces/{oldest}"));
    assert_eq!(shown["owner"], json!("alice"));
    let alices = server.get_ok("/api/v1/workspaces?owner=alice");
    assert_eq!(alices["workspaces"].as_array().unwrap().len(), 1);

    // The same name for the same owner is taken.
    let again = server.claim(
        &json!({"template": "devbox", "preset": "small", "owner": "alice", "name": "alice-1"}),
    );
    assert_eq!(
        (again.status, again.code()),
        (409, "name_taken"),
        "{again:?}"
    );
}

#[test]
fn cold_claim_builds_for_the_user_and_an_empty_pool_without_fallback_is_pool_empty() {
    let server = Server::start(&devbox(0));
    // `cold` has no pool: nothing is ever ready.
    let none = server.claim(
        &json!({"template": "devbox", "preset": "cold", "owner": "alice", "fallback": "none"}),
    );
    assert_eq!((none.status, none.code()), (409, "pool_empty"), "{none:?}");
    assert!(none.message().contains("devbox/cold"), "{none:?}");

    let cold = server.claim(&json!({"template": "devbox", "preset": "cold", "owner": "alice"}));
    assert_eq!(cold.status, 202, "{cold:?}");
    assert_eq!(cold.body["warm"], json!(false));
    let ws = &cold.body["workspace"];
    assert_eq!(ws["owner"], json!("alice"));
    assert_eq!(ws["status"], json!("starting"));
    assert_eq!(ws["ready"], json!(false));
    let name = ws["name"].as_str().unwrap();
    assert!(
        name.starts_with("alice-cold-") && name.len() == "alice-cold-".len() + 6,
        "{name}"
    );
    assert_eq!(cold.body["build"]["transition"], json!("start"));
    assert_eq!(cold.body["build"]["is_prebuild"], json!(false));
    let id = ws["id"].as_str().unwrap();
    let running = server.wait_status(id, "running");
    // Built for alice, not in the pool.
    assert_eq!(running["outputs"]["owner"], json!("alice"));
    assert_eq!(running["outputs"]["prebuild"], json!("false"));
    assert_eq!(running["outputs"]["claim"], json!("false"));
    let builds = server.get_ok(&format!("/api/v1/workspaces/{id}/builds"));
    assert_eq!(builds["builds"].as_array().unwrap().len(), 1);
    let log = server.get(&format!(
        "/api/v1/builds/{}/log",
        builds["builds"][0]["id"].as_str().unwrap()
    ));
    assert_eq!(log.status, 200);
    assert!(log.body.as_str().unwrap().contains("for alice"), "{log:?}");
}

#[test]
fn idempotent_claims_replay_the_first_answer_and_refuse_another_body() {
    let server = Server::start(&devbox(1));
    server.wait_eligible("devbox", "small", 1);
    let body =
        json!({"template": "devbox", "preset": "small", "owner": "alice", "idempotency_key": "k1"});
    let first = server.claim(&body);
    assert_eq!(first.status, 201, "{first:?}");

    // The same key and body (keys in another order, compared as parsed JSON): the first answer again, not a
    // second workspace, even once the pool has refilled.
    server.wait_eligible("devbox", "small", 1);
    let reordered =
        r#"{"idempotency_key": "k1", "owner": "alice", "preset": "small", "template": "devbox"}"#;
    let replay = server.send("POST", "/api/v1/claims", Some(reordered));
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body, first.body);
    assert_eq!(
        server.get_ok("/api/v1/workspaces?owner=alice")["workspaces"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(server.prebuilds().len(), 1, "the replay claimed nothing");

    // The same key with another body: 409 idempotency_conflict.
    let other = server.claim(&json!({"template": "devbox", "preset": "small", "owner": "alice", "idempotency_key": "k1", "fallback": "none"}));
    assert_eq!(
        (other.status, other.code()),
        (409, "idempotency_conflict"),
        "{other:?}"
    );

    // Keys are per owner: bob's k1 is a new claim.
    let bob = server.claim(
        &json!({"template": "devbox", "preset": "small", "owner": "bob", "idempotency_key": "k1"}),
    );
    assert_eq!(bob.status, 201, "{bob:?}");
    assert_ne!(bob.body["workspace"]["id"], first.body["workspace"]["id"]);

    // A 409 answer is kept too: replaying a pool_empty answers pool_empty even once the pool has a prebuild.
    let empty_body = json!({"template": "devbox", "preset": "cold", "owner": "carol", "fallback": "none", "idempotency_key": "k2"});
    let empty = server.claim(&empty_body);
    assert_eq!((empty.status, empty.code()), (409, "pool_empty"));
    let empty_again = server.claim(&empty_body);
    assert_eq!(empty_again.status, 409);
    assert_eq!(empty_again.body, empty.body);

    // An error that is not kept (400) does not use the key up.
    let bad = server.claim(&json!({"template": "devbox", "preset": "small", "owner": "Dave!", "idempotency_key": "k3"}));
    assert_eq!(bad.status, 400);
}

#[test]
fn concurrent_idempotent_claims_wait_for_the_first_and_share_its_answer() {
    let server = Server::start(&devbox(0));
    // A cold build: the first request creates the workspace; the others must not create more.
    let body = json!({"template": "devbox", "preset": "cold", "owner": "alice", "idempotency_key": "same"});
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| server.claim(&body))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 202, "{answer:?}");
        assert_eq!(answer.body, answers[0].body);
    }
    assert_eq!(
        server.get_ok("/api/v1/workspaces?owner=alice")["workspaces"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn two_hundred_concurrent_claims_on_a_paused_pool_of_one_hundred() {
    let server = Server::start(&devbox(100));
    server.wait_eligible("devbox", "small", 100);
    let paused = server.put(
        "/api/v1/presets/devbox/small/settings",
        &json!({"paused": true}),
    );
    assert_eq!(paused.status, 200, "{paused:?}");
    assert_eq!(
        paused.body,
        json!({"template": "devbox", "preset": "small", "paused": true})
    );

    let barrier = std::sync::Barrier::new(200);
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let server = &server;
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    server.claim(&json!({
                        "template": "devbox", "preset": "small", "owner": format!("user{i}"), "fallback": "none",
                    }))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut warm = HashSet::new();
    let mut empty = 0;
    for answer in &answers {
        match (answer.status, answer.code()) {
            (201, _) => {
                assert_eq!(answer.body["warm"], json!(true));
                assert!(
                    warm.insert(answer.body["workspace"]["id"].as_str().unwrap().to_owned()),
                    "handed out twice: {answer:?}"
                );
            }
            (409, "pool_empty") => empty += 1,
            _ => panic!("unexpected answer {answer:?}\n{}", server.log()),
        }
    }
    assert_eq!((warm.len(), empty), (100, 100));

    // Paused: nothing refills; every workspace is its claimant's.
    assert!(server.prebuilds().is_empty(), "the paused pool refilled");
    let all: Vec<Value> = server.get_ok("/api/v1/workspaces")["workspaces"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(all.len(), 100);
    let owners: HashSet<&str> = all.iter().map(|w| w["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.len(), 100);
    assert!(all.iter().all(|w| warm.contains(w["id"].as_str().unwrap())));
    let pool = server.pool("devbox", "small");
    assert_eq!(pool["paused"], json!(true));
    assert_eq!(pool["state"]["actual"], json!(0));
}

#[test]
fn claim_build_templates_run_a_start_build_with_the_new_owner() {
    let config = devbox(1).replace("timeout = \"1m\"", "timeout = \"1m\"\nclaim_build = true");
    let server = Server::start(&config);
    server.wait_eligible("devbox", "small", 1);
    let template = server.get_ok("/api/v1/templates/devbox");
    assert_eq!(template["claim_build"], json!(true));

    let answer = server.claim(&json!({"template": "devbox", "preset": "small", "owner": "alice"}));
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(answer.body["warm"], json!(true));
    let build = &answer.body["build"];
    assert_eq!(build["transition"], json!("start"), "{answer:?}");
    assert_eq!(build["is_claim"], json!(true));
    assert_eq!(build["is_prebuild"], json!(false));
    assert_eq!(build["initiator"], json!("alice"));
    assert_eq!(build["number"], json!(2));
    let ws = &answer.body["workspace"];
    assert_eq!(ws["owner"], json!("alice"));
    // The workspace follows its latest build: the claim build is in progress.
    assert_eq!(ws["status"], json!("starting"), "{ws}");
    let id = ws["id"].as_str().unwrap();

    // GET /workspaces/{id} shows its progress until it runs; the build saw the new owner and the claim flag.
    let running = server.wait_status(id, "running");
    assert_eq!(running["owner"], json!("alice"));
    assert_eq!(running["outputs"]["owner"], json!("alice"), "{running}");
    assert_eq!(running["outputs"]["claim"], json!("true"));
    assert_eq!(running["outputs"]["prebuild"], json!("false"));
    assert_eq!(running["outputs"]["build"], json!("2"));
    let builds = server.get_ok(&format!("/api/v1/workspaces/{id}/builds"));
    let builds = builds["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0]["is_claim"], json!(true), "newest first");
    assert_eq!(builds[0]["status"], json!("succeeded"));
    assert_eq!(builds[1]["is_prebuild"], json!(true));
    // The pool refills for the next claim.
    server.wait_eligible("devbox", "small", 1);
}

#[test]
fn a_cold_claim_beyond_the_templates_quota_is_quota_exceeded() {
    let config = devbox(1).replace("timeout = \"1m\"", "timeout = \"1m\"\nmax_workspaces = 1");
    let server = Server::start(&config);
    server.wait_eligible("devbox", "small", 1);
    // The pool's one prebuild fills the quota: a cold build for alice is refused, nothing is created.
    let cold = server.claim(&json!({"template": "devbox", "preset": "cold", "owner": "alice"}));
    assert_eq!(
        (cold.status, cold.code()),
        (409, "quota_exceeded"),
        "{cold:?}"
    );
    assert_eq!(
        server.get_ok("/api/v1/workspaces")["workspaces"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A warm claim moves the prebuild, it does not add a workspace: it is allowed.
    let warm = server.claim(&json!({"template": "devbox", "preset": "small", "owner": "alice"}));
    assert_eq!(warm.status, 201, "{warm:?}");
}
