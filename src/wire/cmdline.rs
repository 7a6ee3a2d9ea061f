//! The kernel command line of the boot environment: the contract between the boot script
//! the server writes ([`render`]) and the agent that reads it ([`parse`]). One set of key
//! constants, one renderer, one parser, so the two sides cannot drift apart.

/// Keys the server sets: reserved, so the admin's extra arguments cannot override them.
pub const RESERVED: &[&str] = &[SERVER, DEPLOYMENT, NODE, TOKEN, BOOT_MAC];

/// Server base URL.
pub const SERVER: &str = "understudy.server";
/// Deployment id.
pub const DEPLOYMENT: &str = "understudy.deployment";
/// Node name.
pub const NODE: &str = "understudy.node";
/// Deployment token.
pub const TOKEN: &str = "understudy.token";
/// The MAC the machine network-booted from: the boot environment waits for DHCP on that
/// NIC only (the others come up in the background).
pub const BOOT_MAC: &str = "understudy.mac";
/// Target disk (`/dev/...`).
pub const DISK: &str = "understudy.disk";
/// `none` (or another no) skips the bootloader.
pub const BOOTLOADER: &str = "understudy.bootloader";
/// Keep the image's ssh host keys.
pub const KEEP_SSH_KEYS: &str = "understudy.keep_ssh_keys";
/// `0` leaves the machine up after the deploy.
pub const REBOOT: &str = "understudy.reboot";

/// Longest token accepted.
pub const TOKEN_MAX: usize = 256;

/// What the agent was told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// Server base URL (`understudy.server`).
    pub server: String,
    /// Deployment id (`understudy.deployment`).
    pub deployment: i64,
    /// Node name (`understudy.node`).
    pub node: String,
    /// Deployment token (`understudy.token`).
    pub token: String,
    /// Target disk (`understudy.disk`), else the first suitable one.
    pub disk: Option<String>,
    /// `understudy.bootloader=none` skips the bootloader (the node boots some other way).
    pub bootloader: bool,
    /// `understudy.keep_ssh_keys=1` keeps the image's ssh host keys (default: new ones).
    pub keep_ssh_keys: bool,
    /// `understudy.reboot=0` leaves the machine up after a deploy (for debugging).
    pub reboot: bool,
}

/// A command line that cannot drive the agent, or a value the server will not write.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A required key is absent.
    #[error("kernel command line has no {0}= (this machine was not network-booted by understudy)")]
    Missing(&'static str),
    /// A key has an unusable value.
    #[error("kernel command line: {0}")]
    Invalid(String),
}

fn flag(key: &str, v: Option<&str>, default: bool) -> Result<bool, CmdlineError> {
    match v {
        None => Ok(default),
        Some("1" | "yes" | "true" | "on") => Ok(true),
        Some("0" | "no" | "false" | "off" | "none") => Ok(false),
        Some(o) => Err(CmdlineError::Invalid(format!("{key}={o:?} is not a yes/no value (use 1 or 0)"))),
    }
}

fn host_chars(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// Check a server URL (`boot.server_url`, `understudy.server`): `http://` or `https://`, a
/// host, an optional port and path.
pub fn check_server_url(u: &str) -> Result<(), CmdlineError> {
    let bad = |why: String| Err(CmdlineError::Invalid(why));
    let Some(rest) = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")) else {
        return bad(format!("server URL {u:?} must start with http:// or https://"));
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !host_chars(host) {
        return bad(format!("server URL {u:?} has no valid host (letters, digits, '.', '-', ':', '[', ']')"));
    }
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b)) {
        return bad(format!("server URL {u:?} has characters that do not belong in a path"));
    }
    Ok(())
}

/// Is `host` (a Host header) usable as the server's address in a URL?
pub fn usable_host(host: &str) -> bool {
    host_chars(host) && host.len() <= 255
}

