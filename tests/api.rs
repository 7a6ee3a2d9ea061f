//! The REST API against the real server on an ephemeral port, with real clients (curl,
//! reqwest, the CLI): auth, the error shape, bad input, concurrency, streaming.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::*;
use serde_json::{Value, json};

fn setup(extra: &str) -> (Sandbox, Server) {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"alpha").unwrap();
    std::fs::write(src.join("secret"), b"root:$6$hash:19000:0:99999:7:::").unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);
    std::fs::write(src.join("b"), noise(300_000, 1)).unwrap();
    sb.ok(&["capture", "--name", "other", src.to_str().unwrap()]);
    let srv = Server::start(&sb, extra);
    (sb, srv)
}

fn err_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}")).to_string()
}

#[test]
fn tokens_gate_everything_and_deploy_tokens_are_scoped() {
    let (sb, srv) = setup("");
    let admin = srv.token.clone();
    // No token, wrong token: 401 with the JSON error shape, never content.
    let (s, b) = srv.curl("GET", "/api/v1/images", None, None);
    assert_eq!((s, err_code(&b).as_str()), (401, "unauthorized"));
    let (s, b) = srv.curl("GET", "/api/v1/images/head-a/manifest", Some("not-the-token"), None);
    assert_eq!((s, err_code(&b).as_str()), (401, "unauthorized"));
    let (s, _) = srv.curl("GET", "/api/v1/images", Some(&admin), None);
    assert_eq!(s, 200);

    // A deployment token for node standby and image head-a.
    let (s, b) = srv.curl(
        "POST",
        "/api/v1/nodes",
        Some(&admin),
        Some(r#"{"name":"standby","macs":["52:54:00:00:00:01"],"ips":["10.0.0.2"],"image":"head-a"}"#),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = srv.curl("POST", "/api/v1/deployments", Some(&admin), Some(r#"{"node":"standby"}"#));
    assert_eq!(s, 201, "{b}");
    let created: Value = serde_json::from_str(&b).unwrap();
    let dtok = created["token"].as_str().unwrap().to_string();
    let id = created["deployment"]["id"].as_i64().unwrap();
    let (s, _) = srv.curl("GET", "/api/v1/images/head-a/manifest", Some(&dtok), None);
    assert_eq!(s, 200);
    let (s, b) = srv.curl("GET", "/api/v1/images/other/manifest", Some(&dtok), None);
    assert_eq!((s, err_code(&b).as_str()), (403, "forbidden"));
    let (s, _) = srv.curl("POST", "/api/v1/nodes", Some(&dtok), Some(r#"{"name":"evil"}"#));
    assert_eq!(s, 403);
    let (s, _) = srv.curl("GET", "/api/v1/nodes", Some(&dtok), None);
    assert_eq!(s, 403);
    let (s, b) = srv.curl(
        "POST",
        &format!("/api/v1/deployments/{}/progress", id + 1),
        Some(&dtok),
        Some(r#"{"status":"running"}"#),
    );
    assert_eq!(s, 403, "{b}");
    // Finishing the deployment retires its token.
    let (s, _) =
        srv.curl("POST", &format!("/api/v1/deployments/{id}/progress"), Some(&dtok), Some(r#"{"status":"done"}"#));
    assert_eq!(s, 200);
    let (s, _) = srv.curl("GET", "/api/v1/images/head-a/manifest", Some(&dtok), None);
    assert_eq!(s, 401);
    let node: Value = serde_json::from_str(&srv.curl("GET", "/api/v1/nodes/standby", Some(&admin), None).1).unwrap();
    assert_eq!(node["state"], "deployed");
    // The token file is private, and no token reaches the log or the event list.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(sb.data().join("admin.token")).unwrap().permissions().mode() & 0o777, 0o600);
    let (_, events) = srv.curl("GET", "/api/v1/events?limit=1000", Some(&admin), None);
    assert!(!events.contains(&dtok) && !events.contains(&admin));
}

#[test]
fn expired_deploy_tokens_are_refused() {
    let (_sb, srv) = setup("deploy_token_ttl = \"1s\"");
    let admin = srv.token.clone();
    srv.curl("POST", "/api/v1/nodes", Some(&admin), Some(r#"{"name":"n1","image":"head-a"}"#));
    let (_, b) = srv.curl("POST", "/api/v1/deployments", Some(&admin), Some(r#"{"node":"n1"}"#));
    let tok = serde_json::from_str::<Value>(&b).unwrap()["token"].as_str().unwrap().to_string();
    assert_eq!(srv.curl("GET", "/api/v1/images/head-a/manifest", Some(&tok), None).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (s, b) = srv.curl("GET", "/api/v1/images/head-a/manifest", Some(&tok), None);
    assert_eq!(s, 401, "{b}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let (_sb, srv) = setup("body_limit = \"4KiB\"");
    let t = Some(srv.token.as_str());
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        ("POST", "/api/v1/nodes".into(), Some("{not json".into()), 400, "bad_request"),
        (
            "POST",
            "/api/v1/nodes".into(),
            Some(format!("{{\"name\":\"{}\"}}", "x".repeat(8000))),
            413,
            "payload_too_large",
        ),
        ("POST", "/api/v1/nodes".into(), Some(r#"{"name":"a/b"}"#.into()), 400, "bad_request"),
        ("POST", "/api/v1/nodes".into(), Some(r#"{"name":"ok","macs":["zz:zz"]}"#.into()), 400, "bad_request"),
        ("POST", "/api/v1/nodes".into(), Some(r#"{"name":"ok","unknown":1}"#.into()), 422, "bad_request"),
        ("POST", "/api/v1/nodes".into(), Some(r#"{"name":5}"#.into()), 422, "bad_request"),
        ("POST", "/api/v1/nodes".into(), Some(r#"{"name":"ok","image":"nope"}"#.into()), 404, "not_found"),
        ("GET", "/api/v1/images/..%2F..%2Fetc".into(), None, 404, "not_found"),
        ("GET", "/api/v1/images/a%2Fb/manifest".into(), None, 404, "not_found"),
        ("GET", "/api/v1/images/no-such".into(), None, 404, "not_found"),
        ("GET", "/api/v1/images?limit=0".into(), None, 400, "bad_request"),
        ("GET", "/api/v1/images?offset=-1".into(), None, 400, "bad_request"),
        ("GET", "/api/v1/images?limit=abc".into(), None, 400, "bad_request"),
        ("GET", "/api/v1/jobs/99".into(), None, 404, "not_found"),
        ("GET", "/api/v1/nowhere".into(), None, 404, "not_found"),
        ("GET", "/api/v1/events?since=yesterday".into(), None, 400, "bad_request"),
        ("POST", "/api/v1/images/head-a/stream".into(), Some(r#"{"want":["00"]}"#.into()), 400, "bad_request"),
        (
            "POST",
            "/api/v1/images/head-a/stream".into(),
            Some(format!("{{\"want\":[\"{}\"]}}", "ab".repeat(32))),
            404,
            "not_found",
        ),
        ("POST", "/api/v1/deployments".into(), Some(r#"{"node":"ghost"}"#.into()), 404, "not_found"),
        ("DELETE", "/api/v1/images/head-a@0".into(), None, 400, "bad_request"),
    ];
    for (m, path, body, status, code) in cases {
        let (s, b) = srv.curl(m, &path, t, body.as_deref());
        assert_eq!(s, status, "{m} {path}: {b}");
        assert_eq!(err_code(&b), code, "{m} {path}");
    }
    // Conflicts: a MAC or IP that another node owns is refused with the reason.
    assert_eq!(
        srv.curl("POST", "/api/v1/nodes", t, Some(r#"{"name":"n1","macs":["52:54:00:00:00:09"],"ips":["10.0.0.9"]}"#))
            .0,
        201
    );
    let (s, b) = srv.curl("POST", "/api/v1/nodes", t, Some(r#"{"name":"n2","macs":["52-54-00-00-00-09"]}"#));
    assert!(s == 409 && b.contains("n1"), "{s} {b}");
    let (s, b) = srv.curl("POST", "/api/v1/nodes", t, Some(r#"{"name":"n3","ips":["10.0.0.9"]}"#));
    assert!(s == 409 && b.contains("10.0.0.9"), "{s} {b}");
    assert_eq!(srv.curl("POST", "/api/v1/nodes", t, Some(r#"{"name":"n1"}"#)).0, 409);
    // The server is still healthy.
    assert_eq!(srv.curl("GET", "/api/v1/images", t, None).0, 200);
}

#[test]
fn jobs_pages_events_and_openapi() {
    let (_sb, srv) = setup("public_reads = true");
    let t = Some(srv.token.as_str());
    // public_reads opens lists, never content.
    assert_eq!(srv.curl("GET", "/api/v1/images", None, None).0, 200);
    assert_eq!(srv.curl("GET", "/api/v1/images/head-a/manifest", None, None).0, 401);
    let page: Value = serde_json::from_str(&srv.curl("GET", "/api/v1/images?limit=1&offset=1", t, None).1).unwrap();
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["name"], "other");
    let (s, b) = srv.curl("POST", "/api/v1/images/head-a/verify", t, None);
    assert_eq!(s, 202, "{b}");
    let id = serde_json::from_str::<Value>(&b).unwrap()["id"].as_u64().unwrap();
    let mut job = Value::Null;
    for _ in 0..100 {
        job = serde_json::from_str(&srv.curl("GET", &format!("/api/v1/jobs/{id}"), t, None).1).unwrap();
        if job["state"] != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["result"]["faults"].as_array().unwrap().len(), 0);
    let ev: Value = serde_json::from_str(&srv.curl("GET", "/api/v1/events?kind=image.", t, None).1).unwrap();
    assert_eq!(ev["total"], 2, "{ev}");
    let doc: Value = serde_json::from_str(&srv.curl("GET", "/api/v1/openapi.json", None, None).1).unwrap();
    for p in [
        "/api/v1/images",
        "/api/v1/images/{image}/stream",
        "/api/v1/nodes/{name}",
        "/api/v1/deployments/{id}/progress",
        "/api/v1/events",
        "/api/v1/failover/takeover",
        "/api/v1/failover/release",
    ] {
        assert!(doc["paths"].get(p).is_some(), "OpenAPI lacks {p}");
    }
    let (s, b) = srv.curl("GET", "/api/v1/failover", t, None);
    assert_eq!((s, err_code(&b).as_str()), (404, "not_found"), "no [failover]: {b}");
    for action in ["takeover", "release"] {
        let path = format!("/api/v1/failover/{action}");
        let (s, b) = srv.curl("POST", &path, None, None);
        assert_eq!((s, err_code(&b).as_str()), (401, "unauthorized"), "{action} without a token: {b}");
        let (s, b) = srv.curl("POST", &path, t, None);
        assert_eq!((s, err_code(&b).as_str()), (404, "not_found"), "{action} without [failover]: {b}");
    }
    let metrics = srv.curl("GET", "/metrics", None, None).1;
    assert!(
        metrics.contains("understudy_http_requests_total{route=\"/api/v1/images\",method=\"GET\",status=\"200\"}"),
        "{metrics}"
    );
}

#[test]
fn remote_deploy_matches_local_and_the_cli_works_remotely() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    tricky_tree(&src, false);
    for i in 0..30u64 {
        std::fs::write(src.join(format!("blob{i}")), noise(300_000, i)).unwrap();
    }
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    let srv = Server::start(&sb, "");
    let remote = |args: &[&str]| {
        let mut a = vec!["--server", srv.url.as_str(), "--token", srv.token.as_str()];
        a.extend_from_slice(args);
        sb.ok(&a)
    };
    let out = sb.path("remote-out");
    remote(&["deploy", "img", out.to_str().unwrap()]);
    assert_eq!(rsync_diff(&src, &out, &[]), "");
    let local: Value = serde_json::from_str(&sb.ok(&["images", "list", "--json"])).unwrap();
    let rem: Value = serde_json::from_str(&remote(&["images", "list", "--json"])).unwrap();
    assert_eq!(local, rem);
    remote(&[
        "nodes",
        "add",
        "standby",
        "--mac",
        "52:54:00:aa:bb:cc",
        "--ip",
        "10.0.0.2",
        "--image",
        "img",
        "--role",
        "standby",
    ]);
    let n: Value = serde_json::from_str(&remote(&["nodes", "show", "standby", "--json"])).unwrap();
    assert_eq!(n["state"], "assigned");
    // Flags after the subcommand work too; and the local data dir sees the same inventory.
    let n2: Value = serde_json::from_str(&sb.ok(&["nodes", "list", "--json"])).unwrap();
    assert_eq!(n2[0]["macs"][0], "52:54:00:aa:bb:cc");
    let err =
        sb.fails(&["nodes", "add", "x", "--mac", "52:54:00:aa:bb:cc", "--server", &srv.url, "--token", &srv.token]);
    assert!(err.contains("already belongs to node standby"), "{err}");
}

#[test]
fn remote_deploy_resumes_after_dropped_connections() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..24u64 {
        std::fs::write(src.join(format!("f{i}")), noise(1 << 20, i)).unwrap();
    }
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    let srv = Server::start(&sb, "");
    // The first connections die after 2 MB: every early stream is cut mid-record.
    let proxy = flaky_proxy(srv.url.clone(), 2 << 20, 6);
    let out = sb.path("out");
    let o = sb
        .cmd(&["--server", &proxy, "--token", &srv.token, "deploy", "img", out.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("resuming chunk stream"), "no connection was cut: {log}");
    assert_eq!(rsync_diff(&src, &out, &[]), "");
}

#[test]
fn many_clients_and_a_stalled_reader_do_not_hurt_the_server() {
    let (sb, srv) = setup("stream_stall_timeout = \"1s\"");
    // A big image, streamed to a client that never reads.
    let big = sb.path("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..60u64 {
        std::fs::write(big.join(format!("f{i}")), noise(1 << 20, i + 500)).unwrap();
    }
    sb.ok(&["capture", "--name", "big", big.to_str().unwrap()]);
    let addr = srv.url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write;
    let body = "{}";
    write!(stalled, "POST /api/v1/images/big/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", srv.token, body.len()).unwrap();
    // 200 concurrent clients meanwhile.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ok = rt.block_on(async {
        let c = reqwest::Client::new();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200 {
            let (c, url, t) = (c.clone(), srv.url.clone(), srv.token.clone());
            set.spawn(async move {
                let path = if i % 2 == 0 { "/api/v1/images" } else { "/api/v1/images/head-a" };
                c.get(format!("{url}{path}")).bearer_auth(t).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            if r.unwrap() == 200 {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, 200);
    // The stalled stream is dropped after the stall timeout; memory stays bounded.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let m = srv.curl("GET", "/metrics", None, None).1;
    assert!(m.contains("understudy_streams_active 0"), "{m}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kb < 200_000, "server peak RSS {rss_kb} kB");
    drop(stalled);
}

#[test]
fn sigterm_stops_the_server_cleanly_and_config_check_explains_errors() {
    let (sb, mut srv) = setup("");
    let status = srv.stop();
    assert!(status.success(), "{status}");
    let bad = sb.path("bad.toml");
    std::fs::write(&bad, "[http]\nlisten = \"127.0.0.1:1\"\npublic_read = true\n").unwrap();
    let err = sb.fails(&["config", "check", bad.to_str().unwrap()]);
    assert!(err.contains("bad.toml:3:") && err.contains("public_read"), "{err}");
    let good = sb.path("good.toml");
    std::fs::write(&good, "data_dir = \"/var/lib/understudy\"\n[http]\nlisten = \"127.0.0.1:8080\"\nadmin_token_file = \"admin.token\"\npublic_reads = false\n").unwrap();
    assert!(sb.ok(&["config", "check", good.to_str().unwrap()]).contains("ok"));
    let _ = json!(null);
}

/// GET `path` (POST with a JSON body) as admin; the answer must be 200: its bytes.
fn fetch(srv: &Server, path: &str, body: Option<Value>) -> Vec<u8> {
    let c = reqwest::Client::new();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = match body {
            Some(b) => c.post(format!("{}{path}", srv.url)).json(&b),
            None => c.get(format!("{}{path}", srv.url)),
        };
        let r = r.bearer_auth(&srv.token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap().to_vec()
    })
}

/// An image's manifest, fetched from the server.
fn manifest(srv: &Server, image: &str) -> understudy::store::manifest::Manifest {
    understudy::store::manifest::Manifest::decode(&fetch(srv, &format!("/api/v1/images/{image}/manifest"), None))
        .unwrap()
}

/// One chunk received from a stream: id and bytes.
type Received = ([u8; 32], Vec<u8>);

/// Parse a chunk stream into its chunks, checking every record and chunk hash; also
/// returns how many block records came.
fn parse_stream(mut body: &[u8]) -> (Vec<Received>, usize) {
    use understudy::store::pack;
    let mut out = Vec::new();
    let mut blocks = 0;
    while !body.is_empty() {
        let (id, flags, raw, stored) = pack::parse_record_header(body).unwrap();
        let payload = &body[pack::RECORD_HEADER_LEN..pack::RECORD_HEADER_LEN + stored as usize];
        body = &body[pack::RECORD_HEADER_LEN + stored as usize..];
        match flags {
            pack::FLAG_BLOCK => {
                blocks += 1;
                let (chunks, data) = pack::decode_block(payload, &id, raw).unwrap();
                for c in chunks {
                    out.push((c.id, data[c.inner as usize..(c.inner + c.len) as usize].to_vec()));
                }
            }
            pack::FLAG_RAW => out.push((id, payload.to_vec())),
            pack::FLAG_DELTA => panic!("chunk {} was streamed as a delta", hex::encode(id)),
            _ => out.push((id, zstd::bulk::decompress(payload, raw as usize).unwrap())),
        }
    }
    for (id, data) in &out {
        assert_eq!(blake3::hash(data).as_bytes(), id, "a streamed chunk does not match its id");
    }
    (out, blocks)
}

#[test]
fn stream_sends_exactly_the_chunks_asked_for_even_out_of_shared_blocks() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..400u64 {
        std::fs::write(src.join(format!("s{i:03}")), format!("small file {i}\n").repeat(50 + i as usize)).unwrap();
    }
    std::fs::write(src.join("big"), noise(5 << 20, 3)).unwrap();
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    let srv = Server::start(&sb, "");
    let m = manifest(&srv, "img");
    let mut seen = std::collections::HashSet::new();
    let all: Vec<[u8; 32]> = m.chunk_refs().map(|(_, c)| c.id).filter(|id| seen.insert(*id)).collect();
    assert!(all.len() > 400);
    let hex = |ids: &[[u8; 32]]| ids.iter().map(hex::encode).collect::<Vec<_>>();

    // Everything: each chunk once, whole blocks.
    let (got, blocks) = parse_stream(&fetch(&srv, "/api/v1/images/img/stream", Some(json!({}))));
    assert!(blocks >= 1);
    let ids: Vec<_> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), all.len(), "a chunk was sent twice or not at all");
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>(), all.iter().collect());

    // Every third chunk, minus those the client has: exactly those, out of split blocks.
    let want: Vec<_> = all.iter().copied().step_by(3).collect();
    let have: Vec<_> = want.iter().copied().step_by(4).collect();
    let expected: std::collections::HashSet<_> = want.iter().filter(|id| !have.contains(id)).copied().collect();
    let (got, _) =
        parse_stream(&fetch(&srv, "/api/v1/images/img/stream", Some(json!({"want": hex(&want), "have": hex(&have)}))));
    let ids: Vec<_> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), expected.len(), "sent {} chunks for {} wanted", ids.len(), expected.len());
    assert_eq!(ids.into_iter().collect::<std::collections::HashSet<_>>(), expected);
}

#[test]
fn layout_names_the_stored_block_of_every_chunk() {
    use understudy::store::pack;
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..300u64 {
        std::fs::write(src.join(format!("s{i:03}")), noise(2000 + 37 * i as usize, i)).unwrap();
    }
    std::fs::write(src.join("big"), noise(3 << 20, 7)).unwrap();
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    let srv = Server::start(&sb, "");
    let m = manifest(&srv, "img");
    let mut seen = std::collections::HashSet::new();
    let all: Vec<[u8; 32]> = m.chunk_refs().map(|(_, c)| c.id).filter(|id| seen.insert(*id)).collect();
    let hex: Vec<String> = all.iter().map(hex::encode).collect();
    let body = fetch(&srv, "/api/v1/images/img/blocks", Some(json!({ "want": hex })));
    assert_eq!(body.len(), 4 * all.len());
    let groups: Vec<u32> = body.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
    // The stored blocks, as a full stream sends them (every block whole).
    let stream = fetch(&srv, "/api/v1/images/img/stream", Some(json!({})));
    let mut blocks: Vec<std::collections::BTreeSet<[u8; 32]>> = Vec::new();
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let (id, flags, raw, stored) = pack::parse_record_header(rest).unwrap();
        let payload = &rest[pack::RECORD_HEADER_LEN..pack::RECORD_HEADER_LEN + stored as usize];
        if flags == pack::FLAG_BLOCK {
            blocks.push(pack::parse_block_table(payload, &id, raw).unwrap().0.iter().map(|c| c.id).collect());
        }
        rest = &rest[pack::RECORD_HEADER_LEN + stored as usize..];
    }
    assert!(blocks.len() >= 2, "the small files make blocks");
    // Chunks with one number are exactly one stored block; the others are stored alone.
    let mut by_group: std::collections::BTreeMap<u32, std::collections::BTreeSet<[u8; 32]>> = Default::default();
    for (id, g) in all.iter().zip(&groups) {
        if *g != u32::MAX {
            by_group.entry(*g).or_default().insert(*id);
        }
    }
    let mut expected = blocks.clone();
    expected.sort();
    let mut got: Vec<_> = by_group.into_values().collect();
    got.sort();
    assert_eq!(got, expected);
    // A chunk that is not in the image is refused, as by the stream.
    let (s, b) = srv.curl(
        "POST",
        "/api/v1/images/img/blocks",
        Some(&srv.token),
        Some(&json!({ "want": [hex::encode([1u8; 32])] }).to_string()),
    );
    assert_eq!((s, err_code(&b).as_str()), (404, "not_found"), "{b}");
}

#[test]
fn stream_sends_deltas_whole_and_block_members_to_a_remote_deploy() {
    use understudy::store::{LockMode, Store, pack};
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Small files share blocks; "conf" is small enough for a block too, and its next
    // version is stored as a delta against its block member.
    for i in 0..200u64 {
        std::fs::write(src.join(format!("s{i:03}")), format!("small file {i}\n").repeat(40 + i as usize)).unwrap();
    }
    let conf = noise(60_000, 5);
    std::fs::write(src.join("conf"), &conf).unwrap();
    sb.ok(&["capture", "--name", "img", src.to_str().unwrap()]);
    let mut next = conf.clone();
    next[30_000..30_016].copy_from_slice(b"a changed value!");
    std::fs::write(src.join("conf"), &next).unwrap();
    let v2 = sb.json(&["capture", "--name", "img", "--json", src.to_str().unwrap()]);
    assert!(v2["added_bytes"].as_u64().unwrap() < 2_000, "{v2}");
    let srv = Server::start(&sb, "");
    let ids = |image: &str| -> std::collections::HashSet<[u8; 32]> {
        manifest(&srv, image).chunk_refs().map(|(_, c)| c.id).collect()
    };
    let (old, new) = (ids("img@1"), ids("img@2"));
    let changed: Vec<_> = new.difference(&old).copied().collect();
    assert_eq!(changed.len(), 1, "one chunk of conf changed");
    {
        // Shared lock: the server holds one too.
        let store = Store::open(&sb.data(), LockMode::Shared).unwrap();
        let base = store.delta_base(&changed[0]).unwrap().expect("the changed chunk is a delta");
        assert_eq!(store.locate(&base).unwrap().flags, pack::FLAG_BLOCK, "its base sits in a block");
    }
    // A client that has v1 gets just the changed chunk, whole (it need not hold the base).
    let have: Vec<String> = old.iter().map(hex::encode).collect();
    let (got, blocks) = parse_stream(&fetch(&srv, "/api/v1/images/img@2/stream", Some(json!({ "have": have }))));
    assert_eq!((got.len(), blocks), (1, 0));
    assert_eq!(got[0].0, changed[0]);
    // Everything of v2: blocks and the delta, each chunk once.
    let (got, blocks) = parse_stream(&fetch(&srv, "/api/v1/images/img@2/stream", Some(json!({}))));
    assert!(blocks >= 1);
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<std::collections::HashSet<_>>(), new);
    assert_eq!(got.len(), new.len());
    // And a real remote deploy of both versions.
    for (image, tree) in [("img@2", None), ("img@1", Some(&conf))] {
        let out = sb.path(&format!("remote-{image}"));
        sb.ok(&["--server", &srv.url, "--token", &srv.token, "deploy", image, out.to_str().unwrap()]);
        match tree {
            None => assert_eq!(rsync_diff(&src, &out, &[]), ""),
            Some(conf) => assert_eq!(&std::fs::read(out.join("conf")).unwrap(), conf),
        }
    }
}

/// The manifest goes zstd-compressed to a client that takes it (curl decodes it to the
/// same bytes that hash to the id), plain to one that does not, and not at all to one
/// that holds it already (If-None-Match with its id: 304).
#[test]
fn the_manifest_is_compressed_when_asked_and_not_sent_when_held() {
    let (sb, srv) = setup("");
    let id = sb.json(&["images", "show", "other", "--json"])["image"]["id"].as_str().unwrap().to_string();
    let url = format!("{}/api/v1/images/other/manifest", srv.url);
    let auth = format!("Authorization: Bearer {}", srv.token);
    let get = |extra: &[&str], out: &str| {
        let o = std::process::Command::new("curl")
            .args(["-s", "-D", "-", "-o", out, "-H", &auth])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_lowercase()
    };
    let (plain, z, dec) = (sb.path("plain"), sb.path("z"), sb.path("dec"));
    let h = get(&[], plain.to_str().unwrap());
    assert!(h.starts_with("http/1.1 200") && !h.contains("content-encoding"), "{h}");
    let h = get(&["-H", "Accept-Encoding: gzip, zstd"], z.to_str().unwrap());
    assert!(h.contains("content-encoding: zstd") && h.contains(&format!("etag: \"{id}\"")), "{h}");
    sh(&format!("zstd -q -d -c {} > {}", z.display(), dec.display()));
    let body = std::fs::read(&plain).unwrap();
    assert_eq!(std::fs::read(&dec).unwrap(), body);
    assert_eq!(blake3::hash(&body).to_hex().as_str(), id);
    assert!(std::fs::metadata(&z).unwrap().len() < body.len() as u64);
    let h = get(&["-H", &format!("If-None-Match: \"{id}\"")], sb.path("none").to_str().unwrap());
    assert!(h.starts_with("http/1.1 304"), "{h}");
    let h = get(&["-H", "If-None-Match: \"0000\""], sb.path("other").to_str().unwrap());
    assert!(h.starts_with("http/1.1 200"), "{h}");
}
