//! Black-box tests of bad input and of auth (SPEC section 6) against the real binary: every bad request answers
//! 400 `bad_request` with a message naming the field (or 404 for what does not exist), and changes nothing (the
//! templates, the workspaces and the settings read the same before and after); a missing or wrong token is 401, a
//! user touching another owner's workspace or an admin endpoint is 403.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use api_support::{Server, devbox, tokens};
use serde_json::{Value, json};

/// What a bad request must leave unchanged.
fn world(server: &Server) -> Value {
    json!({
        "templates": server.get_ok("/api/v1/templates"),
        "workspaces": server.get_ok("/api/v1/workspaces"),
        "settings": server.get_ok("/api/v1/settings"),
        "presets": server.get_ok("/api/v1/presets")["presets"].as_array().unwrap().iter()
            .map(|p| json!([p["template"], p["preset"], p["paused"], p["template_version"]])).collect::<Vec<_>>(),
    })
}

/// A valid template body for `PUT /api/v1/templates/{name}`.
fn template() -> Value {
    json!({
        "command": ["/bin/true"],
        "parameters": [{"name": "cpu", "default": "1"}],
        "presets": [{
            "name": "small",
            "parameters": {"cpu": "2"},
            "instances": 1,
            "ttl": "1h",
            "scheduling": {"timezone": "Europe/Berlin", "schedules": [{"cron": "* 8-18 * * 1-5", "instances": 2}]},
        }],
    })
}

/// Sends a bad request to a server with one ready prebuild and expects `status`/`code` with `field` in the
/// message, and nothing changed.
fn expect_refused(
    server: &Server,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
    code: &str,
    field: &str,
) {
    let before = world(server);
    let answer = server.send(method, path, Some(body));
    assert_eq!(
        (answer.status, answer.code()),
        (status, code),
        "{method} {path} {body}: {answer:?}"
    );
    assert!(
        answer.message().contains(field),
        "the message should name {field:?}: {:?}",
        answer.message()
    );
    assert_eq!(
        world(server),
        before,
        "{method} {path} {body} changed something"
    );
}

fn put_template(server: &Server, body: &Value, field: &str) {
    expect_refused(
        server,
        "PUT",
        "/api/v1/templates/web",
        &body.to_string(),
        400,
        "bad_request",
        field,
    );
}

fn started() -> Server {
    let server = Server::start(&devbox(1));
    server.wait_eligible("devbox", "small", 1);
    // The good template applies, so the bad ones below fail for their one fault.
    let ok = server.put("/api/v1/templates/good", &template());
    assert_eq!(ok.status, 200, "{ok:?}");
    // Its pool fills (one, or two in Berlin's office hours) before anything is compared.
    server.wait_for("good/small to fill", || {
        let state = &server.pool("good", "small")["state"];
        state["eligible"] == state["desired"] && state["starting"] == json!(0)
    });
    server
}

#[test]
fn malformed_json_is_400_and_changes_nothing() {
    let server = started();
    for (method, path) in [
        ("PUT", "/api/v1/templates/web"),
        ("POST", "/api/v1/claims"),
        ("PUT", "/api/v1/settings"),
        ("PUT", "/api/v1/presets/devbox/small/settings"),
    ] {
        for body in ["{", "{,}", "{1: 2}", "[1, 2]", r#""text""#, "", "nul"] {
            expect_refused(&server, method, path, body, 400, "bad_request", "body");
        }
    }
    // Trailing garbage after a valid object.
    expect_refused(
        &server,
        "PUT",
        "/api/v1/settings",
        r#"{"reconciliation_paused": true} x"#,
        400,
        "bad_request",
        "body",
    );
    // A field of the wrong type names the field.
    expect_refused(
        &server,
        "PUT",
        "/api/v1/settings",
        r#"{"reconciliation_paused": "yes"}"#,
        400,
        "bad_request",
        "reconciliation_paused",
    );
    expect_refused(
        &server,
        "POST",
        "/api/v1/claims",
        r#"{"template": "devbox", "preset": 7}"#,
        400,
        "bad_request",
        "preset",
    );
}

