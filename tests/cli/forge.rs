//! The GitHub, GitLab and Gitea clients against the recording fake forge.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use sluice::forge::{self, CommitStatus, Forge, ForgeError, ForgeKind, StatusState};

use crate::fake_forge::{FakeForgeServer, Recorded};

const TOKEN: &str = "tok-0123456789abcdef";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const MARKER: &str = "<!-- sluice:report -->";
const ALL: [ForgeKind; 3] = [ForgeKind::Github, ForgeKind::Gitlab, ForgeKind::Gitea];

/// Each forge's usual API prefix; GitLab's with a trailing slash.
fn api_url(srv: &FakeForgeServer, kind: ForgeKind) -> String {
    match kind {
        ForgeKind::Github => srv.url(),
        ForgeKind::Gitlab => format!("{}/api/v4/", srv.url()),
        ForgeKind::Gitea => format!("{}/api/v1", srv.url()),
    }
}

fn repo(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Gitlab => "grp/sub/proj",
        _ => "acme/pipelines",
    }
}

fn client(srv: &FakeForgeServer, kind: ForgeKind) -> Box<dyn Forge> {
    forge::client(kind, &api_url(srv, kind), TOKEN.to_string())
}

fn status(state: StatusState, description: &str, url: Option<&str>) -> CommitStatus {
    CommitStatus {
        state,
        context: "sluice/clinic-a".into(),
        description: description.into(),
        target_url: url.map(str::to_string),
    }
}

fn comments_path(kind: ForgeKind, number: u64) -> String {
    match kind {
        ForgeKind::Github => format!("/repos/acme/pipelines/issues/{number}/comments"),
        ForgeKind::Gitea => format!("/api/v1/repos/acme/pipelines/issues/{number}/comments"),
        ForgeKind::Gitlab => {
            format!("/api/v4/projects/grp%2Fsub%2Fproj/merge_requests/{number}/notes")
        }
    }
}

fn edit_path(kind: ForgeKind, number: u64, id: u64) -> String {
    match kind {
        ForgeKind::Github => format!("/repos/acme/pipelines/issues/comments/{id}"),
        ForgeKind::Gitea => format!("/api/v1/repos/acme/pipelines/issues/comments/{id}"),
        ForgeKind::Gitlab => format!("{}/{id}", comments_path(kind, number)),
    }
}

fn edit_method(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Gitlab => "PUT",
        _ => "PATCH",
    }
}

/// `(method, path without query)` of each request.
fn calls(reqs: &[Recorded]) -> Vec<(String, String)> {
    reqs.iter()
        .map(|r| (r.method.clone(), r.route().to_string()))
        .collect()
}

fn call(method: &str, path: &str) -> (String, String) {
    (method.to_string(), path.to_string())
}

fn http_status(err: &ForgeError) -> u16 {
    match err {
        ForgeError::Http { status, .. } => *status,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[test]
fn github_status_is_posted_with_bearer_auth() {
    let srv = FakeForgeServer::start();
    let gh = client(&srv, ForgeKind::Github);
    gh.set_status(
        "acme/pipelines",
        SHA,
        &status(StatusState::Failure, "2 failed", Some("https://ci/run/1")),
    )
    .unwrap();
    gh.set_status(
        "acme/pipelines",
        SHA,
        &status(StatusState::Cancelled, "", None),
    )
    .unwrap();

    let reqs = srv.requests();
    assert_eq!(
        calls(&reqs),
        vec![call("POST", &format!("/repos/acme/pipelines/statuses/{SHA}")); 2]
    );
    let r = &reqs[0];
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("user-agent")
            .is_some_and(|ua| ua.starts_with("sluice/")),
        "{r:?}"
    );
    assert_eq!(
        r.json(),
        json!({"state": "failure", "context": "sluice/clinic-a", "description": "2 failed", "target_url": "https://ci/run/1"})
    );
    assert_eq!(
        reqs[1].json(),
        json!({"state": "error", "context": "sluice/clinic-a", "description": ""})
    );
}

#[test]
fn gitea_status_is_posted_with_token_auth() {
    let srv = FakeForgeServer::start();
    let gitea = client(&srv, ForgeKind::Gitea);
    gitea
        .set_status(
            "acme/pipelines",
            SHA,
            &status(StatusState::Success, "ok", Some("https://ci/run/2")),
        )
        .unwrap();
    gitea
        .set_status(
            "acme/pipelines",
            SHA,
            &status(StatusState::Cancelled, "stopped", None),
        )
        .unwrap();

    let reqs = srv.requests();
    assert_eq!(
        calls(&reqs),
        vec![
            call(
                "POST",
                &format!("/api/v1/repos/acme/pipelines/statuses/{SHA}")
            );
            2
        ]
    );
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("token {TOKEN}").as_str())
    );
    assert_eq!(reqs[0].header("x-github-api-version"), None);
    assert_eq!(
        reqs[0].json(),
        json!({"state": "success", "context": "sluice/clinic-a", "description": "ok", "target_url": "https://ci/run/2"})
    );
    assert_eq!(reqs[1].json()["state"], "error");
}

