//! iPXE script templates (embedded from `pxe/templates/`, so the binary needs no tree)
//! and their rendering: `{{name}}` placeholders replaced by checked values.

/// Boot the deploy environment: `deployment`, `image`, `node`, `kernel_url`, `initrd_url`,
/// `cmdline`, `retry_secs`, `script_url` (chained again when loading fails).
pub const DEPLOY: &str = include_str!("../../pxe/templates/deploy.ipxe");
/// Boot from the local disk (`exit` on UEFI, `sanboot --drive 0x80` on BIOS): `node`.
pub const LOCAL: &str = include_str!("../../pxe/templates/local.ipxe");
/// Nothing to boot yet: `message`, `mac`, `retry_secs`, `attempt`, `retries`, `next_url`.
pub const WAIT: &str = include_str!("../../pxe/templates/wait.ipxe");
/// Waited `retries` checks: `message`, `mac`, `retries`.
pub const POWEROFF: &str = include_str!("../../pxe/templates/poweroff.ipxe");

/// The same four scripts for GRUB (the Secure Boot chain: shim, then Debian's signed GRUB
/// network image, which has no iPXE): the placeholders are those of the iPXE ones, and
/// URLs are GRUB paths such as `(http,10.0.0.1:8080)/boot/vmlinuz?token=...`.
pub mod grub {
    /// Boot the deploy environment.
    pub const DEPLOY: &str = include_str!("../../pxe/templates/deploy.grub");
    /// Leave GRUB for the next boot entry (the disk).
    pub const LOCAL: &str = include_str!("../../pxe/templates/local.grub");
    /// Nothing to boot yet.
    pub const WAIT: &str = include_str!("../../pxe/templates/wait.grub");
    /// Waited long enough.
    pub const POWEROFF: &str = include_str!("../../pxe/templates/poweroff.grub");
}

/// A template that cannot be rendered with the given values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The template names a placeholder no value was given for.
    #[error("template placeholder {{{{{0}}}}} has no value")]
    Unknown(String),
    /// `{{` without a closing `}}`, or a name that is not `[a-z0-9_]+`.
    #[error("malformed template placeholder at byte {0}")]
    Malformed(usize),
    /// A value holds something that would change the script's meaning.
    #[error("value for {{{{{name}}}}} {reason}")]
    BadValue {
        /// The placeholder.
        name: String,
        /// What is wrong with the value.
        reason: &'static str,
    },
}

/// Why a value cannot go into an iPXE script, if it cannot. iPXE expands `${...}`,
/// honours quotes and backslash escapes, and chains commands with `||` / `&&`, and a
/// line break starts a new command, so none of these may come from data.
pub fn unsafe_value(v: &str) -> Option<&'static str> {
    if v.chars().any(char::is_control) {
        Some("contains a line break or control character")
    } else if v.contains(['$', '\\', '"', '\'', '|']) {
        Some("contains a character iPXE interprets ($ \\ \" ' |)")
    } else if v.contains("&&") {
        Some("contains &&")
    } else {
        None
    }
}

/// Why a value cannot go into a GRUB script, if it cannot: what iPXE refuses, and GRUB's
/// command separators, blocks and redirections (unquoted words such as the kernel command
/// line would otherwise run commands of their own).
pub fn grub_unsafe_value(v: &str) -> Option<&'static str> {
    unsafe_value(v).or_else(|| {
        v.contains([';', '{', '}', '<', '>', '&', '#'])
            .then_some("contains a character GRUB interprets (; { } < > & #)")
    })
}

/// [`render`] for a GRUB script: every value must also pass [`grub_unsafe_value`].
pub fn render_grub(template: &str, values: &[(&str, &str)]) -> Result<String, TemplateError> {
    for (name, v) in values {
        if template.contains(&format!("{{{{{name}}}}}"))
            && let Some(reason) = grub_unsafe_value(v)
        {
            return Err(TemplateError::BadValue { name: name.to_string(), reason });
        }
    }
    render(template, values)
}

/// Make free text (a message for the console) safe for [`render`] and [`render_grub`]:
/// characters iPXE or GRUB would interpret are dropped, control characters become spaces.
pub fn scrub(text: &str) -> String {
    let s: String = text
        .chars()
        .filter(|c| !matches!(c, '$' | '\\' | '"' | '\'' | '|' | ';' | '{' | '}' | '<' | '>' | '#'))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.replace("&&", "and").replace('&', "and")
}