#[test]
fn unknown_template_or_preset_is_404_and_changes_nothing() {
    let server = started();
    let claim =
        |t: &str, p: &str| json!({"template": t, "preset": p, "owner": "alice"}).to_string();
    expect_refused(
        &server,
        "POST",
        "/api/v1/claims",
        &claim("nope", "small"),
        404,
        "not_found",
        "nope",
    );
    expect_refused(
        &server,
        "POST",
        "/api/v1/claims",
        &claim("devbox", "nope"),
        404,
        "not_found",
        "nope",
    );
    expect_refused(
        &server,
        "PUT",
        "/api/v1/presets/devbox/nope/settings",
        r#"{"paused": true}"#,
        404,
        "not_found",
        "devbox/nope",
    );
    expect_refused(
        &server,
        "PUT",
        "/api/v1/presets/nope/small/settings",
        r#"{"paused": true}"#,
        404,
        "not_found",
        "nope/small",
    );
    expect_refused(
        &server,
        "POST",
        "/api/v1/presets/devbox/nope/invalidate",
        "",
        404,
        "not_found",
        "devbox/nope",
    );
    expect_refused(
        &server,
        "DELETE",
        "/api/v1/templates/nope",
        "",
        404,
        "not_found",
        "nope",
    );
    for path in [
        "/api/v1/templates/nope",
        "/api/v1/presets/devbox/nope/plan",
        "/api/v1/presets/nope/small/plan",
        "/api/v1/workspaces/0190aaaa-0000-7000-8000-000000000000",
        "/api/v1/builds/0190aaaa-0000-7000-8000-000000000000/log",
        "/api/v1/nothing-here",
    ] {
        let answer = server.get(path);
        assert_eq!(
            (answer.status, answer.code()),
            (404, "not_found"),
            "{path}: {answer:?}"
        );
    }
    // A template deleted through the API no longer has an active preset to claim from.
    assert_eq!(
        server.send("DELETE", "/api/v1/templates/good", None).status,
        202
    );
    let gone = server.claim(&json!({"template": "good", "preset": "small", "owner": "alice"}));
    assert_eq!((gone.status, gone.code()), (404, "not_found"), "{gone:?}");
}

#[test]
fn negative_instances_are_400_naming_the_field() {
    let server = started();
    let mut body = template();
    body["presets"][0]["instances"] = json!(-1);
    put_template(&server, &body, "presets[0].instances");
    body["presets"][0]["instances"] = json!(1001);
    put_template(&server, &body, "presets[0].instances");
    let mut body = template();
    body["presets"][0]["scheduling"]["schedules"][0]["instances"] = json!(-3);
    put_template(
        &server,
        &body,
        "presets[0].scheduling.schedules[0].instances",
    );
    let mut body = template();
    body["max_workspaces"] = json!(-1);
    put_template(&server, &body, "max_workspaces");
}

#[test]
fn invalid_or_overlapping_cron_is_400_naming_the_schedule() {
    let server = started();
    for cron in [
        "5 8-18 * * 1-5",
        "* 8-18 * *",
        "* 25 * * *",
        "* */2 * * *",
        "* 8 * * MON",
    ] {
        let mut body = template();
        body["presets"][0]["scheduling"]["schedules"][0]["cron"] = json!(cron);
        put_template(&server, &body, "presets[0].scheduling.schedules[0].cron");
    }
    let mut body = template();
    body["presets"][0]["scheduling"]["schedules"] = json!([
        {"cron": "* 8-18 * * 1-5", "instances": 2},
        {"cron": "* 12-20 * * 5", "instances": 3},
    ]);
    put_template(&server, &body, "presets[0].scheduling.schedules[1]");
}

#[test]
fn unknown_time_zone_is_400_naming_the_field() {
    let server = started();
    for tz in ["Mars/Olympus", "", "europe/berlin"] {
        let mut body = template();
        body["presets"][0]["scheduling"]["timezone"] = json!(tz);
        put_template(&server, &body, "presets[0].scheduling.timezone");
    }
    let mut body = template();
    body["presets"][0]["scheduling"]
        .as_object_mut()
        .unwrap()
        .remove("timezone");
    put_template(&server, &body, "presets[0].scheduling.timezone");
}

#[test]
fn ttl_that_is_not_a_duration_is_400_naming_the_field() {
    let server = started();
    for ttl in [
        json!("1w"),
        json!("1 h"),
        json!("h"),
        json!("30m1h"),
        json!(3600),
        json!("-1h"),
    ] {
        let mut body = template();
        body["presets"][0]["ttl"] = ttl;
        put_template(&server, &body, "presets[0].ttl");
    }
    let mut body = template();
    body["timeout"] = json!("forever");
    put_template(&server, &body, "timeout");
}

