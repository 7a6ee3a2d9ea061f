//! Facts about a kernel image: its release from the x86 boot header, and which
//! initramfs compressions its config says it can unpack.

/// The release (`uname -r`) of an x86 bzImage: the boot header (`HdrS` at 0x202)
/// points at a version string at 0x20e (+0x200) whose first word is the release.
pub fn release(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize + 0x200;
    let s = image.get(ptr..ptr.saturating_add(256).min(image.len()))?;
    let s = &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())];
    let word = std::str::from_utf8(s).ok()?.split_whitespace().next()?;
    let ok = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b));
    ok.then(|| word.to_string())
}

/// Initramfs compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd: small and fast to unpack; needs CONFIG_RD_ZSTD.
    Zstd,
    /// gzip: every kernel unpacks it.
    Gzip,
}

/// The compression to use given the kernel's config text, if there is one: zstd when
/// `CONFIG_RD_ZSTD=y`, else gzip.
pub fn compression(config: Option<&str>) -> Compression {
    match config {
        Some(c) if c.lines().any(|l| l.trim() == "CONFIG_RD_ZSTD=y") => Compression::Zstd,
        _ => Compression::Gzip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: &str) -> Vec<u8> {
        let mut v = vec![0u8; 0x1000];
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x20e..0x210].copy_from_slice(&0x600u16.to_le_bytes());
        v[0x800..0x800 + version.len()].copy_from_slice(version.as_bytes());
        v
    }

    #[test]
    fn release_from_boot_header() {
        let img = image("6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC");
        assert_eq!(release(&img).as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(release(b"not a kernel"), None);
        assert_eq!(release(&image("")), None);
        assert_eq!(release(&image("../../etc x")), None);
        let mut bad = image("6.1");
        bad[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert_eq!(release(&bad), None);
    }

    #[test]
    fn compression_follows_config() {
        assert_eq!(compression(Some("CONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n")), Compression::Zstd);
        assert_eq!(compression(Some("# CONFIG_RD_ZSTD is not set\n")), Compression::Gzip);
        assert_eq!(compression(None), Compression::Gzip);
    }
}