#[test]
fn gitlab_status_is_posted_to_the_encoded_project() {
    let srv = FakeForgeServer::start();
    let gl = client(&srv, ForgeKind::Gitlab);
    let states = [
        (StatusState::Pending, "pending"),
        (StatusState::Success, "success"),
        (StatusState::Failure, "failed"),
        (StatusState::Error, "failed"),
        (StatusState::Cancelled, "canceled"),
    ];
    for (state, _) in states {
        gl.set_status(
            "grp/sub/proj",
            SHA,
            &status(state, "d", Some("https://ci/run/3")),
        )
        .unwrap();
    }

    let reqs = srv.requests();
    assert_eq!(
        calls(&reqs),
        vec![
            call(
                "POST",
                &format!("/api/v4/projects/grp%2Fsub%2Fproj/statuses/{SHA}")
            );
            5
        ]
    );
    assert_eq!(reqs[0].header("private-token"), Some(TOKEN));
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(
        reqs[0].json(),
        json!({"state": "pending", "name": "sluice/clinic-a", "description": "d", "target_url": "https://ci/run/3"})
    );
    let sent: Vec<_> = reqs.iter().map(|r| r.json()["state"].clone()).collect();
    let want: Vec<_> = states.iter().map(|(_, name)| json!(name)).collect();
    assert_eq!(sent, want);
}

#[test]
fn long_descriptions_are_truncated() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        let long = "é".repeat(300);
        client(&srv, kind)
            .set_status(repo(kind), SHA, &status(StatusState::Failure, &long, None))
            .unwrap();
        let sent = srv.requests()[0].json()["description"]
            .as_str()
            .unwrap()
            .to_string();
        let max = if kind == ForgeKind::Gitlab { 255 } else { 140 };
        assert_eq!(sent, "é".repeat(max), "{kind}");
    }
}

#[test]
fn upsert_creates_once_then_edits() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        let forge = client(&srv, kind);
        let first = format!("{MARKER}\nrun 1");
        let second = format!("{MARKER}\nrun 2");
        let id = forge
            .upsert_comment(repo(kind), 7, MARKER, &first, None)
            .unwrap();
        assert_eq!(
            forge
                .upsert_comment(repo(kind), 7, MARKER, &second, None)
                .unwrap(),
            id,
            "{kind}"
        );
        // The same text again is not rewritten.
        assert_eq!(
            forge
                .upsert_comment(repo(kind), 7, MARKER, &second, None)
                .unwrap(),
            id,
            "{kind}"
        );

        let list = comments_path(kind, 7);
        assert_eq!(
            calls(&srv.requests()),
            vec![
                call("GET", &list),
                call("POST", &list),
                call("GET", &list),
                call(edit_method(kind), &edit_path(kind, 7, id)),
                call("GET", &list),
            ],
            "{kind}"
        );
        assert_eq!(srv.requests()[1].json(), json!({ "body": first }), "{kind}");
        assert_eq!(srv.comments(), vec![(id, second)], "{kind}");
    }
}

#[test]
fn upsert_with_known_id_edits_directly() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        let forge = client(&srv, kind);
        let id = forge
            .upsert_comment(repo(kind), 3, MARKER, &format!("{MARKER} a"), None)
            .unwrap();
        let before = srv.requests().len();
        let got = forge
            .upsert_comment(repo(kind), 3, MARKER, &format!("{MARKER} b"), Some(id))
            .unwrap();
        assert_eq!(got, id, "{kind}");
        let after = srv.requests();
        assert_eq!(
            calls(&after[before..]),
            vec![call(edit_method(kind), &edit_path(kind, 3, id))],
            "{kind}"
        );
        assert_eq!(srv.comments(), vec![(id, format!("{MARKER} b"))], "{kind}");
    }
}

