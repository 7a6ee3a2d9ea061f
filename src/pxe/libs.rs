//! Shared libraries a program needs in the boot environment: its ELF dependency tree
//! (DT_NEEDED, rpath, ld.so.conf, the dynamic loader) read with `lddtree`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A program whose libraries cannot be worked out.
#[derive(Debug, thiserror::Error)]
pub enum LibError {
    /// The file is not a readable ELF binary.
    #[error("reading the ELF dependencies of {path}: {reason}")]
    Analyze {
        /// The program.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A needed library is nowhere on the library path.
    #[error("{path} needs {lib}, which is not installed")]
    NotFound {
        /// The program.
        path: PathBuf,
        /// The library's name.
        lib: String,
    },
}

/// The files a dynamically linked program needs besides itself, as path in the boot
/// environment → file to copy (symlinks resolved). Empty for a static binary.
pub fn needed_files(program: &Path) -> Result<BTreeMap<String, PathBuf>, LibError> {
    let tree = lddtree::DependencyAnalyzer::new(PathBuf::from("/"))
        .analyze(program)
        .map_err(|e| LibError::Analyze { path: program.to_path_buf(), reason: e.to_string() })?;
    let mut out = BTreeMap::new();
    if let Some(interp) = &tree.interpreter {
        let src = std::fs::canonicalize(interp)
            .map_err(|_| LibError::NotFound { path: program.to_path_buf(), lib: interp.clone() })?;
        out.insert(interp.clone(), src);
    }
    for (name, lib) in &tree.libraries {
        if !lib.found() {
            return Err(LibError::NotFound { path: program.to_path_buf(), lib: name.clone() });
        }
        let dest = lib.path.to_string_lossy().into_owned();
        out.insert(dest, lib.realpath.clone().unwrap_or_else(|| lib.path.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_program_needs_libc_and_loader() {
        // The test binary itself links glibc dynamically.
        let exe = std::env::current_exe().unwrap();
        let files = needed_files(&exe).unwrap();
        assert!(files.keys().any(|k| k.ends_with("/libc.so.6")), "{files:?}");
        assert!(files.keys().any(|k| k.contains("ld-linux")), "{files:?}");
        assert!(files.values().all(|p| p.is_file()));
    }

    #[test]
    fn non_elf_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script");
        std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
        let e = needed_files(&f).unwrap_err().to_string();
        assert!(e.contains("script"), "{e}");
        assert!(needed_files(&dir.path().join("absent")).is_err());
    }
}