#[test]
fn unknown_fields_are_400_naming_the_field() {
    let server = started();
    let mut body = template();
    body["colour"] = json!("blue");
    put_template(&server, &body, "colour");
    let mut body = template();
    body["presets"][0]["instance"] = json!(2);
    put_template(&server, &body, "instance");
    let mut body = template();
    body["presets"][0]["scheduling"]["schedules"][0]["tz"] = json!("UTC");
    put_template(&server, &body, "tz");
    let mut body = template();
    body["presets"][0]["parameters"]["gpu"] = json!("1");
    put_template(&server, &body, "presets[0].parameters.gpu");
    let claim =
        json!({"template": "devbox", "preset": "small", "owner": "alice", "fallbak": "none"});
    expect_refused(
        &server,
        "POST",
        "/api/v1/claims",
        &claim.to_string(),
        400,
        "bad_request",
        "fallbak",
    );
    expect_refused(
        &server,
        "PUT",
        "/api/v1/settings",
        r#"{"paused": true}"#,
        400,
        "bad_request",
        "paused",
    );
    expect_refused(
        &server,
        "PUT",
        "/api/v1/presets/devbox/small/settings",
        r#"{"paused": true, "why": "x"}"#,
        400,
        "bad_request",
        "why",
    );
    let answer = server.get("/api/v1/workspaces?onwer=alice");
    assert_eq!((answer.status, answer.code()), (400, "bad_request"));
    assert!(answer.message().contains("onwer"), "{answer:?}");
}