#[test]
fn upsert_with_stale_known_id_searches() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        let forge = client(&srv, kind);
        let id = forge
            .upsert_comment(repo(kind), 3, MARKER, &format!("{MARKER} a"), None)
            .unwrap();
        let before = srv.requests().len();
        let got = forge
            .upsert_comment(repo(kind), 3, MARKER, &format!("{MARKER} b"), Some(999))
            .unwrap();
        assert_eq!(got, id, "{kind}");
        let after = srv.requests();
        assert_eq!(
            calls(&after[before..]),
            vec![
                call(edit_method(kind), &edit_path(kind, 3, 999)),
                call("GET", &comments_path(kind, 3)),
                call(edit_method(kind), &edit_path(kind, 3, id)),
            ],
            "{kind}"
        );
    }
}

#[test]
fn upsert_finds_the_marker_on_a_later_page() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        let forge = client(&srv, kind);
        for other in ["<!-- a -->", "<!-- b -->"] {
            forge
                .upsert_comment(repo(kind), 9, other, other, None)
                .unwrap();
        }
        let id = forge
            .upsert_comment(repo(kind), 9, MARKER, &format!("{MARKER} 1"), None)
            .unwrap();
        srv.set_page_cap(1);
        let before = srv.requests().len();
        let got = forge
            .upsert_comment(repo(kind), 9, MARKER, &format!("{MARKER} 2"), None)
            .unwrap();
        assert_eq!(got, id, "{kind}");

        let reqs = srv.requests();
        let pages: Vec<_> = reqs[before..]
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| r.query("page").unwrap_or("").to_string())
            .collect();
        assert_eq!(pages, ["1", "2", "3"], "{kind}");
        let size_param = if kind == ForgeKind::Gitea {
            "limit"
        } else {
            "per_page"
        };
        assert_eq!(reqs[before].query(size_param), Some("100"), "{kind}");
        assert!(
            reqs.iter().filter(|r| r.method == "POST").count() == 3,
            "{kind}"
        );
        assert_eq!(srv.comments().len(), 3, "{kind}");
    }
}

#[test]
fn gitlab_lists_notes_oldest_first() {
    let srv = FakeForgeServer::start();
    client(&srv, ForgeKind::Gitlab)
        .upsert_comment("grp/sub/proj", 1, MARKER, MARKER, None)
        .unwrap();
    let list = &srv.requests()[0];
    assert_eq!(list.query("sort"), Some("asc"));
    assert_eq!(list.query("order_by"), Some("created_at"));
}

#[test]
fn pr_head_reads_the_head_sha() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        srv.set_pr_head(12, SHA);
        assert_eq!(
            client(&srv, kind).pr_head(repo(kind), 12).unwrap(),
            SHA,
            "{kind}"
        );
        let path = match kind {
            ForgeKind::Github => "/repos/acme/pipelines/pulls/12",
            ForgeKind::Gitea => "/api/v1/repos/acme/pipelines/pulls/12",
            ForgeKind::Gitlab => "/api/v4/projects/grp%2Fsub%2Fproj/merge_requests/12",
        };
        assert_eq!(calls(&srv.requests()), vec![call("GET", path)], "{kind}");
    }
}

#[test]
fn server_error_is_retryable() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        srv.fail_next(1, 500, &[]);
        let forge = client(&srv, kind);
        let err = forge
            .set_status(repo(kind), SHA, &status(StatusState::Pending, "", None))
            .unwrap_err();
        assert_eq!(http_status(&err), 500, "{kind}");
        assert!(err.is_retryable(), "{kind}");
        assert_eq!(err.retry_after(), None, "{kind}");
        // The script is spent: the same call now succeeds.
        forge
            .set_status(repo(kind), SHA, &status(StatusState::Pending, "", None))
            .unwrap();
    }
}

