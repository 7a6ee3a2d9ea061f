//! Disk layouts through the real binary: an image's layout shown, set from a document,
//! refused when it is bad, carried to the next capture, guarded like image content, and
//! planned onto the disks a node's boot environment reported.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;

use common::*;
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/layout/layout-raid1-lvm.json");

fn hardware(disks: &[(&str, u64)]) -> String {
    let disks: Vec<Value> = disks
        .iter()
        .map(|(n, size)| serde_json::json!({"name": n, "size": size, "logical_sector_size": 512}))
        .collect();
    serde_json::json!({"firmware": "bios", "disks": disks}).to_string()
}

#[test]
fn layouts_are_kept_checked_guarded_and_planned() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "head-a\n").unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);

    // A plain directory has no disks: the image deploys with the default layout.
    let shown = sb.ok(&["images", "layout", "head-a"]);
    assert!(shown.contains("layout    default"), "{shown}");
    let def: Value = sb.json(&["images", "layout", "head-a", "--json"]);
    assert_eq!(def["version"], 1);

    // A bad document is refused with what is wrong, and nothing changes.
    let bad = sb.path("bad.json");
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    std::fs::write(&bad, text.replacen("\"volgroup\": \"lvm-vg0\"", "\"volgroup\": \"nope\"", 1)).unwrap();
    let o = sb.run(&["images", "layout", "head-a", "--from", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("nope"), "{err}");
    std::fs::write(&bad, &text[..text.len() / 2]).unwrap();
    assert_eq!(sb.run(&["images", "layout", "head-a", "--from", bad.to_str().unwrap()]).status.code(), Some(2));
    assert!(sb.ok(&["images", "layout", "head-a"]).contains("layout    default"));

    // A good one is kept as it was given, shown by `images show`, and carried to the next capture.
    sb.ok(&["images", "layout", "head-a", "--from", FIXTURE]);
    let got: Value = sb.json(&["images", "layout", "head-a", "--json"]);
    let want: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got, want);
    assert!(sb.ok(&["images", "show", "head-a"]).contains("layout    recorded"));
    std::fs::write(src.join("etc/motd"), "v2\n").unwrap();
    sb.ok(&["capture", "--name", "head-a", src.to_str().unwrap()]);
    assert_eq!(sb.json(&["images", "layout", "head-a@2", "--json"]), want);
    let ev = sb.ok(&["events", "--kind", "image.layout"]);
    assert!(ev.contains("disk layout of head-a@1 set"), "{ev}");

    // Over HTTP: the admin and the image's own deployment token read it; others do not.
    let srv = Server::start(&sb, "");
    sb.ok(&["nodes", "add", "standby", "--image", "head-a", "--server", &srv.url, "--token", &srv.token]);
    let c: Value = serde_json::from_str(
        &srv.curl("POST", "/api/v1/deployments", Some(&srv.token), Some(r#"{"node":"standby"}"#)).1,
    )
    .unwrap();
    let dtok = c["token"].as_str().unwrap().to_string();
    let dep = c["deployment"]["id"].as_i64().unwrap();
    let (code, body) = srv.curl("GET", "/api/v1/images/head-a/layout", Some(&dtok), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["recorded"], true);
    assert_eq!(srv.curl("GET", "/api/v1/images/head-a/layout", None, None).0, 401);
    let other = sb.path("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("f"), "another image\n").unwrap();
    sb.ok(&["capture", "--name", "other", other.to_str().unwrap()]);
    assert_eq!(srv.curl("GET", "/api/v1/images/other/layout", Some(&dtok), None).0, 403);
    assert_eq!(srv.curl("PUT", "/api/v1/images/head-a/layout", Some(&dtok), Some(&text)).0, 403);
    assert_eq!(srv.curl("PUT", "/api/v1/images/head-a/layout", Some(&srv.token), Some("{\"version\":1}")).0, 422);

    // The plan: nothing to plan on before the node reports its disks.
    let (code, body) = srv.curl("GET", "/api/v1/nodes/standby/plan", Some(&srv.token), None);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("has not reported its hardware"), "{body}");
    // One disk where the layout wants two RAID1 members: refused, naming what is missing.
    let path = format!("/api/v1/deployments/{dep}/hardware");
    assert_eq!(srv.curl("POST", &path, Some(&dtok), Some(&hardware(&[("vda", 32 << 30)]))).0, 200);
    let (code, body) = srv.curl("GET", "/api/v1/nodes/standby/plan", Some(&srv.token), None);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("does not fit node standby"), "{body}");
    // Two larger disks: both mapped, the plan names the RAID and every disk.
    let two = hardware(&[("vda", 32 << 30), ("vdb", 32 << 30)]);
    assert_eq!(srv.curl("POST", &path, Some(&dtok), Some(&two)).0, 200);
    let out = sb.ok(&["nodes", "plan", "standby", "--server", &srv.url, "--token", &srv.token]);
    assert!(out.contains("recorded layout") && out.contains("vda") && out.contains("vdb"), "{out}");
    let p: Value = sb.json(&["nodes", "plan", "standby", "--json", "--server", &srv.url, "--token", &srv.token]);
    let steps = p["plan"]["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s.to_string().contains("mdadm")), "{p}");
    assert_eq!(p["plan"]["bootloader_disks"].as_array().unwrap().len(), 2, "{p}");
    // Hostile reports are refused.
    let evil = hardware(&[("../sda", 1 << 30)]);
    assert_eq!(srv.curl("POST", &path, Some(&dtok), Some(&evil)).0, 400);

    // Back to the default layout.
    sb.ok(&["images", "layout", "head-a@2", "--clear"]);
    assert!(sb.ok(&["images", "layout", "head-a@2"]).contains("layout    default"));
}
