//! The agent's settings, read from the kernel command line the boot script wrote.

/// What the agent was told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentArgs {
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

/// A command line that cannot drive the agent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A required key is absent.
    #[error("kernel command line has no {0}= (this machine was not network-booted by understudy)")]
    Missing(&'static str),
    /// A key has an unusable value.
    #[error("kernel command line: {0}")]
    Invalid(String),
}

fn flag(v: Option<&str>, default: bool) -> Result<bool, CmdlineError> {
    match v {
        None => Ok(default),
        Some("1" | "yes" | "true" | "on") => Ok(true),
        Some("0" | "no" | "false" | "off" | "none") => Ok(false),
        Some(o) => Err(CmdlineError::Invalid(format!("{o:?} is not a yes/no value"))),
    }
}

/// Parse `/proc/cmdline`. The last occurrence of a key wins, as with the kernel's own.
pub fn parse(cmdline: &str) -> Result<AgentArgs, CmdlineError> {
    let get = |key: &str| cmdline.split_whitespace().filter_map(|w| w.strip_prefix(key)?.strip_prefix('=')).next_back();
    let server = get("understudy.server").ok_or(CmdlineError::Missing("understudy.server"))?;
    crate::boot::check_server_url(server).map_err(CmdlineError::Invalid)?;
    let deployment = get("understudy.deployment").ok_or(CmdlineError::Missing("understudy.deployment"))?;
    let deployment = deployment
        .parse::<i64>()
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| CmdlineError::Invalid(format!("deployment {deployment:?} is not a positive number")))?;
    let node = get("understudy.node").ok_or(CmdlineError::Missing("understudy.node"))?;
    crate::images::check_name(node).map_err(|_| CmdlineError::Invalid(format!("bad node name {node:?}")))?;
    let token = get("understudy.token").ok_or(CmdlineError::Missing("understudy.token"))?;
    if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CmdlineError::Invalid("the token is malformed".into()));
    }
    let disk = match get("understudy.disk") {
        Some(d) if d.starts_with("/dev/") && !d.contains("..") && d.len() < 64 => Some(d.to_string()),
        Some(d) => return Err(CmdlineError::Invalid(format!("disk {d:?} must be a /dev path"))),
        None => None,
    };
    Ok(AgentArgs {
        server: server.trim_end_matches('/').to_string(),
        deployment,
        node: node.to_string(),
        token: token.to_string(),
        disk,
        bootloader: flag(get("understudy.bootloader"), true)?,
        keep_ssh_keys: flag(get("understudy.keep_ssh_keys"), false)?,
        reboot: flag(get("understudy.reboot"), true)?,
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
}
