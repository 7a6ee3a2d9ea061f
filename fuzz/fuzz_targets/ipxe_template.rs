//! The values the server puts into its boot scripts (iPXE and GRUB, the real embedded
//! templates). The input is the values, NUL-separated, in the order of `NAMES`. A render
//! that succeeds must not change the script's shape: as many lines as the template, and
//! exactly as many of the characters and sequences iPXE or GRUB interpret as the template
//! has outside its placeholders. Text passed through `scrub` (console messages) must always be accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use understudy::pxe::template::{self, grub, grub_unsafe_value, render, render_grub, scrub, unsafe_value};

const NAMES: [&str; 13] = [
    "message",
    "node",
    "image",
    "cmdline",
    "mac",
    "deployment",
    "kernel_url",
    "initrd_url",
    "retry_secs",
    "script_url",
    "attempt",
    "retries",
    "next_url",
];
const IPXE_META: [&str; 6] = ["${", "\"", "'", "\\", "||", "&&"];
const GRUB_META: [&str; 12] = ["${", "\"", "'", "\\", "|", "&", ";", "{", "}", "<", ">", "#"];

/// The template with its `{{name}}` placeholders taken out: what is left is what any
/// render keeps (the placeholders' own braces are not the script's).
fn without_placeholders(t: &str) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        match rest[i..].find("}}") {
            Some(j) => rest = &rest[i + j + 2..],
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn same_shape(t: &str, out: &str, meta: &[&str]) {
    let kept = without_placeholders(t);
    assert_eq!(out.lines().count(), t.lines().count(), "{out}");
    for m in meta {
        assert_eq!(out.matches(m).count(), kept.matches(m).count(), "{m:?} in {out}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\0');
    let values: Vec<(&str, &str)> = NAMES.iter().map(|n| (*n, parts.next().unwrap_or("1"))).collect();
    for t in [template::DEPLOY, template::LOCAL, template::WAIT, template::POWEROFF] {
        if let Ok(out) = render(t, &values) {
            same_shape(t, &out, &IPXE_META);
        }
    }
    for t in [grub::DEPLOY, grub::LOCAL, grub::WAIT, grub::POWEROFF] {
        if let Ok(out) = render_grub(t, &values) {
            same_shape(t, &out, &GRUB_META);
        }
    }
    let clean = scrub(values[0].1);
    assert_eq!(unsafe_value(&clean), None, "{clean:?}");
    assert_eq!(grub_unsafe_value(&clean), None, "{clean:?}");
    let mut with_clean = values.clone();
    with_clean[0].1 = &clean;
    if NAMES[1..].iter().zip(&values[1..]).all(|(_, (_, v))| grub_unsafe_value(v).is_none()) {
        for t in [template::WAIT, template::POWEROFF, grub::WAIT, grub::POWEROFF] {
            render_grub(t, &with_clean).expect("scrubbed text and clean values render");
        }
    }
});
