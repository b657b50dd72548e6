//! The I/O error hull's crates share, and errors as one line of text.
//!
//! [`IoError`] is what failed (`op`), on which path, and the OS error as its source; the
//! crates' own error enums wrap it (`#[error(transparent)]`) so their messages and cause
//! chains stay theirs to shape. [`chain`] never decides where a message goes: callers log
//! it, store it or send it.

use std::path::{Path, PathBuf};

/// A file system operation that failed on a path: shown as `cannot <op> <path>`, with the OS
/// error as the source (not repeated in the text).
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct IoError {
    /// What was being done, as a verb phrase ("read", "fsync directory", "rename into place").
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// `op` on `path` failed with `source`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> IoError {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }

    /// A `map_err` adapter: `fs::read(p).map_err(IoError::wrap("read", p))`.
    pub fn wrap<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> IoError + 'a {
        move |source| IoError::new(op, path, source)
    }
}

/// An error with its causes, as one line: the message, then each source's text after `: `.
/// A source whose text the line already holds is left out (some errors repeat their cause).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        let mut out: Option<Box<Layer>> = None;
        for text in texts.iter().rev() {
            out = Some(Box::new(Layer { text, source: out }));
        }
        *out.expect("at least one layer")
    }

    #[test]
    fn io_error_names_the_op_and_path_and_keeps_the_os_error_as_source() {
        let e = IoError::new(
            "fsync directory",
            "/data/vms",
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(e.to_string(), "cannot fsync directory /data/vms");
        assert_eq!(
            chain(&e),
            format!(
                "cannot fsync directory /data/vms: {}",
                std::io::Error::from_raw_os_error(libc::EIO)
            )
        );
        let wrapped = std::fs::read("/nonexistent/hull-sys")
            .map_err(IoError::wrap("read", Path::new("/nonexistent/hull-sys")))
            .expect_err("no such file");
        assert_eq!(wrapped.op, "read");
        assert_eq!(wrapped.source.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn chain_joins_every_cause() {
        assert_eq!(chain(&layers(&["a"])), "a");
        assert_eq!(
            chain(&layers(&["cannot start", "cannot mount", "EPERM"])),
            "cannot start: cannot mount: EPERM"
        );
    }

    #[test]
    fn chain_leaves_out_a_cause_the_line_already_holds() {
        assert_eq!(
            chain(&layers(&["cannot mount: EPERM", "EPERM"])),
            "cannot mount: EPERM"
        );
        assert_eq!(chain(&layers(&["outer", "inner", "outer"])), "outer: inner");
    }
}