fn check_token(token: &str) -> Result<(), CmdlineError> {
    if token.is_empty() || token.len() > TOKEN_MAX || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CmdlineError::Invalid("the token is malformed (letters and digits, at most 256)".into()));
    }
    Ok(())
}

fn check_node(node: &str) -> Result<(), CmdlineError> {
    crate::inventory::names::check_name(node).map_err(|_| CmdlineError::Invalid(format!("bad node name {node:?}")))
}

/// The kernel command line of the deploy environment: the admin's `extra` arguments, then
/// the server's keys (which the agent reads last-wins, so they cannot be overridden).
pub fn render(
    extra: &str,
    server: &str,
    deployment: i64,
    node: &str,
    token: &str,
    mac: &str,
) -> Result<String, CmdlineError> {
    check_server_url(server)?;
    check_node(node)?;
    check_token(token)?;
    if mac.parse::<crate::netcfg::Mac>().is_err() {
        return Err(CmdlineError::Invalid(format!("boot MAC {mac:?} is not a MAC address")));
    }
    if deployment < 1 {
        return Err(CmdlineError::Invalid(format!("deployment {deployment} is not a positive number")));
    }
    let mut s = String::from(extra.trim());
    if !s.is_empty() {
        s.push(' ');
    }
    s.push_str(&format!("{SERVER}={server} {DEPLOYMENT}={deployment} {NODE}={node} {TOKEN}={token} {BOOT_MAC}={mac}"));
    Ok(s)
}

/// The value of the last `key=value` word, as the kernel reads its own parameters.
fn last_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().filter_map(|w| w.strip_prefix(key)?.strip_prefix('=')).next_back()
}

/// Parse `/proc/cmdline`. The last occurrence of a key wins, as with the kernel's own.
pub fn parse(cmdline: &str) -> Result<BootArgs, CmdlineError> {
    let get = |key: &str| last_value(cmdline, key);
    let server = get(SERVER).ok_or(CmdlineError::Missing(SERVER))?;
    check_server_url(server)?;
    let deployment = get(DEPLOYMENT).ok_or(CmdlineError::Missing(DEPLOYMENT))?;
    let deployment = deployment
        .parse::<i64>()
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| CmdlineError::Invalid(format!("deployment {deployment:?} is not a positive number")))?;
    let node = get(NODE).ok_or(CmdlineError::Missing(NODE))?;
    check_node(node)?;
    let token = get(TOKEN).ok_or(CmdlineError::Missing(TOKEN))?;
    check_token(token)?;
    let o = options(cmdline)?;
    Ok(BootArgs {
        server: server.trim_end_matches('/').to_string(),
        deployment,
        node: node.to_string(),
        token: token.to_string(),
        disk: o.disk,
        bootloader: o.bootloader,
        keep_ssh_keys: o.keep_ssh_keys,
        reboot: o.reboot,
    })
}

/// The optional keys the admin may set (`understudy.disk`, `.bootloader`,
/// `.keep_ssh_keys`, `.reboot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `understudy.disk`.
    pub disk: Option<String>,
    /// `understudy.bootloader`.
    pub bootloader: bool,
    /// `understudy.keep_ssh_keys`.
    pub keep_ssh_keys: bool,
    /// `understudy.reboot`.
    pub reboot: bool,
}