#[test]
fn rate_limit_gives_retry_after() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        let headers: &[(&str, &str)] = match kind {
            ForgeKind::Gitlab => &[
                ("Retry-After", "7"),
                ("RateLimit-Reset", "1700000000"),
                ("RateLimit-Remaining", "0"),
            ],
            _ => &[
                ("Retry-After", "7"),
                ("X-RateLimit-Reset", "1700000000"),
                ("X-RateLimit-Remaining", "0"),
            ],
        };
        srv.fail_next(1, 429, headers);
        let err = client(&srv, kind)
            .upsert_comment(repo(kind), 1, MARKER, "x", None)
            .unwrap_err();
        assert_eq!(
            err,
            ForgeError::Http {
                status: 429,
                retry_after: Some(Duration::from_secs(7)),
                rate_limit_reset: Some(1_700_000_000),
                rate_limit_remaining: Some(0),
                message: "scripted 429".into(),
            },
            "{kind}"
        );
        assert!(err.is_retryable(), "{kind}");
    }
}

#[test]
fn forbidden_is_retryable_only_when_rate_limited() {
    let srv = FakeForgeServer::start();
    let gh = client(&srv, ForgeKind::Github);
    srv.fail_next(1, 403, &[("X-RateLimit-Remaining", "0")]);
    assert!(gh.pr_head("acme/pipelines", 1).unwrap_err().is_retryable());
    srv.fail_next(1, 403, &[("X-RateLimit-Remaining", "4999")]);
    assert!(!gh.pr_head("acme/pipelines", 1).unwrap_err().is_retryable());
}

#[test]
fn not_found_is_not_retryable_and_hides_the_token() {
    for kind in ALL {
        let srv = FakeForgeServer::start();
        let err = client(&srv, kind).pr_head(repo(kind), 404).unwrap_err();
        assert_eq!(http_status(&err), 404, "{kind}");
        assert!(!err.is_retryable(), "{kind}");
        assert!(!format!("{err} {err:?}").contains(TOKEN), "{kind}");
    }
}

#[test]
fn redirects_are_not_followed() {
    let srv = FakeForgeServer::start();
    srv.fail_next(1, 301, &[("Location", "http://elsewhere.invalid/x")]);
    let err = client(&srv, ForgeKind::Gitlab)
        .pr_head("grp/proj", 1)
        .unwrap_err();
    assert_eq!(http_status(&err), 301);
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("elsewhere.invalid"), "{err}");
    assert_eq!(srv.requests().len(), 1);
}

#[test]
fn connection_refused_is_transport() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for kind in ALL {
        let forge = forge::client(kind, &format!("http://127.0.0.1:{port}"), TOKEN.to_string());
        let err = forge.pr_head(repo(kind), 1).unwrap_err();
        assert!(matches!(err, ForgeError::Transport(_)), "{kind}: {err:?}");
        assert!(err.is_retryable(), "{kind}");
        assert!(!format!("{err} {err:?}").contains(TOKEN), "{kind}");
    }
}

#[test]
fn bad_repository_names_are_refused_before_any_call() {
    let srv = FakeForgeServer::start();
    let gh = client(&srv, ForgeKind::Github);
    for bad in ["acme", "acme/a/b", "acme/.."] {
        let err = gh.pr_head(bad, 1).unwrap_err();
        assert!(matches!(err, ForgeError::Invalid(_)), "{bad}: {err:?}");
    }
    assert!(matches!(
        gh.upsert_comment("acme/pipelines", 1, "", "x", None),
        Err(ForgeError::Invalid(_))
    ));
    assert!(srv.requests().is_empty());
}

#[test]
fn fake_forge_server_answers_garbage_with_400() {
    use std::io::{Read, Write};
    let srv = FakeForgeServer::start();
    let mut stream = std::net::TcpStream::connect(srv.url().trim_start_matches("http://")).unwrap();
    stream.write_all(b"NONSENSE\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(srv.requests().is_empty());
}

#[test]
fn fake_forge_server_waits_for_requests() {
    let srv = FakeForgeServer::start();
    let url = srv.url();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        forge::client(ForgeKind::Github, &url, TOKEN.to_string())
            .set_status(
                "acme/pipelines",
                SHA,
                &status(StatusState::Pending, "", None),
            )
            .unwrap();
    });
    assert!(srv.wait_for(
        |reqs| reqs.iter().any(|r| r.method == "POST"),
        Duration::from_secs(10)
    ));
    assert!(!srv.wait_for(|reqs| reqs.len() > 1, Duration::from_millis(50)));
    poster.join().unwrap();
}