/// Replace every `{{name}}` in `template` with its value from `values`. Every
/// placeholder must have a value and every value used must be safe in an iPXE script;
/// values the template does not use are ignored.
pub fn render(template: &str, values: &[(&str, &str)]) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let offset = template.len() - rest.len() + start;
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TemplateError::Malformed(offset))?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(TemplateError::Malformed(offset));
        }
        let value =
            values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v).ok_or(TemplateError::Unknown(name.into()))?;
        if let Some(reason) = unsafe_value(value) {
            return Err(TemplateError::BadValue { name: name.into(), reason });
        }
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:12:34:56";

    #[test]
    fn replaces_placeholders() {
        let s = render("a {{x}} b {{y_1}}{{x}}", &[("x", "1"), ("y_1", "two"), ("unused", "z")]).unwrap();
        assert_eq!(s, "a 1 b two1");
        assert_eq!(render("no placeholders", &[]).unwrap(), "no placeholders");
    }

    #[test]
    fn unknown_and_malformed_placeholders_fail() {
        assert_eq!(render("{{nope}}", &[("x", "1")]), Err(TemplateError::Unknown("nope".into())));
        assert_eq!(render("ab {{x", &[("x", "1")]), Err(TemplateError::Malformed(3)));
        assert_eq!(render("{{}}", &[]), Err(TemplateError::Malformed(0)));
        assert_eq!(render("{{X Y}}", &[("X Y", "1")]), Err(TemplateError::Malformed(0)));
    }

    #[test]
    fn values_that_break_ipxe_syntax_fail() {
        for bad in ["a\nshell", "a\rb", "a\0", "${net0/mac}", "a\\b", "\"q\"", "'q'", "a || shell", "a && b", "x|y"] {
            let e = render("kernel {{v}}", &[("v", bad)]).unwrap_err();
            assert!(matches!(e, TemplateError::BadValue { ref name, .. } if name == "v"), "{bad:?}: {e:?}");
        }
        // An ordinary URL with a query string and a kernel command line are fine.
        let url = "http://10.0.0.1:8080/boot/vmlinuz?token=abc&x=1";
        assert_eq!(render("{{u}}", &[("u", url)]).unwrap(), url);
    }

    #[test]
    fn grub_scripts_render_and_refuse_grub_syntax() {
        let vars = [
            ("deployment", "7"),
            ("image", "head-a@2"),
            ("node", "standby"),
            ("kernel_url", "(http,10.0.0.1:8080)/boot/vmlinuz?token=ab"),
            ("initrd_url", "(http,10.0.0.1:8080)/boot/initramfs.img?token=ab"),
            ("cmdline", "console=ttyS0 understudy.token=ab"),
            ("retry_secs", "30"),
            ("script_url", "(http,10.0.0.1:8080)/boot/52:54:00:00:00:01.grub"),
        ];
        let d = render_grub(grub::DEPLOY, &vars).unwrap();
        assert!(d.contains("linux \"(http,10.0.0.1:8080)/boot/vmlinuz?token=ab\" console=ttyS0 understudy.token=ab\n"));
        assert!(d.contains("initrd \"(http,10.0.0.1:8080)/boot/initramfs.img?token=ab\"\nboot\n"));
        assert!(render_grub(grub::LOCAL, &[("node", "standby")]).unwrap().contains("\nexit\n"));
        for bad in ["a; reboot", "x { y }", "a > /dev/x", "a & b", "# c"] {
            let mut v = vars;
            v[5] = ("cmdline", bad);
            assert!(matches!(render_grub(grub::DEPLOY, &v), Err(TemplateError::BadValue { .. })), "{bad}");
        }
        for t in ["a; b", "{x}", "a & b # c"] {
            let m = scrub(t);
            assert!(grub_unsafe_value(&m).is_none(), "{t:?} -> {m:?}");
        }
    }

    #[test]
    fn scrubbed_text_always_renders() {
        for t in ["no image \"head-a\"", "a\nb", "${x} || y && z", "it's \\ fine"] {
            let v = scrub(t);
            assert!(render("{{m}}", &[("m", &v)]).is_ok(), "{t:?} -> {v:?}");
        }
        assert_eq!(scrub("no image \"head-a\""), "no image head-a");
    }

    #[test]
    fn templates_render_and_every_placeholder_is_filled() {
        let deploy = render(
            DEPLOY,
            &[
                ("deployment", "7"),
                ("image", "head-a@2"),
                ("node", "standby"),
                ("kernel_url", "vmlinuz?token=ab"),
                ("initrd_url", "initramfs.img?token=ab"),
                ("cmdline", "console=ttyS0 understudy.token=ab"),
                ("retry_secs", "30"),
                ("script_url", "52:54:00:00:00:01.ipxe"),
            ],
        )
        .unwrap();
        assert!(deploy.starts_with("#!ipxe\n"));
        assert!(deploy.contains("kernel vmlinuz?token=ab initrd=initramfs console=ttyS0 understudy.token=ab ||"));
        assert!(deploy.contains("initrd --name initramfs initramfs.img?token=ab"));
        assert!(deploy.contains("\nboot ||"));
        assert!(!deploy.contains("{{"));
        let local = render(LOCAL, &[("node", "standby")]).unwrap();
        assert!(local.contains("sanboot --no-describe --drive 0x80") && local.contains("iseq ${platform} efi && exit"));
        let vars = [
            ("message", "not a node"),
            ("mac", MAC),
            ("retry_secs", "30"),
            ("attempt", "1"),
            ("retries", "3"),
            ("next_url", "x.ipxe?attempt=2"),
        ];
        let wait = render(WAIT, &vars).unwrap();
        assert!(wait.contains("sleep 30") && wait.contains("chain --replace --autofree x.ipxe?attempt=2"));
        assert!(render(POWEROFF, &vars).unwrap().contains("\npoweroff || exit\n"));
    }
}
