//! The kernel command line of the deploy environment, as the agent reads `/proc/cmdline`,
//! and the admin's extra arguments as the server checks them. The first input line is a
//! command line to parse; the second the admin's `boot.cmdline`. What parses re-renders
//! (with extras the server accepts in front) to a line that parses to the same values:
//! the admin's extras can never override the server's keys.
#![no_main]
use libfuzzer_sys::fuzz_target;
use understudy::boot::check_cmdline;
use understudy::wire::cmdline::{self, parse, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (line, extra) = text.split_once('\n').unwrap_or((text, ""));
    let parsed = parse(line);
    let extra_ok = check_cmdline(extra).is_ok();
    let Ok(a) = parsed else { return };
    let extra = if extra_ok { extra } else { "" };
    let again = render(extra, &a.server, a.deployment, &a.node, &a.token, "52:54:00:12:34:56")
        .expect("values the agent accepts are values the server renders");
    let b = parse(&again).unwrap_or_else(|e| panic!("{again:?}: {e}"));
    assert_eq!((&b.server, b.deployment, &b.node, &b.token), (&a.server, a.deployment, &a.node, &a.token));
    // Without extras, the defaults of the optional keys come back.
    let plain = parse(&render("", &a.server, a.deployment, &a.node, &a.token, "52:54:00:12:34:56").unwrap_or_default());
    let plain = plain.expect("a bare rendered line parses");
    assert!(plain.bootloader && plain.reboot && !plain.keep_ssh_keys && plain.disk.is_none());
    assert!(cmdline::RESERVED.iter().all(|k| again.contains(k)));
});
