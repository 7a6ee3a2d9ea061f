//! The admin's web console against the real server: at the HTTP level with curl (login,
//! cookie flags, CSRF, escaping, logout, `console = false`), and in a real browser
//! (headless Chromium driven over WebDriver by chromedriver) with a DHCP client in a
//! network namespace appearing live on the Nodes page.
#![allow(clippy::unwrap_used)] // tests may panic on what they set up themselves

mod common;
use common::netns::*;
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One HTTP answer as curl saw it.
struct Resp {
    status: u16,
    headers: String,
    body: String,
}

impl Resp {
    /// A header's value (first of that name).
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// Every `Set-Cookie` value.
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// The `Set-Cookie` of cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().into_iter().find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The CSRF token of the first form on the page.
    fn csrf(&self) -> String {
        let (_, rest) =
            self.body.split_once(r#"name="csrf" value=""#).unwrap_or_else(|| panic!("no csrf field in {}", self.body));
        rest.split('"').next().unwrap().to_string()
    }
}

/// curl (a client we did not write), redirects not followed; `args` are extra options.
fn curl(url: &str, method: &str, args: &[&str]) -> Resp {
    let o = Command::new("curl").args(["-s", "-i", "-X", method]).args(args).arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Resp { status, headers: headers.to_string(), body: body.to_string() }
}

/// The value of `name=value` in a `Set-Cookie` header.
fn cookie_value(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
}

/// Log in through the form; returns the session cookie's `Set-Cookie` and the response.
fn login(url: &str, token: &str, extra: &[&str]) -> Resp {
    let page = curl(&format!("{url}/console/login"), "GET", extra);
    assert_eq!(page.status, 200, "{}", page.body);
    let login_cookie = cookie_value(&page.cookie("understudy_login").expect("login form cookie"));
    let mut args = vec![
        "-H".to_string(),
        format!("Cookie: understudy_login={login_cookie}"),
        "--data-urlencode".to_string(),
        format!("csrf={}", page.csrf()),
        "--data-urlencode".to_string(),
        format!("token={token}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&format!("{url}/console/login"), "POST", &a)
}

fn flags(set_cookie: &str) -> Vec<String> {
    set_cookie.split(';').skip(1).map(|f| f.trim().to_string()).collect()
}

#[test]
fn login_sessions_csrf_escaping_and_logout() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"alpha").unwrap();
    sb.ok(&["capture", "--name", "base", src.to_str().unwrap()]);
    let srv = Server::start(&sb, "");
    let url = srv.url.clone();

    // Nothing without a session: pages and actions go to the login page, and do nothing.
    for p in ["/", "/console/nodes", "/console/images", "/console/deployments", "/console/failover", "/console/events"]
    {
        let r = curl(&format!("{url}{p}"), "GET", &[]);
        assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/login")), "{p}");
    }
    let r = curl(&format!("{url}/console/nodes/add"), "POST", &["--data", "name=sneaky&csrf=x"]);
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/login")));
    assert_eq!(srv.curl("GET", "/api/v1/nodes/sneaky", Some(&srv.token), None).0, 404);

    // The login form's page: its CSRF cookie carries the flags, no Secure over plain http.
    let page = curl(&format!("{url}/console/login"), "GET", &[]);
    let c = page.cookie("understudy_login").unwrap();
    let f = flags(&c);
    for want in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(f.iter().any(|x| x == want), "{want} missing in {c}");
    }
    assert!(!f.iter().any(|x| x == "Secure"), "{c}");
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'self'"));
    // A login post without the form's token, or with another one: refused.
    let r = curl(&format!("{url}/console/login"), "POST", &["--data-urlencode", &format!("token={}", srv.token)]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.cookie("understudy_session").is_none());
    let r = curl(
        &format!("{url}/console/login"),
        "POST",
        &[
            "-H",
            "Cookie: understudy_login=abc",
            "--data-urlencode",
            "csrf=abd",
            "--data-urlencode",
            &format!("token={}", srv.token),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);

    // A wrong token and a deployment token do not open the console.
    let r = login(&url, "not-the-token", &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.cookie("understudy_session").is_none());
    let (s, b) = srv.curl(
        "POST",
        "/api/v1/nodes",
        Some(&srv.token),
        Some(r#"{"name":"n1","macs":["52:54:00:00:00:01"],"image":"base"}"#),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = srv.curl("POST", "/api/v1/deployments", Some(&srv.token), Some(r#"{"node":"n1"}"#));
    assert_eq!(s, 201, "{b}");
    let dtok = serde_json::from_str::<Value>(&b).unwrap()["token"].as_str().unwrap().to_string();
    let r = login(&url, &dtok, &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("deployment token cannot open the console"), "{}", r.body);
    assert!(r.cookie("understudy_session").is_none());

    // The admin token does: a random session id in a cookie with every flag.
    let r = login(&url, &srv.token, &[]);
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/")), "{}", r.body);
    let c = r.cookie("understudy_session").unwrap();
    let sid = cookie_value(&c);
    assert_eq!(sid.len(), 64, "{c}");
    assert!(sid.chars().all(|ch| ch.is_ascii_hexdigit()), "{c}");
    assert_ne!(sid, srv.token);
    let f = flags(&c);
    for want in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(f.iter().any(|x| x == want), "{want} missing in {c}");
    }
    assert!(!f.iter().any(|x| x == "Secure"), "{c}");
    // Behind a TLS-terminating proxy the cookie is Secure.
    let r2 = login(&url, &srv.token, &["-H", "X-Forwarded-Proto: https"]);
    let c2 = r2.cookie("understudy_session").unwrap();
    assert!(flags(&c2).iter().any(|x| x == "Secure"), "{c2}");
    assert_ne!(cookie_value(&c2), sid, "every login gets its own session");

    let jar = format!("Cookie: understudy_session={sid}");
    let home = curl(&format!("{url}/"), "GET", &["-H", &jar]);
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.body.contains("<h1>Overview</h1>"), "{}", home.body);
    let csrf = home.csrf();
    assert_eq!(csrf.len(), 64);

    // CSRF: missing or wrong → 403 and nothing done; right → done.
    let add = |extra: &str| {
        curl(
            &format!("{url}/console/nodes/add"),
            "POST",
            &["-H", &jar, "--data", &format!("name=n2&mac=52:54:00:00:00:02{extra}")],
        )
    };
    let r = add("");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = add("&csrf=");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = add(&format!("&csrf={}", cookie_value(&c2)));
    assert_eq!(r.status, 403, "another session's token is not this one's: {}", r.body);
    let r = add("&csrf=0000");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(srv.curl("GET", "/api/v1/nodes/n2", Some(&srv.token), None).0, 404, "a refused form did nothing");
    let r = add(&format!("&csrf={csrf}"));
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/nodes")), "{}", r.body);
    assert_eq!(srv.curl("GET", "/api/v1/nodes/n2", Some(&srv.token), None).0, 200);
    let nodes = curl(&format!("{url}/console/nodes"), "GET", &["-H", &jar]);
    assert!(nodes.body.contains("Node n2 added"), "the action's outcome shows once: {}", nodes.body);
    assert!(nodes.body.contains("52:54:00:00:00:02"));
    let again = curl(&format!("{url}/console/nodes"), "GET", &["-H", &jar]);
    assert!(!again.body.contains("Node n2 added"));

    // Event text with HTML shows as text.
    let db = sb.data().join("understudy.db");
    let o = Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO events (ts, node, kind, message) VALUES ('2026-12-01T10:00:00Z', NULL, 'node.create', '<script>alert(1)</script><b>x</b>')")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let home = curl(&format!("{url}/"), "GET", &["-H", &jar]);
    assert!(home.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;"), "{}", home.body);
    assert!(!home.body.contains("<script>alert"), "{}", home.body);
    assert!(!home.body.contains("<b>x</b>"), "{}", home.body);

    // Deployments: the progress a deploy client reports, then its error, as text.
    let did = serde_json::from_str::<Value>(&srv.curl("GET", "/api/v1/deployments", Some(&srv.token), None).1).unwrap()
        ["items"][0]["id"]
        .as_i64()
        .unwrap();
    let total = serde_json::from_str::<Value>(
        &srv.curl("GET", &format!("/api/v1/deployments/{did}"), Some(&srv.token), None).1,
    )
    .unwrap()["bytes_total"]
        .as_i64()
        .unwrap();
    assert!(total > 0);
    let progress = |body: String| {
        let (s, b) = srv.curl("POST", &format!("/api/v1/deployments/{did}/progress"), Some(&dtok), Some(&body));
        assert_eq!(s, 200, "{b}");
    };
    progress(json!({"status": "running", "phase": "chunks", "bytes_done": total / 2}).to_string());
    let deps = curl(&format!("{url}/console/deployments"), "GET", &["-H", &jar]);
    let pct = (total / 2) * 100 / total;
    assert!(deps.body.contains(&format!(r#"<progress max="100" value="{pct}""#)), "{}", deps.body);
    assert!(deps.body.contains("chunks") && deps.body.contains("running"), "{}", deps.body);
    assert!(deps.body.contains(r#"data-poll="2""#), "a running deployment's table is polled: {}", deps.body);
    progress(
        json!({"status": "failed", "phase": "chunks", "bytes_done": total / 2, "error": "<b>disk</b> gone"})
            .to_string(),
    );
    let deps = curl(&format!("{url}/console/deployments"), "GET", &["-H", &jar]);
    assert!(deps.body.contains(r#"<pre class="error">&lt;b&gt;disk&lt;/b&gt; gone</pre>"#), "{}", deps.body);

    // The other pages render for the session.
    for p in ["/console/images", "/console/deployments", "/console/failover"] {
        let r = curl(&format!("{url}{p}"), "GET", &["-H", &jar]);
        assert_eq!(r.status, 200, "{p}: {}", r.body);
    }
    let imgs = curl(&format!("{url}/console/images"), "GET", &["-H", &jar]);
    assert!(imgs.body.contains("base@1"), "{}", imgs.body);
    // Verify and gc start the API's jobs; the jobs table shows them finish.
    let r = curl(
        &format!("{url}/console/images/verify"),
        "POST",
        &["-H", &jar, "--data", &format!("image=base@1&csrf={csrf}")],
    );
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/images")), "{}", r.body);
    let r = curl(&format!("{url}/console/gc"), "POST", &["-H", &jar, "--data", &format!("csrf={csrf}")]);
    assert_eq!(r.status, 303, "{}", r.body);
    let t0 = Instant::now();
    loop {
        let imgs = curl(&format!("{url}/console/images"), "GET", &["-H", &jar]);
        let jobs = imgs.body.split_once(r#"id="jobs""#).map(|(_, j)| j.to_string()).unwrap_or_default();
        if jobs.matches("<td>done</td>").count() == 2 {
            assert!(jobs.contains("<td>verify</td>") && jobs.contains("<td>gc</td>"), "{jobs}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the jobs did not finish: {jobs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (s, b) = srv.curl("GET", "/api/v1/jobs/1", Some(&srv.token), None);
    assert_eq!(s, 200, "the console's job is the API's: {b}");
    let fo = curl(&format!("{url}/console/failover"), "GET", &["-H", &jar]);
    assert!(fo.body.contains("Failover is not running on this server"), "{}", fo.body);

    // Logout ends the session on the server: the old cookie opens nothing any more.
    let r = curl(&format!("{url}/console/logout"), "POST", &["-H", &jar, "--data", &format!("csrf={csrf}")]);
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/login")));
    assert!(r.cookie("understudy_session").unwrap().contains("Max-Age=0"));
    let r = curl(&format!("{url}/"), "GET", &["-H", &jar]);
    assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/login")));
    let r = add(&format!("&csrf={csrf}"));
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location").as_deref(), Some("/console/login"));
    // The other session lives on.
    let r = curl(&format!("{url}/"), "GET", &["-H", &format!("Cookie: understudy_session={}", cookie_value(&c2))]);
    assert_eq!(r.status, 200);
}

#[test]
fn console_false_leaves_only_the_api() {
    let sb = Sandbox::new();
    let srv = Server::start(&sb, "console = false");
    for p in ["/", "/console/login", "/console/assets/console.css"] {
        let r = curl(&format!("{}{p}", srv.url), "GET", &[]);
        assert_eq!(r.status, 404, "{p}: {}", r.body);
    }
    assert_eq!(srv.curl("GET", "/api/v1/whoami", Some(&srv.token), None).0, 200);
    // And on by default.
    let sb2 = Sandbox::new();
    let on = Server::start(&sb2, "");
    assert_eq!(curl(&format!("{}/console/login", on.url), "GET", &[]).status, 200);
    let css = curl(&format!("{}/console/assets/console.css", on.url), "GET", &[]);
    assert_eq!((css.status, css.header("content-type").as_deref()), (200, Some("text/css; charset=utf-8")));
}

// ---------------------------------------------------------------- in a real browser

/// A WebDriver session of chromedriver running in namespace `ns`, spoken to with curl
/// run in the same namespace (the server listens on that namespace's loopback).
struct Browser {
    ns: String,
    base: String,
    session: String,
    _driver: Bg,
}

impl Browser {
    fn start(ns: &str, port: u16) -> Browser {
        let driver = Bg(ns_cmd(ns, "chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; make deps)"));
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser { ns: ns.into(), base, session: String::new(), _driver: driver };
        let t0 = Instant::now();
        while b.raw("GET", "/status", None)["value"]["ready"] != true {
            assert!(t0.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let v = b.raw("POST", "/session", Some(&caps));
        b.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        b
    }

    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let mut c = ns_cmd(&self.ns, "curl");
        // Every command answers within seconds; one that hangs (a page that cannot load, say,
        // with the browser's connections to the server used up) fails the test.
        c.args(["-s", "--max-time", "20", "-X", method, &format!("{}{path}", self.base)]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
        }
        let t0 = Instant::now();
        let o = c.output().unwrap();
        if t0.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "WebDriver {method} {path} took {:?}: {:.120}",
                t0.elapsed(),
                body.map(|b| b.to_string()).unwrap_or_default()
            );
        }
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    /// A session command; panics on a WebDriver error.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self.raw(method, &format!("/session/{}{path}", self.session), body.as_ref());
        assert!(v.get("value").is_some(), "WebDriver {method} {path}: no answer (timed out?)");
        assert!(v["value"]["error"].is_null(), "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    fn text(&self, css: &str) -> String {
        let q = serde_json::to_string(css).unwrap();
        self.js(&format!("var e = document.querySelector({q}); return e ? e.textContent : '';"))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap().to_string()
    }

    /// Wait until `css`'s text contains `want`.
    fn wait_text(&self, css: &str, want: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let t = self.text(css);
            if t.contains(want) {
                return t;
            }
            assert!(t0.elapsed() < within, "{css} never showed {want:?}; it shows {t:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, dir: &Path, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None).as_str().unwrap().to_string();
        let tmp = dir.join(format!("{name}.b64"));
        std::fs::write(&tmp, b64).unwrap();
        let png = dir.join(format!("{name}.png"));
        let o = Command::new("base64").arg("-d").arg(&tmp).output().unwrap();
        assert!(o.status.success());
        assert_eq!(&o.stdout[..8], b"\x89PNG\r\n\x1a\n", "{name} is not a PNG");
        std::fs::write(&png, &o.stdout).unwrap();
        let _ = std::fs::remove_file(tmp);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
    }
}

#[test]
fn in_a_browser_log_in_collect_a_mac_live_and_assign_it() {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"alpha").unwrap();
    sb.ok(&["capture", "--name", "base", src.to_str().unwrap()]);

    // The server (HTTP, DHCP) in one namespace, the DHCP client in another.
    let mut netns = Netns::new("w");
    let (srv_ns, cli_ns) = (netns.add("s"), netns.add("c"));
    let (sif, cif) = ("w0s", "w0c");
    let n = netns.subnet;
    netns.veth(&srv_ns, sif, &cli_ns, cif);
    netns.addr(&srv_ns, sif, &format!("10.{n}.0.1/24"));
    let mac = "52:54:00:c0:ff:ee";
    ns_sh(&cli_ns, &format!("ip link set dev {cif} address {mac}"));
    netns.up(&cli_ns, cif);
    let cfg = sb.path("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[dhcp]\ninterface = \"{sif}\"\nserver_ip = \"10.{n}.0.1\"\nsubnet = \"10.{n}.0.0/24\"\nrange = \"10.{n}.0.100-10.{n}.0.110\"\nrouter = \"10.{n}.0.1\"\nlease_time = \"10m\"\nmode = \"server\"\n",
            sb.data().to_str().unwrap()
        ),
    )
    .unwrap();
    let srv = Server::start_cmd(&sb, ns_cmd(&srv_ns, bin()).args(["serve", "--config", cfg.to_str().unwrap()]));
    let b = Browser::start(&srv_ns, 9515);

    // Log in through the form.
    b.go(&format!("{}/", srv.url));
    assert!(b.url().ends_with("/console/login"), "{}", b.url());
    b.screenshot(&shots, "login");
    b.type_into("#token", &srv.token);
    b.click("button[type=submit]");
    b.wait_text("h1", "Overview", Duration::from_secs(10));
    assert!(b.url().ends_with('/'), "{}", b.url());
    b.wait_text("#live-state", "on", Duration::from_secs(10));
    b.screenshot(&shots, "overview");

    // Nodes: start collecting; the page reloads with the collection on.
    b.go(&format!("{}/console/nodes", srv.url));
    b.wait_text("#collect", "off", Duration::from_secs(5));
    b.click("#collect button[type=submit]");
    b.wait_text("#collect", "on", Duration::from_secs(10));
    b.wait_text("#live-state", "on", Duration::from_secs(10));
    // From here on the page must not reload: the MAC comes in over the event stream.
    b.js("window.__stay = 42; return null;");
    // DHCP re-reads the collection window at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let out = ns_cmd(&cli_ns, "busybox")
        .args(["udhcpc", "-i", cif, "-n", "-q", "-f", "-t", "3", "-T", "1", "-A", "1", "-s", "/bin/true"])
        .args(["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"])
        .output()
        .unwrap();
    let shown = b.wait_text("#discovered", mac, Duration::from_secs(20));
    assert!(shown.contains(&format!("on {sif}")), "{shown}\nudhcpc: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(b.js("return window.__stay || null;"), json!(42), "the page reloaded instead of updating live");
    b.screenshot(&shots, "nodes-discovered");

    // Assign it: the node with the proposed network identity.
    let card = format!("li[data-mac='{mac}']");
    b.type_into(&format!("{card} input[name=name]"), "standby-b");
    b.click(&format!("{card} button[type=submit]"));
    let flash = b.wait_text("main", "assigned", Duration::from_secs(30));
    assert!(flash.contains(&format!("Node standby-b assigned to {mac}")), "{flash}");
    b.wait_text("#nodes", "standby-b", Duration::from_secs(5));
    b.screenshot(&shots, "nodes-assigned");
    let node = srv.curl_in(Some(&srv_ns), "GET", "/api/v1/nodes/standby-b", Some(&srv.token), None);
    assert_eq!(node.0, 200, "{}", node.1);
    assert!(node.1.contains(mac), "{}", node.1);
    let net = srv.curl_in(Some(&srv_ns), "GET", "/api/v1/nodes/standby-b/network", Some(&srv.token), None);
    let v: Value = serde_json::from_str(&net.1).unwrap();
    let addrs = v["interfaces"][0]["addresses"].to_string();
    assert!(addrs.contains(&format!("10.{n}.0.")), "the proposal's address on the server's network: {v}");
    assert!(!addrs.contains(&format!("10.{n}.0.1/")), "not the server's own: {v}");

    // Every other page, for the record.
    for (path, name, heading) in [
        ("/console/images", "images", "Images"),
        ("/console/deployments", "deployments", "Deployments"),
        ("/console/failover", "failover", "Failover"),
    ] {
        b.go(&format!("{}{path}", srv.url));
        b.wait_text("h1", heading, Duration::from_secs(5));
        b.screenshot(&shots, name);
    }
    // Verify from the Images page: the job shows up and finishes.
    b.go(&format!("{}/console/images", srv.url));
    b.click("#images button[type=submit]");
    b.wait_text("main", "Verifying base@1", Duration::from_secs(10));
    let jobs = b.wait_text("#jobs", "done", Duration::from_secs(15));
    assert!(jobs.contains("verify"), "{jobs}");
    b.screenshot(&shots, "images-verified");
    // A phone-sized window still shows the navigation.
    b.cmd("POST", "/window/rect", Some(json!({"width": 390, "height": 844})));
    b.go(&format!("{}/console/nodes", srv.url));
    b.wait_text("nav", "Deployments", Duration::from_secs(5));
    b.screenshot(&shots, "nodes-phone");
    let wide = b.js(
        "var w = document.documentElement.clientWidth, out = [];\
         document.querySelectorAll('body *').forEach(function (e) {\
           var r = e.getBoundingClientRect();\
           if (r.right > w + 1 && !e.closest('.scroll')) out.push(e.tagName + '.' + e.className + ' ' + Math.round(r.right));\
         });\
         return [document.documentElement.scrollWidth - w, out.slice(0, 10)];",
    );
    assert_eq!(wide[0], json!(0), "the page is wider than a phone's screen: {wide}");
    // Logging out in the browser lands on the login page.
    b.click("header form button[type=submit]");
    b.wait_text("h1", "understudy console", Duration::from_secs(5));
}

/// The actions added with the wizard, the node edit form and the node proposal: each one
/// refuses a request without the session's CSRF token (none, empty, another session's,
/// made up) and one without a session, and does nothing; a node name with HTML in it (put
/// in the database behind the API's back, as only a damaged or hostile database could hold
/// it) shows as text on every page that lists nodes.
#[test]
fn every_new_action_needs_the_csrf_token_and_a_session_and_names_are_escaped() {
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"alpha").unwrap();
    sb.ok(&["capture", "--name", "base", src.to_str().unwrap()]);
    let srv = Server::start(&sb, "");
    let url = srv.url.clone();
    let (s, b) = srv.curl(
        "POST",
        "/api/v1/nodes",
        Some(&srv.token),
        Some(r#"{"name":"n1","role":"standby","macs":["52:54:00:00:00:01"],"image":"base"}"#),
    );
    assert_eq!(s, 201, "{b}");
    let before = srv.curl("GET", "/api/v1/nodes/n1", Some(&srv.token), None).1;
    let net_before = srv.curl("GET", "/api/v1/nodes/n1/network", Some(&srv.token), None).1;

    let jar = format!("Cookie: understudy_session={}", cookie_value(&login(&url, &srv.token, &[]).cookie("understudy_session").unwrap()));
    let other = cookie_value(&login(&url, &srv.token, &[]).cookie("understudy_session").unwrap());
    let other_csrf = curl(&format!("{url}/"), "GET", &["-H", &format!("Cookie: understudy_session={other}")]).csrf();
    let csrf = curl(&format!("{url}/"), "GET", &["-H", &jar]).csrf();
    assert_ne!(csrf, other_csrf);

    let actions: &[(&str, &str)] = &[
        ("/console/nodes/edit", "name=n1&role=compute&image=&macs=52:54:00:00:00:99&if-0-role=private&if-0-addresses=10.9.9.9/24"),
        ("/console/nodes/propose", "name=n1"),
        ("/console/standby/image", "name=n2&image=base"),
        ("/console/standby/capture", "name=n2&capture_name=sneaky"),
        ("/console/standby/collect", "name=n2"),
        ("/console/standby/node", "name=n2&image=base&mac=52:54:00:00:00:02"),
        ("/console/standby/network", "name=n1&identity=%7B%22interfaces%22%3A%5B%5D%7D"),
        ("/console/standby/redeploy", "name=n1"),
    ];
    for (path, body) in actions {
        for bad in ["", "&csrf=", &format!("&csrf={other_csrf}"), "&csrf=0123"] {
            let r = curl(&format!("{url}{path}"), "POST", &["-H", &jar, "--data", &format!("{body}{bad}")]);
            assert_eq!(r.status, 403, "{path} with {bad:?}: {}", r.body);
            assert!(r.body.contains("CSRF token"), "{path}: {}", r.body);
        }
        let r = curl(&format!("{url}{path}"), "POST", &["--data", &format!("{body}&csrf={csrf}")]);
        assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/login")), "{path} without a session");
    }
    // Nothing happened: n1 as it was, no n2, no collection, no capture.
    assert_eq!(srv.curl("GET", "/api/v1/nodes/n1", Some(&srv.token), None).1, before);
    assert_eq!(srv.curl("GET", "/api/v1/nodes/n1/network", Some(&srv.token), None).1, net_before);
    assert_eq!(srv.curl("GET", "/api/v1/nodes/n2", Some(&srv.token), None).0, 404);
    let page = curl(&format!("{url}/console/nodes"), "GET", &["-H", &jar]);
    assert!(page.body.contains("MAC collection is <strong>off</strong>"), "{}", page.body);
    assert_eq!(srv.curl("GET", "/api/v1/images/sneaky", Some(&srv.token), None).0, 404);
    // The pages behind them need a session too.
    for p in ["/console/standby", "/console/standby?name=n1", "/console/nodes/edit?name=n1"] {
        let r = curl(&format!("{url}{p}"), "GET", &[]);
        assert_eq!((r.status, r.header("location").as_deref()), (303, Some("/console/login")), "{p}");
    }

    // A node name with HTML shows as text.
    let db = sb.data().join("understudy.db");
    let o = Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO nodes (name, role, image, state, created, updated) VALUES ('<img src=x onerror=alert(1)>', 'standby', NULL, 'discovered', '2026-12-01T10:00:00Z', '2026-12-01T10:00:00Z')")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for p in ["/console/nodes", "/", "/console/standby"] {
        let r = curl(&format!("{url}{p}"), "GET", &["-H", &jar]);
        assert_eq!(r.status, 200, "{p}: {}", r.body);
        assert!(r.body.contains("&lt;img src=x onerror=alert(1)&gt;"), "{p}: {}", r.body);
        assert!(!r.body.contains("<img src=x"), "{p}: {}", r.body);
    }
    // Its edit link carries the name URL-encoded, not as markup.
    let nodes = curl(&format!("{url}/console/nodes"), "GET", &["-H", &jar]);
    assert!(nodes.body.contains("/console/nodes/edit?name=%3Cimg+src%3Dx+onerror%3Dalert%281%29%3E"), "{}", nodes.body);
}