#[test]
fn bad_claim_fields_are_400_naming_the_field() {
    let server = started();
    let claim = |extra: Value| {
        let mut body = json!({"template": "devbox", "preset": "small", "owner": "alice"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string()
    };
    for (extra, field) in [
        (json!({"owner": "prebuilds"}), "owner"),
        (json!({"owner": "Alice"}), "owner"),
        (json!({"owner": ""}), "owner"),
        (json!({"name": "no spaces"}), "name"),
        (json!({"name": "x".repeat(64)}), "name"),
        (json!({"fallback": "maybe"}), "fallback"),
        (json!({"idempotency_key": ""}), "idempotency_key"),
        (json!({"template": "Dev_Box"}), "template"),
    ] {
        expect_refused(
            &server,
            "POST",
            "/api/v1/claims",
            &claim(extra),
            400,
            "bad_request",
            field,
        );
    }
    // No owner and no token to name one.
    expect_refused(
        &server,
        "POST",
        "/api/v1/claims",
        r#"{"template": "devbox", "preset": "small"}"#,
        400,
        "bad_request",
        "owner",
    );
    // The path names the template; a body naming another is refused.
    let mut body = template();
    body["name"] = json!("other");
    put_template(&server, &body, "name");
    // Through the API a relative command path means nothing.
    let mut body = template();
    body["command"] = json!(["./build.sh"]);
    put_template(&server, &body, "command[0]");
}

#[test]
fn missing_or_wrong_token_is_401_except_on_health() {
    let server = Server::start(&format!("{}\n{}", tokens(), devbox(1)));
    for path in [
        "/api/v1/templates",
        "/api/v1/presets",
        "/api/v1/workspaces",
        "/api/v1/status",
        "/api/v1/settings",
    ] {
        for token in [None, Some("wrong-token"), Some("")] {
            let answer = server.send_as(token, "GET", path, None);
            assert_eq!(
                (answer.status, answer.code()),
                (401, "unauthorized"),
                "{path} {token:?}: {answer:?}"
            );
        }
        assert_eq!(
            server
                .send_as(Some("admin-token"), "GET", path, None)
                .status,
            200,
            "{path}"
        );
    }
    let claim = json!({"template": "devbox", "preset": "small", "owner": "alice"}).to_string();
    assert_eq!(
        server
            .send_as(None, "POST", "/api/v1/claims", Some(&claim))
            .status,
        401
    );
    assert_eq!(
        server
            .send_as(
                Some("alice-token"),
                "PUT",
                "/api/v1/settings",
                Some(r#"{"reconciliation_paused": true}"#)
            )
            .status,
        403
    );
    // A token in another scheme is no bearer token.
    let basic = server
        .http
        .get(format!("{}/api/v1/templates", server.url))
        .header("authorization", "Basic YWRtaW4tdG9rZW4=")
        .send()
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);
    // The scheme's name is case-insensitive (RFC 9110).
    let lower = server
        .http
        .get(format!("{}/api/v1/templates", server.url))
        .header("authorization", "bearer admin-token")
        .send()
        .unwrap();
    assert_eq!(lower.status().as_u16(), 200);
    for path in ["/healthz", "/readyz", "/api/openapi.json"] {
        assert_eq!(
            server.send_as(None, "GET", path, None).status,
            200,
            "{path} needs no token"
        );
    }
    assert_eq!(
        server
            .send_as(Some("admin-token"), "GET", "/api/v1/settings", None)
            .body,
        json!({"reconciliation_paused": false}),
        "nothing was paused"
    );
}

#[test]
fn a_user_acts_only_on_its_own_workspaces() {
    let server = Server::start(&format!("{}\n{}", tokens(), devbox(1)));
    let admin = Some("admin-token");
    let alice = Some("alice-token");
    let bob = Some("bob-token");
    server.wait_for("a ready prebuild", || {
        server.send_as(admin, "GET", "/api/v1/presets", None).body["presets"][0]["state"]["eligible"] == json!(1)
    });
    // A user token claims as its own name by default.
    let claim = server.send_as(
        alice,
        "POST",
        "/api/v1/claims",
        Some(r#"{"template": "devbox", "preset": "small"}"#),
    );
    assert_eq!(claim.status, 201, "{claim:?}");
    assert_eq!(claim.body["workspace"]["owner"], json!("alice"));
    assert!(
        claim.body["workspace"]["name"]
            .as_str()
            .unwrap()
            .starts_with("alice-small-")
    );
    let id = claim.body["workspace"]["id"].as_str().unwrap().to_owned();
    let before = server
        .send_as(admin, "GET", "/api/v1/workspaces", None)
        .body;

    // Bob may not touch alice's workspace.
    for (method, path) in [
        ("GET", format!("/api/v1/workspaces/{id}")),
        ("GET", format!("/api/v1/workspaces/{id}/builds")),
        ("POST", format!("/api/v1/workspaces/{id}/start")),
        ("POST", format!("/api/v1/workspaces/{id}/stop")),
        ("DELETE", format!("/api/v1/workspaces/{id}")),
        ("GET", "/api/v1/workspaces?owner=alice".to_owned()),
        ("GET", "/api/v1/workspaces?owner=prebuilds".to_owned()),
    ] {
        let answer = server.send_as(bob, method, &path, None);
        assert_eq!(
            (answer.status, answer.code()),
            (403, "forbidden"),
            "bob {method} {path}: {answer:?}"
        );
    }
    let build = claim.body["workspace"]["id"].as_str().unwrap();
    let builds = server.send_as(
        alice,
        "GET",
        &format!("/api/v1/workspaces/{build}/builds"),
        None,
    );
    assert_eq!(builds.status, 200);
    let build_id = builds.body["builds"][0]["id"].as_str().unwrap();
    assert_eq!(
        server
            .send_as(bob, "GET", &format!("/api/v1/builds/{build_id}/log"), None)
            .status,
        403
    );
    assert_eq!(
        server
            .send_as(
                alice,
                "GET",
                &format!("/api/v1/builds/{build_id}/log"),
                None
            )
            .status,
        200
    );
    // Nor claim for alice.
    let for_alice = server.send_as(
        bob,
        "POST",
        "/api/v1/claims",
        Some(r#"{"template": "devbox", "preset": "small", "owner": "alice"}"#),
    );
    assert_eq!((for_alice.status, for_alice.code()), (403, "forbidden"));
    // Bob's own list is empty; alice's shows hers.
    assert_eq!(
        server.send_as(bob, "GET", "/api/v1/workspaces", None).body,
        json!({"workspaces": []})
    );
    let mine = server
        .send_as(alice, "GET", "/api/v1/workspaces", None)
        .body;
    assert_eq!(mine["workspaces"].as_array().unwrap().len(), 1);
    assert_eq!(
        server
            .send_as(admin, "GET", "/api/v1/workspaces", None)
            .body,
        before,
        "bob changed nothing"
    );

    // Users read templates, presets and plans; everything else is admin-only.
    for path in [
        "/api/v1/templates",
        "/api/v1/templates/devbox",
        "/api/v1/presets",
        "/api/v1/presets/devbox/small/plan",
    ] {
        assert_eq!(server.send_as(bob, "GET", path, None).status, 200, "{path}");
    }
    for (method, path, body) in [
        ("GET", "/api/v1/status", None),
        ("GET", "/api/v1/settings", None),
        (
            "PUT",
            "/api/v1/settings",
            Some(r#"{"reconciliation_paused": true}"#),
        ),
        (
            "PUT",
            "/api/v1/presets/devbox/small/settings",
            Some(r#"{"paused": true}"#),
        ),
        ("POST", "/api/v1/presets/devbox/small/invalidate", None),
        ("POST", "/api/v1/reconcile", None),
        (
            "PUT",
            "/api/v1/templates/devbox",
            Some(r#"{"command": ["/bin/true"]}"#),
        ),
        ("DELETE", "/api/v1/templates/devbox", None),
    ] {
        let answer = server.send_as(alice, method, path, body);
        assert_eq!(
            (answer.status, answer.code()),
            (403, "forbidden"),
            "alice {method} {path}: {answer:?}"
        );
    }
    // Alice deletes her own workspace.
    assert_eq!(
        server
            .send_as(alice, "DELETE", &format!("/api/v1/workspaces/{id}"), None)
            .status,
        202
    );
}
