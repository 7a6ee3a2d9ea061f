//! Network boot assets: the iPXE script templates and the boot environment (kernel +
//! initramfs with the understudy agent) that `understudy pxe build` makes from the
//! host's own kernel and modules.

pub mod build;
pub mod cpio;
pub mod initramfs;
pub mod kernel;
pub mod libs;
pub mod modules;
pub mod template;

/// Why the boot environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An input is missing or is not what it should be.
    #[error("{0}")]
    Input(String),
    /// `modules.dep` is malformed.
    #[error(transparent)]
    Dep(#[from] modules::DepError),
    /// A program's shared libraries cannot be found.
    #[error(transparent)]
    Lib(#[from] libs::LibError),
    /// Two files want incompatible places in the initramfs.
    #[error(transparent)]
    Tree(#[from] cpio::TreeError),
}

impl BuildError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BuildError {
        BuildError::Io { what: what.into(), source }
    }
}