/// Read the optional keys as the agent does (the last of a key wins). The server checks
/// the admin's `boot.cmdline` with this too, so a value the agent would refuse is refused
/// when it is configured, not at a node's boot.
pub fn options(cmdline: &str) -> Result<Options, CmdlineError> {
    let get = |key: &str| last_value(cmdline, key);
    let disk = match get(DISK) {
        Some(d) if d.starts_with("/dev/") && !d.contains("..") && d.len() < 64 => Some(d.to_string()),
        Some(d) => return Err(CmdlineError::Invalid(format!("disk {d:?} must be a /dev path"))),
        None => None,
    };
    Ok(Options {
        disk,
        bootloader: flag(BOOTLOADER, get(BOOTLOADER), true)?,
        keep_ssh_keys: flag(KEEP_SSH_KEYS, get(KEEP_SSH_KEYS), false)?,
        reboot: flag(REBOOT, get(REBOOT), true)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "BOOT_IMAGE=vmlinuz initrd=initramfs console=ttyS0 understudy.server=http://10.0.0.1:8080 understudy.deployment=7 understudy.node=standby understudy.token=abc123";

    #[test]
    fn parses_what_the_boot_script_writes() {
        let a = parse(LINE).unwrap();
        assert_eq!(a.server, "http://10.0.0.1:8080");
        assert_eq!((a.deployment, a.node.as_str(), a.token.as_str()), (7, "standby", "abc123"));
        assert!(a.bootloader && a.reboot && !a.keep_ssh_keys && a.disk.is_none());
        let b = parse(&format!(
            "{LINE} understudy.disk=/dev/vdb understudy.bootloader=none understudy.reboot=0 understudy.deployment=9"
        ))
        .unwrap();
        assert_eq!((b.disk.as_deref(), b.bootloader, b.reboot, b.deployment), (Some("/dev/vdb"), false, false, 9));
    }

    const M: &str = "52:54:00:12:34:56";

    #[test]
    fn render_and_parse_agree() {
        let line = render(" console=ttyS0 ", "http://h:8080", 3, "standby", "t0k3n", M).unwrap();
        assert_eq!(
            line,
            "console=ttyS0 understudy.server=http://h:8080 understudy.deployment=3 understudy.node=standby understudy.token=t0k3n understudy.mac=52:54:00:12:34:56"
        );
        let a = parse(&line).unwrap();
        assert_eq!(
            (a.server.as_str(), a.deployment, a.node.as_str(), a.token.as_str()),
            ("http://h:8080", 3, "standby", "t0k3n")
        );
        assert!(render("", "http://h", 3, "n", "t", M).unwrap().starts_with("understudy.server="));
        // The server's keys come last, so extra arguments naming them lose.
        let a = parse(&render("understudy.node=evil", "http://h", 3, "n", "t", M).unwrap()).unwrap();
        assert_eq!(a.node, "n");
        assert!(render("", "ftp://h", 3, "n", "t", M).is_err());
        assert!(render("", "http://h", 0, "n", "t", M).is_err());
        assert!(render("", "http://h", 3, "../n", "t", M).is_err());
        assert!(render("", "http://h", 3, "n", "t;reboot", M).is_err());
        assert!(render("", "http://h", 3, "n", "t", "52:54:00:12:34; reboot").is_err());
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert_eq!(parse("quiet"), Err(CmdlineError::Missing("understudy.server")));
        let bad = [
            LINE.replace("deployment=7", "deployment=-1"),
            LINE.replace("deployment=7", "deployment=x"),
            LINE.replace("node=standby", "node=../x"),
            LINE.replace("token=abc123", "token=a;b"),
            LINE.replace("http://", "ftp://"),
            format!("{LINE} understudy.disk=vda"),
            format!("{LINE} understudy.disk=/dev/../etc"),
            format!("{LINE} understudy.reboot=maybe"),
        ];
        for b in bad {
            assert!(matches!(parse(&b), Err(CmdlineError::Invalid(_))), "{b}");
        }
        assert_eq!(parse(&LINE.replace("understudy.token=abc123", "")), Err(CmdlineError::Missing("understudy.token")));
    }

    #[test]
    fn server_urls() {
        assert!(check_server_url("http://10.0.0.1:8080").is_ok());
        assert!(check_server_url("https://head.example/understudy").is_ok());
        assert!(check_server_url("ftp://x").is_err());
        assert!(check_server_url("http://a b").is_err());
        assert!(check_server_url("http://").is_err());
        assert!(usable_host("10.0.0.1:8080") && !usable_host("evil host"));
    }
}
