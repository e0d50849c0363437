//! Confines model file paths to the model root: no `..`, no absolute paths, no symlinks out.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The directory every model file must live under.
#[derive(Debug, Clone)]
pub struct ModelRoot {
    /// Canonical (symlink-free, absolute) path of the root.
    canonical: PathBuf,
}

impl ModelRoot {
    /// Opens the root directory.
    ///
    /// # Errors
    /// `FailedPrecondition` when the directory does not exist or cannot be read.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let canonical = dir
            .canonicalize()
            .map_err(|e| Error::FailedPrecondition(format!("model root {} is not usable: {e}", dir.display())))?;
        if !canonical.is_dir() {
            return Err(Error::FailedPrecondition(format!(
                "model root {} is not a directory",
                dir.display()
            )));
        }
        Ok(Self { canonical })
    }

    /// The canonical root path.
    pub fn path(&self) -> &Path {
        &self.canonical
    }

    /// Checks that `rel` is a plain relative path (no `..`, not absolute, not empty).
    ///
    /// # Errors
    /// `InvalidArgument` naming the path and the rule it breaks.
    pub fn check_relative(rel: &str) -> Result<&Path> {
        let p = Path::new(rel);
        if rel.is_empty() {
            return Err(Error::InvalidArgument("file_path is empty".into()));
        }
        for c in p.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(Error::InvalidArgument(format!(
                        "file_path {rel:?} escapes the model root (contains '..')"
                    )));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "file_path {rel:?} must be relative to the model root, not absolute"
                    )));
                }
            }
        }
        Ok(p)
    }

    /// Resolves `rel` to an existing file under the root, following symlinks only when the
    /// target stays under the root.
    ///
    /// # Errors
    /// `InvalidArgument` for a path that escapes the root (also through a symlink);
    /// `FailedPrecondition` when the file does not exist or is not a regular file.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf> {
        let p = Self::check_relative(rel)?;
        let joined = self.canonical.join(p);
        let canonical = match joined.canonicalize() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::FailedPrecondition(format!(
                    "model file {rel:?} does not exist under the model root {}",
                    self.canonical.display()
                )));
            }
            Err(e) => {
                return Err(Error::FailedPrecondition(format!(
                    "model file {rel:?} cannot be read: {e}"
                )));
            }
        };
        if !canonical.starts_with(&self.canonical) {
            return Err(Error::InvalidArgument(format!(
                "file_path {rel:?} resolves outside the model root (symlink to {})",
                canonical.display()
            )));
        }
        if !canonical.is_file() {
            return Err(Error::FailedPrecondition(format!(
                "model file {rel:?} is not a regular file"
            )));
        }
        Ok(canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, ModelRoot) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/m.onnx"), b"x").unwrap();
        let root = ModelRoot::new(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn plain_relative_paths_resolve() {
        let (_d, root) = root();
        let p = root.resolve("sub/m.onnx").unwrap();
        assert!(p.starts_with(root.path()));
        assert!(root.resolve("./sub/m.onnx").is_ok());
    }

    #[test]
    fn escapes_are_refused() {
        let (_d, root) = root();
        for bad in ["../m.onnx", "sub/../../m.onnx", "/etc/passwd", ""] {
            assert!(
                matches!(root.resolve(bad), Err(Error::InvalidArgument(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn symlink_out_of_the_root_is_refused() {
        let (d, root) = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("evil.onnx"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil.onnx"), d.path().join("link.onnx")).unwrap();
        std::os::unix::fs::symlink("sub/m.onnx", d.path().join("inside.onnx")).unwrap();
        let err = root.resolve("link.onnx").unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(ref m) if m.contains("outside")),
            "{err}"
        );
        assert!(root.resolve("inside.onnx").is_ok(), "a symlink inside the root is fine");
    }

    #[test]
    fn missing_file_is_a_failed_precondition() {
        let (_d, root) = root();
        assert!(matches!(root.resolve("nope.onnx"), Err(Error::FailedPrecondition(_))));
        assert!(matches!(root.resolve("sub"), Err(Error::FailedPrecondition(_))));
    }
}
