//! The OpenAPI document, as the real binary serves it at `GET /api/openapi.json` (no token needed): it lists
//! exactly SPEC section 6's endpoints, every documented operation is routed, and the whole document is an insta
//! snapshot (`snapshots/api_openapi__openapi.snap`), so an API change is always visible in review. After an
//! intended change: `cargo insta review`, or `INSTA_UPDATE=always cargo test --test api_openapi` and read the diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use std::collections::BTreeSet;

use api_support::{Server, devbox, tokens};
use serde_json::json;

/// SPEC section 6's table.
const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/templates"),
    ("get", "/api/v1/templates/{name}"),
    ("put", "/api/v1/templates/{name}"),
    ("delete", "/api/v1/templates/{name}"),
    ("get", "/api/v1/presets"),
    ("get", "/api/v1/presets/{template}/{preset}/plan"),
    ("put", "/api/v1/presets/{template}/{preset}/settings"),
    ("post", "/api/v1/presets/{template}/{preset}/invalidate"),
    ("post", "/api/v1/claims"),
    ("get", "/api/v1/workspaces"),
    ("get", "/api/v1/workspaces/{id}"),
    ("post", "/api/v1/workspaces/{id}/start"),
    ("post", "/api/v1/workspaces/{id}/stop"),
    ("delete", "/api/v1/workspaces/{id}"),
    ("get", "/api/v1/workspaces/{id}/builds"),
    ("get", "/api/v1/builds/{id}/log"),
    ("get", "/api/v1/settings"),
    ("put", "/api/v1/settings"),
    ("post", "/api/v1/reconcile"),
    ("get", "/api/v1/status"),
    ("get", "/api/openapi.json"),
];

#[test]
fn the_openapi_document_lists_every_endpoint_and_matches_the_snapshot() {
    let server = Server::start(&format!("{}\n{}", tokens(), devbox(0)));
    let response = server
        .http
        .get(format!("{}/api/openapi.json", server.url))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "no token needed");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: serde_json::Value = response.json().unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| matches!(k.as_str(), "get" | "put" | "post" | "delete" | "patch"))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let spec: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, spec);
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    assert_eq!(ids.len(), spec.len(), "every operation has an id");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "operation ids are unique: {ids:?}"
    );

    // Every documented operation is routed: none reaches the fallback's "no such endpoint".
    for (method, path) in &documented {
        let concrete = path
            .replace("{name}", "nope")
            .replace("{template}", "nope")
            .replace("{preset}", "nope")
            .replace("{id}", "nope");
        let answer = server.send_as(Some("admin-token"), &method.to_uppercase(), &concrete, None);
        assert_ne!(
            answer.body,
            json!({"code": "not_found", "message": "no such endpoint"}),
            "{method} {path} is documented but not routed"
        );
    }
    // Token-protected operations document 401; public ones do not.
    assert!(doc["paths"]["/api/v1/claims"]["post"]["responses"]["401"].is_object());
    assert!(doc["paths"]["/healthz"]["get"]["responses"]["401"].is_null());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    insta::assert_json_snapshot!("openapi", doc);
}
