//! Confines model file paths to the model root: no `..`, no absolute paths, no symlinks out.
//!
//! Registry paths are relative to the root. Messages from [`ModelRoot::resolve`] reach API
//! clients, so they name the root by its flag, never by the server's absolute path;
//! [`ModelRoot::relative_to_root`] serves the CLI, on the user's own machine, and may show it.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, FileProblem, Result};

/// How messages name the setting of the model root.
pub const ROOT_FLAG: &str = "--model-root / MODELD_MODEL_ROOT";

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
        let canonical = dir.canonicalize().map_err(|e| {
            let here = std::env::current_dir().map_or_else(|_| "here".to_string(), |d| d.display().to_string());
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                format!("does not exist (looked in {here})")
            } else {
                format!("is not usable: {e}")
            };
            Error::FailedPrecondition(format!(
                "the model root {} {why}: run modeld from the directory that holds it, or name it with {ROOT_FLAG}",
                dir.display()
            ))
        })?;
        if !canonical.is_dir() {
            return Err(Error::FailedPrecondition(format!(
                "the model root {} is not a directory: name the directory of model files with {ROOT_FLAG}",
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
                        "file_path {rel:?} is absolute: give the path relative to the server's model root \
                         ({ROOT_FLAG})"
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
            // A name too long or a path through a file names no file either.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::InvalidFilename
                        | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(Error::model_file(
                    FileProblem::Missing,
                    format!(
                        "model file {rel:?} does not exist under the server's model root ({ROOT_FLAG}); \
                         file_path is relative to that root"
                    ),
                ));
            }
            Err(e) => {
                return Err(Error::model_file(
                    FileProblem::Unreadable,
                    format!("model file {rel:?} cannot be read: {e}"),
                ));
            }
        };
        if !canonical.starts_with(&self.canonical) {
            tracing::warn!(file_path = rel, target = %canonical.display(), "a model path resolves outside the model root");
            return Err(Error::InvalidArgument(format!(
                "file_path {rel:?} resolves outside the model root (through a symlink)"
            )));
        }
        if !canonical.is_file() {
            return Err(Error::model_file(
                FileProblem::Missing,
                format!("model file {rel:?} is not a regular file"),
            ));
        }
        Ok(canonical)
    }

    /// A `file_path` sent over an API (already a clean relative path): relative to the root,
    /// or else relative to the server's working directory `cwd` when that lands inside the
    /// root, as the CLI takes it (the guides' `models/m.onnx`, sent to a server started from
    /// the directory holding `models/`). Returns the path as the registry stores it (relative
    /// to the root) and the file. Messages never show the server's own paths.
    ///
    /// # Errors
    /// As [`ModelRoot::resolve`]; a path that names no file in either place is
    /// `NotFound`, with what would work.
    pub fn resolve_sent(&self, sent: &str, cwd: Option<&Path>) -> Result<(String, PathBuf)> {
        match self.resolve(sent) {
            Err(Error::ModelFile {
                problem: FileProblem::Missing,
                ..
            }) => {}
            done => return done.map(|p| (sent.to_string(), p)),
        }
        if let Some(cwd) = cwd {
            let candidate = cwd.join(sent);
            let dir = candidate.parent().and_then(|d| d.canonicalize().ok());
            let stored = dir
                .as_deref()
                .and_then(|d| d.strip_prefix(&self.canonical).ok())
                .and_then(|rel| {
                    let name = candidate.file_name()?;
                    rel.join(name).to_str().map(str::to_owned)
                });
            if let Some(stored) = stored.filter(|_| candidate.is_file()) {
                let path = self.resolve(&stored)?;
                return Ok((stored, path));
            }
        }
        let held = self.some_model_files(3);
        let hint = if held.is_empty() {
            "; the root holds no .onnx file yet: copy the model there first".to_string()
        } else {
            format!(
                "; the root holds {}",
                held.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
            )
        };
        Err(Error::NotFound(format!(
            "model file {sent:?} does not exist under the server's model root ({ROOT_FLAG}): file_path is relative \
             to that root (\"m.onnx\" for a file directly in it), or to the server's working directory when it \
             lands inside the root{hint}"
        )))
    }

    /// Up to `n` `.onnx` files in the root and its first level of directories, as relative
    /// paths, sorted: what a client that sent a wrong path can send instead.
    fn some_model_files(&self, n: usize) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![(self.canonical.clone(), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten().take(10_000) {
                let path = e.path();
                if path.is_dir() && depth == 0 {
                    dirs.push((path, 1));
                } else if path.extension().is_some_and(|x| x == "onnx")
                    && let Ok(rel) = path.strip_prefix(&self.canonical)
                    && let Some(rel) = rel.to_str()
                {
                    found.push(rel.to_string());
                }
            }
        }
        found.sort();
        found.truncate(n);
        found
    }

    /// Whether the directory holding `file` is (under) the root.
    fn contains_dir_of(&self, file: &Path) -> bool {
        file.parent()
            .and_then(|d| d.canonicalize().ok())
            .is_some_and(|d| d.starts_with(&self.canonical))
    }

    /// A path as a person types it on this machine, for the CLI: absolute, or relative to `cwd`
    /// (`models/m.onnx` run from the directory holding `models/`), or, when no such file exists,
    /// relative to the root as the registry stores it. Returns the path relative to the root.
    /// The messages may show the root's path: the CLI runs on the user's own machine.
    ///
    /// # Errors
    /// `InvalidArgument` for a file outside the root; `ModelFile(Missing)` when neither place
    /// has the file.
    pub fn relative_to_root(&self, typed: &str, cwd: &Path) -> Result<String> {
        if typed.is_empty() {
            return Err(Error::InvalidArgument("the model path is empty".into()));
        }
        let typed_path = Path::new(typed);
        let candidate = if typed_path.is_absolute() {
            typed_path.to_path_buf()
        } else {
            cwd.join(typed_path)
        };
        let root = self.canonical.display();
        let inside = candidate.exists() && self.contains_dir_of(&candidate);
        // Not here but under the root, as the registry would store it: that one (a file of the
        // same name in the current directory, outside the root, does not hide it).
        if !inside && !typed_path.is_absolute() && self.canonical.join(typed_path).exists() {
            Self::check_relative(typed)?;
            return Ok(typed.to_string());
        }
        if candidate.exists() {
            // The directory is made canonical, the file name kept: a symlink inside the root
            // stays a symlink (resolve checks where it points).
            let name = candidate
                .file_name()
                .ok_or_else(|| Error::InvalidArgument(format!("the model path {typed:?} names no file")))?;
            let dir = candidate.parent().unwrap_or(Path::new("/"));
            let dir = dir
                .canonicalize()
                .map_err(|e| Error::model_file(FileProblem::Unreadable, format!("cannot read {typed:?}: {e}")))?;
            return match dir.strip_prefix(&self.canonical) {
                Ok(rel) => rel
                    .join(name)
                    .to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::InvalidArgument(format!("the model path {typed:?} is not valid UTF-8"))),
                Err(_) => Err(Error::InvalidArgument(format!(
                    "model file {typed:?} is outside the model root {root} ({ROOT_FLAG} sets the root): \
                     move the file under it or point the root at its directory"
                ))),
            };
        }
        Err(Error::model_file(
            FileProblem::Missing,
            format!(
                "model file {typed:?} not found: not at {} and not under the model root {root} ({ROOT_FLAG} sets the root)",
                candidate.display()
            ),
        ))
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
        for missing in ["nope.onnx", "sub"] {
            let err = root.resolve(missing).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::ModelFile {
                        problem: FileProblem::Missing,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(
                !err.to_string().contains(&*root.path().to_string_lossy()),
                "the server's path never reaches a client: {err}"
            );
        }
    }

    #[test]
    fn typed_paths_become_root_relative() {
        let (d, root) = root();
        let parent = d.path().parent().unwrap();
        let dir_name = d.path().file_name().unwrap().to_str().unwrap();
        // Relative to the working directory, absolute, and relative to the root.
        assert_eq!(
            root.relative_to_root(&format!("{dir_name}/sub/m.onnx"), parent)
                .unwrap(),
            "sub/m.onnx"
        );
        let abs = d.path().join("sub/m.onnx");
        assert_eq!(
            root.relative_to_root(abs.to_str().unwrap(), Path::new("/")).unwrap(),
            "sub/m.onnx"
        );
        assert_eq!(
            root.relative_to_root("sub/m.onnx", Path::new("/")).unwrap(),
            "sub/m.onnx"
        );
        // A file of the same name outside the root does not hide the root's.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(elsewhere.path().join("sub")).unwrap();
        std::fs::write(elsewhere.path().join("sub/m.onnx"), b"y").unwrap();
        assert_eq!(
            root.relative_to_root("sub/m.onnx", elsewhere.path()).unwrap(),
            "sub/m.onnx"
        );
        // Outside the root: refused, naming the root and its flag.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.onnx"), b"x").unwrap();
        let err = root.relative_to_root("x.onnx", outside.path()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let m = err.to_string();
        assert!(m.contains("outside the model root") && m.contains(ROOT_FLAG), "{m}");
        assert!(m.contains(&*root.path().to_string_lossy()), "{m}");
        let err = root.relative_to_root("nope.onnx", parent).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ModelFile {
                    problem: FileProblem::Missing,
                    ..
                }
            ),
            "{err}"
        );
    }
}
