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
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// One browser at a time: the machine has few cores, and three Chromiums at once slow
/// every test down more than running them one after another.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Browser {
    fn start(ns: &str, port: u16) -> Browser {
        let turn = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
        let driver = Bg(ns_cmd(ns, "chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; make deps)"));
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser { ns: ns.into(), base, session: String::new(), _driver: driver, _turn: turn };
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

    fn clear(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
    }

    /// Pick `value` in the select `css` (as a click on its option would).
    fn select(&self, css: &str, value: &str) {
        let q = serde_json::to_string(css).unwrap();
        let v = serde_json::to_string(value).unwrap();
        let ok = self.js(&format!(
            "var s = document.querySelector({q}); if (!s) return false; s.value = {v}; return s.value === {v};"
        ));
        assert_eq!(ok, json!(true), "{css} has no option {value}");
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

    let jar = format!(
        "Cookie: understudy_session={}",
        cookie_value(&login(&url, &srv.token, &[]).cookie("understudy_session").unwrap())
    );
    let other = cookie_value(&login(&url, &srv.token, &[]).cookie("understudy_session").unwrap());
    let other_csrf = curl(&format!("{url}/"), "GET", &["-H", &format!("Cookie: understudy_session={other}")]).csrf();
    let csrf = curl(&format!("{url}/"), "GET", &["-H", &jar]).csrf();
    assert_ne!(csrf, other_csrf);

    let actions: &[(&str, &str)] = &[
        (
            "/console/nodes/edit",
            "name=n1&role=compute&image=&macs=52:54:00:00:00:99&if-0-role=private&if-0-addresses=10.9.9.9/24",
        ),
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
        assert_eq!(
            (r.status, r.header("location").as_deref()),
            (303, Some("/console/login")),
            "{path} without a session"
        );
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

/// A recorded layout with two disks, RAID1, LVM and an ESP (as `images layout --from` takes it).
const RAID_LVM_LAYOUT: &str = r#"{
  "version": 1, "boot_mode": "uefi", "bootloader": "grub-efi",
  "items": [
    {"type": "disk", "id": "d1", "size": 21474836480, "ptable": "gpt", "match": {"path": "/dev/vda", "serial": "S1"}},
    {"type": "disk", "id": "d2", "size": 21474836480, "ptable": "gpt", "match": {"path": "/dev/vdb"}},
    {"type": "partition", "id": "esp", "device": "d1", "number": 1, "size": 536870912, "part_type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "flags": ["esp"]},
    {"type": "partition", "id": "p1", "device": "d1", "number": 2, "size": 10737418240, "part_type": "A19D880F-05FC-4D3B-A006-743F0F84911E", "flags": ["raid"]},
    {"type": "partition", "id": "p2", "device": "d2", "number": 1, "size": 10737418240, "part_type": "A19D880F-05FC-4D3B-A006-743F0F84911E", "flags": ["raid"]},
    {"type": "raid", "id": "md0", "name": "0", "level": 1, "devices": ["p1", "p2"], "metadata": "1.2", "uuid": "11111111:22222222:33333333:44444444"},
    {"type": "lvm_volgroup", "id": "vg", "name": "vg0", "uuid": "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg", "devices": [{"device": "md0", "uuid": "hhhhhh-iiii-jjjj-kkkk-llll-mmmm-nnnnnn"}], "extent_size": 4194304},
    {"type": "lvm_partition", "id": "lvroot", "volgroup": "vg", "name": "root", "uuid": "oooooo-pppp-qqqq-rrrr-ssss-tttt-uuuuuu", "size": 4294967296, "kind": "linear"},
    {"type": "format", "id": "fesp", "volume": "esp", "fstype": "vfat", "uuid": "1A2B-3C4D"},
    {"type": "format", "id": "froot", "volume": "lvroot", "fstype": "ext4", "label": "root", "uuid": "0e7a1c8e-1b1d-4c59-9d5e-0123456789ab"},
    {"type": "mount", "id": "mroot", "device": "froot", "path": "/", "options": "noatime"},
    {"type": "mount", "id": "mesp", "device": "fesp", "path": "/boot/efi", "options": "umask=0077"}
  ]}"#;

/// The standby wizard in a browser, every step's state changing live: an image picked, MAC
/// collection opened, the standby's PXE request (busybox udhcpc in another namespace)
/// appearing without a reload, the node registered, the proposed identity set, and the
/// deploy followed as a deploy client reports progress (rate shown), to the end. Then the
/// Images page's layout table, and a node edit round-trip with a refused address.
#[test]
fn in_a_browser_the_standby_wizard_the_layout_table_and_a_node_edit() {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let sb = Sandbox::new();
    let src = sb.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), noise(300_000, 7)).unwrap();
    sb.ok(&["capture", "--name", "base", src.to_str().unwrap()]);

    let mut netns = Netns::new("z");
    let (srv_ns, cli_ns) = (netns.add("s"), netns.add("c"));
    let (sif, cif) = ("z0s", "z0c");
    let n = netns.subnet;
    netns.veth(&srv_ns, sif, &cli_ns, cif);
    netns.addr(&srv_ns, sif, &format!("10.{n}.0.1/24"));
    let mac = "52:54:00:5b:00:01";
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
    let api = |method: &str, path: &str, token: &str, body: Option<&str>| {
        srv.curl_in(Some(&srv_ns), method, path, Some(token), body)
    };
    let (s, b) = api("PUT", "/api/v1/images/base@1/layout", &srv.token, Some(RAID_LVM_LAYOUT));
    assert_eq!(s, 200, "{b}");
    let b = Browser::start(&srv_ns, 9516);
    b.go(&format!("{}/", srv.url));
    b.type_into("#token", &srv.token);
    b.click("button[type=submit]");
    b.wait_text("h1", "Overview", Duration::from_secs(10));

    // The wizard: a name, then step 1.
    b.go(&format!("{}/console/standby", srv.url));
    b.wait_text("h1", "Add a standby", Duration::from_secs(10));
    b.clear("#standby-name");
    b.type_into("#standby-name", "standby-w");
    b.click("main form button[type=submit]");
    b.wait_text("#step-image", "your turn", Duration::from_secs(10));
    assert!(b.text("#step-mac").contains("later"), "{}", b.text("#wizard"));
    b.screenshot(&shots, "wizard-start");
    b.select("#wizard-image", "base@1");
    b.click("#step-image form[action='/console/standby/image'] button");
    b.wait_text("#step-image", "base@1 (chosen)", Duration::from_secs(10));
    b.click("#step-mac form[action='/console/standby/collect'] button");
    b.wait_text("#step-mac", "MAC collection open", Duration::from_secs(10));
    b.wait_text("#live-state", "on", Duration::from_secs(10));
    b.screenshot(&shots, "wizard-collecting");
    // The PXE request comes in over the event stream: the page does not reload.
    b.js("window.__stay = 7; return null;");
    std::thread::sleep(Duration::from_millis(1100));
    let _ = ns_cmd(&cli_ns, "busybox")
        .args(["udhcpc", "-i", cif, "-n", "-q", "-f", "-t", "3", "-T", "1", "-A", "1", "-s", "/bin/true"])
        .args(["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"])
        .output()
        .unwrap();
    let step = b.wait_text("#step-mac", &format!("{mac} network-booted on {sif}"), Duration::from_secs(20));
    assert!(step.contains("your turn"), "{step}");
    assert_eq!(b.js("return window.__stay || null;"), json!(7), "the wizard reloaded instead of updating live");
    b.screenshot(&shots, "wizard-mac-seen");
    b.click("#step-mac form[action='/console/standby/node'] button");
    b.wait_text("#step-node", "done", Duration::from_secs(10));
    let net_step = b.wait_text("#step-network", "your turn", Duration::from_secs(10));
    assert!(net_step.contains(&format!("10.{n}.0.")), "the proposal on the server's network: {net_step}");
    let node: Value = serde_json::from_str(&api("GET", "/api/v1/nodes/standby-w", &srv.token, None).1).unwrap();
    assert_eq!((node["role"].as_str(), node["image"].as_str()), (Some("standby"), Some("base@1")), "{node}");
    assert_eq!(node["macs"][0].as_str(), Some(mac), "{node}");
    b.screenshot(&shots, "wizard-network");
    b.click("#step-network form button");
    b.wait_text("#step-network", "done", Duration::from_secs(15));
    b.wait_text("#step-deploy", "network-boot standby-w now", Duration::from_secs(10));
    assert!(b.text("#step-join").contains("later"));

    // A deploy client reports; the deploy step follows without a reload.
    b.wait_text("#live-state", "on", Duration::from_secs(10));
    b.js("window.__stay = 8; return null;");
    let (s, body) = api("POST", "/api/v1/deployments", &srv.token, Some(r#"{"node":"standby-w"}"#));
    assert_eq!(s, 201, "{body}");
    let d: Value = serde_json::from_str(&body).unwrap();
    let (did, dtok) = (d["deployment"]["id"].as_i64().unwrap(), d["token"].as_str().unwrap().to_string());
    let total = serde_json::from_str::<Value>(&api("GET", &format!("/api/v1/deployments/{did}"), &srv.token, None).1)
        .unwrap()["bytes_total"]
        .as_i64()
        .unwrap();
    let report = |status: &str, done: i64| {
        let body = json!({"status": status, "phase": "chunks", "bytes_done": done}).to_string();
        let (s, r) = api("POST", &format!("/api/v1/deployments/{did}/progress"), &dtok, Some(&body));
        assert_eq!(s, 200, "{r}");
    };
    report("running", total / 4);
    b.wait_text("#step-deploy", "chunks:", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(2500));
    report("running", total / 2);
    let step = b.wait_text("#step-deploy", "Rate ", Duration::from_secs(10));
    assert!(step.contains("time left"), "{step}");
    assert!(b.js("return document.querySelector('#step-deploy progress') !== null;") == json!(true), "{step}");
    b.screenshot(&shots, "wizard-deploying");
    report("done", total);
    b.wait_text("#step-deploy", "deployed; it boots its own disk", Duration::from_secs(10));
    let join = b.wait_text("#step-join", "nothing to join", Duration::from_secs(10));
    assert!(join.contains("skipped"), "{join}");
    assert_eq!(b.js("return window.__stay || null;"), json!(8), "the wizard reloaded instead of updating live");
    b.screenshot(&shots, "wizard-done");
    // The deployments page says how fast it went; the overview what the standby runs.
    b.go(&format!("{}/console/deployments", srv.url));
    b.wait_text("#deployments", "standby-w", Duration::from_secs(10));
    b.go(&format!("{}/", srv.url));
    let ov = b.wait_text("#overview", "standby-w", Duration::from_secs(10));
    assert!(ov.contains("runs base@1"), "{ov}");
    b.screenshot(&shots, "overview-standby");

    // The Images page: dedup and age per version, the recorded layout as a table.
    b.go(&format!("{}/console/images", srv.url));
    let row = b.wait_text("#images tr[data-image='base@1']", "base@1", Duration::from_secs(10));
    assert!(row.contains("not since the server started"), "{row}");
    assert!(row.contains("just now") || row.contains("min ago"), "{row}");
    let table = b.text("#layout table");
    for want in [
        "/dev/vda",
        "/dev/vdb",
        "/dev/md/0",
        "vg0/root",
        "RAID member of /dev/md/0",
        "/boot/efi",
        "/ (noatime)",
        "20 GiB",
    ] {
        assert!(table.contains(want), "{want:?} missing from the layout table: {table}");
    }
    assert!(b.text("#layout").contains("boot mode UEFI, bootloader GRUB (UEFI)"), "{}", b.text("#layout"));
    b.click("#images tr[data-image='base@1'] form button");
    b.wait_text("main", "Verifying base@1", Duration::from_secs(10));
    let t0 = Instant::now();
    while !api("GET", "/api/v1/jobs/1", &srv.token, None).1.contains(r#""state":"done""#) {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", api("GET", "/api/v1/jobs/1", &srv.token, None).1);
        std::thread::sleep(Duration::from_millis(200));
    }
    b.go(&format!("{}/console/images", srv.url));
    let v = b.wait_text("#images tr[data-image='base@1'] td.verify", "ok", Duration::from_secs(10));
    assert!(!v.contains("fault"), "{v}");
    b.screenshot(&shots, "images-layout");

    // Node edit: a new address saved and read back through the API; the server's own
    // address refused with the inventory's reason, the form keeping what was typed.
    b.go(&format!("{}/console/nodes", srv.url));
    b.click("a[href='/console/nodes/edit?name=standby-w']");
    b.wait_text("main h2", "Edit node standby-w", Duration::from_secs(10));
    b.screenshot(&shots, "node-edit");
    let fresh = format!("10.{n}.0.150/24");
    b.clear("#if-0-addresses");
    b.type_into("#if-0-addresses", &fresh);
    b.click("form.edit button[type=submit]");
    b.wait_text("main", "Node standby-w saved: network identity", Duration::from_secs(15));
    let net: Value = serde_json::from_str(&api("GET", "/api/v1/nodes/standby-w/network", &srv.token, None).1).unwrap();
    assert_eq!(net["interfaces"][0]["addresses"], json!([fresh]), "{net}");
    let own = format!("10.{n}.0.1/24");
    b.clear("#if-0-addresses");
    b.type_into("#if-0-addresses", &own);
    b.click("form.edit button[type=submit]");
    let why = b.wait_text("#edit-error", "refused", Duration::from_secs(15));
    assert!(why.contains(&format!("10.{n}.0.1")), "{why}");
    assert_eq!(b.js("return document.querySelector('#if-0-addresses').value;"), json!(own));
    let net2: Value = serde_json::from_str(&api("GET", "/api/v1/nodes/standby-w/network", &srv.token, None).1).unwrap();
    assert_eq!(net2, net, "a refused identity changed nothing");
    b.screenshot(&shots, "node-edit-refused");

    // On a phone: the new pages fit the screen (wide tables scroll inside their box).
    b.cmd("POST", "/window/rect", Some(json!({"width": 390, "height": 844})));
    for (path, wait, name) in [
        ("/console/standby?name=standby-w", "#step-deploy", "wizard-phone"),
        ("/console/nodes/edit?name=standby-w", "form.edit", "node-edit-phone"),
        ("/console/images", "#layout", "images-phone"),
    ] {
        b.go(&format!("{}{path}", srv.url));
        b.wait_text(wait, "", Duration::from_secs(10));
        let wide = b.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;");
        assert_eq!(wide, json!(0), "{path} is wider than a phone");
        b.screenshot(&shots, name);
    }
}

/// The failover pages against two real `serve` processes with `[failover]`, each in its own
/// namespace, joined by two veth pairs (a private and a public channel; the VIP lives on
/// the public one). In a browser on the standby's console: the holder is the primary; the
/// takeover button's confirmation, then the VIP moves to the standby (its interface and the
/// API say so, the page shows it live); the release moves it back.
#[test]
fn in_a_browser_a_switchover_moves_the_vip_between_two_serves() {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut netns = Netns::new("v");
    let (p_ns, s_ns) = (netns.add("p"), netns.add("s"));
    let n = netns.subnet;
    netns.veth(&p_ns, "pub", &s_ns, "pub");
    netns.veth(&p_ns, "priv", &s_ns, "priv");
    for (ns, host) in [(&p_ns, 1), (&s_ns, 2)] {
        netns.addr(ns, "pub", &format!("10.{n}.1.{host}/24"));
        netns.addr(ns, "priv", &format!("10.{n}.2.{host}/24"));
    }
    let vip = format!("10.{n}.1.10");
    let has_vip = |ns: &str| ns_out(ns, &["ip", "-br", "addr", "show", "dev", "pub"]).contains(&format!("{vip}/24"));
    let (pa, sa) = (Sandbox::new(), Sandbox::new());
    for sb in [&pa, &sa] {
        std::fs::create_dir_all(sb.data()).unwrap();
    }
    let key = pa.data().join("failover.key");
    pa.ok(&["failover", "keygen", key.to_str().unwrap()]);
    std::fs::copy(&key, sa.data().join("failover.key")).unwrap();
    let start = |sb: &Sandbox, ns: &str, node: &str, role: &str, me: u8, peer: u8| {
        let cfg = sb.path("serve.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[failover]\nnode = \"{node}\"\nrole = \"{role}\"\n\
                 interval = \"100ms\"\ndead_time = \"600ms\"\n\
                 [[failover.channel]]\nname = \"private\"\nlocal = \"10.{n}.2.{me}\"\npeer = \"10.{n}.2.{peer}\"\n\
                 [[failover.channel]]\nname = \"public\"\nlocal = \"10.{n}.1.{me}\"\npeer = \"10.{n}.1.{peer}\"\n\
                 [[failover.vip]]\naddress = \"{vip}/24\"\ninterface = \"pub\"\n",
                sb.data()
            ),
        )
        .unwrap();
        // The failover service logs each move; kept in the sandbox for a failure's message.
        let log = std::fs::File::create(sb.path("serve.log")).unwrap();
        Server::start_cmd(sb, ns_cmd(ns, bin()).args(["serve", "--config", cfg.to_str().unwrap()]).stderr(log))
    };
    let logs = || {
        let read = |sb: &Sandbox| std::fs::read_to_string(sb.path("serve.log")).unwrap_or_default();
        format!("primary log:\n{}\nstandby log:\n{}", read(&pa), read(&sa))
    };
    let primary = start(&pa, &p_ns, "head-a", "primary", 1, 2);
    let standby = start(&sa, &s_ns, "head-b", "standby", 2, 1);
    let status = |srv: &Server, ns: &str| -> Value {
        let (s, b) = srv.curl_in(Some(ns), "GET", "/api/v1/failover", Some(&srv.token), None);
        assert_eq!(s, 200, "{b}");
        serde_json::from_str(&b).unwrap()
    };
    let wait_holder = |who: &str, limit: Duration| {
        let t0 = Instant::now();
        loop {
            let (ps, ss) = (status(&primary, &p_ns), status(&standby, &s_ns));
            let (p_has, s_has) = (has_vip(&p_ns), has_vip(&s_ns));
            let on_iface = if who == "head-a" { p_has && !s_has } else { s_has && !p_has };
            if ps["holder"] == who && ss["holder"] == who && on_iface {
                return;
            }
            assert!(t0.elapsed() < limit, "{who} never held the VIP alone:\nprimary {ps}\nstandby {ss}\n{}", logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_holder("head-a", Duration::from_secs(10));
    // Both channels carry heartbeats before a switchover is asked for.
    let t0 = Instant::now();
    while !status(&standby, &s_ns)["channels"]
        .as_array()
        .is_some_and(|c| c.len() == 2 && c.iter().all(|x| x["up"] == true))
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "channels never came up: {}", status(&standby, &s_ns));
        std::thread::sleep(Duration::from_millis(100));
    }

    let b = Browser::start(&s_ns, 9517);
    b.go(&format!("{}/", standby.url));
    b.type_into("#token", &standby.token);
    b.click("button[type=submit]");
    b.wait_text("h1", "Overview", Duration::from_secs(10));
    let ov = b.wait_text("#overview", "VIP holder", Duration::from_secs(10));
    assert!(ov.contains("head-a"), "{ov}");
    b.go(&format!("{}/console/failover", standby.url));
    let page = b.wait_text("#failover", "head-a", Duration::from_secs(10));
    assert!(page.contains("backup"), "{page}");
    b.wait_text("#live-state", "on", Duration::from_secs(10));
    b.screenshot(&shots, "failover-backup");

    // Take over: the confirmation says what happens, then the VIP moves here.
    b.click("a[href='/console/failover/confirm?action=takeover']");
    let confirm = b.wait_text("main", "Take over the VIP?", Duration::from_secs(10));
    assert!(confirm.contains("head-a holds the VIP"), "{confirm}");
    b.screenshot(&shots, "failover-confirm");
    b.click("section.confirm button[type=submit]");
    b.wait_text("main", "took the takeover request", Duration::from_secs(10));
    wait_holder("head-b", Duration::from_secs(10));
    let shown = b.wait_text("#failover dl", "holding", Duration::from_secs(10));
    assert!(shown.contains("head-b"), "{shown}");
    b.screenshot(&shots, "failover-holding");

    // Release: back to the primary, checked the same two ways.
    b.click("a[href='/console/failover/confirm?action=release']");
    b.wait_text("main", "Release the VIP?", Duration::from_secs(10));
    b.click("section.confirm button[type=submit]");
    b.wait_text("main", "took the release request", Duration::from_secs(10));
    wait_holder("head-a", Duration::from_secs(10));
    let live = b.wait_text("#failover dl", "backup", Duration::from_secs(10));
    assert!(live.contains("head-a"), "{live}");
    let ev = status(&standby, &s_ns)["events"].to_string();
    assert!(ev.contains("failover.takeover") && ev.contains("failover.release"), "{ev}");
    // A move made elsewhere (the API) shows on the open page without a reload.
    b.wait_text("#live-state", "on", Duration::from_secs(10));
    b.js("window.__stay = 9; return null;");
    let (code, body) = standby.curl_in(Some(&s_ns), "POST", "/api/v1/failover/takeover", Some(&standby.token), None);
    assert_eq!(code, 202, "{body}");
    wait_holder("head-b", Duration::from_secs(10));
    let live = b.wait_text("#failover dl", "holding", Duration::from_secs(10));
    assert!(live.contains("head-b"), "{live}");
    assert_eq!(b.js("return window.__stay || null;"), json!(9), "the page reloaded instead of updating live");
}
