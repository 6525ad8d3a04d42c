//! `sluice new`: write a connector skeleton that builds and passes the
//! conformance kit unchanged.
//!
//! The skeletons are the repository's `templates/<lang>/`, embedded in the
//! binary at build time (with the WIT and the JS and Python SDKs, which the
//! Python and JavaScript projects carry), so `sluice new` needs nothing but
//! itself. In file contents and paths, `{{name}}` becomes the connector
//! name, `{{name_snake}}` the name with `-` as `_`, and `{{sluice_root}}` the
//! Sluice checkout the project builds against (its Rust SDK and build
//! scripts).

use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};

static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../templates");
static WIT: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../wit/0.1.0");
static PYTHON_SDK: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../sdk/python/sluice_sdk");
const JS_SDK: &str = include_str!("../../../sdk/js/src/index.js");

/// The Sluice checkout this binary was built from (its Rust SDK and build
/// scripts), unless `--sluice-root` says otherwise.
pub const BUILT_FROM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
/// Longest connector name `sluice new` accepts.
pub const MAX_NAME_LEN: usize = 64;

/// A connector language with a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// How to build the project at `dir` from a checkout at `root`.
    pub fn build_command(self, root: &Path, dir: &Path) -> String {
        match self {
            Lang::Rust => format!(
                "cd {} && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --release",
                dir.display()
            ),
            Lang::Python => format!(
                "{}/scripts/build-python-connectors.sh --out {}/target {}",
                root.display(),
                dir.display(),
                dir.display()
            ),
            Lang::Js => format!(
                "{}/scripts/build-js-connectors.sh --out {}/target {}",
                root.display(),
                dir.display(),
                dir.display()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("invalid connector name {0:?}: use [a-z][a-z0-9-]* (at most {MAX_NAME_LEN} bytes), e.g. my-source")]
    Name(String),
    #[error("{0} exists and is not empty: choose another --dir or remove it")]
    NotEmpty(PathBuf),
    #[error("no template for language {0}")]
    NoTemplate(&'static str),
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Whether `name` is a connector name `sluice new` accepts.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// What `new` wrote.
#[derive(Debug)]
pub struct Scaffolded {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

fn write(path: &Path, contents: &[u8], files: &mut Vec<PathBuf>) -> Result<(), ScaffoldError> {
    let err = |error| ScaffoldError::Write {
        path: path.to_path_buf(),
        error,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, contents).map_err(err)?;
    files.push(path.to_path_buf());
    Ok(())
}

/// Every file of `dir` (recursively) written under `dest`, `fill` applied
/// to each path (relative to `strip`) and text content.
fn copy_dir(
    dir: &Dir<'_>,
    strip: &Path,
    dest: &Path,
    fill: &dyn Fn(&str) -> String,
    files: &mut Vec<PathBuf>,
) -> Result<(), ScaffoldError> {
    for f in dir.files() {
        if f.path()
            .components()
            .any(|c| c.as_os_str() == "__pycache__")
        {
            continue;
        }
        let rel = f.path().strip_prefix(strip).unwrap_or(f.path());
        let to = dest.join(fill(&rel.to_string_lossy()));
        match f.contents_utf8() {
            Some(text) => write(&to, fill(text).as_bytes(), files)?,
            None => write(&to, f.contents(), files)?,
        }
    }
    for sub in dir.dirs() {
        copy_dir(sub, strip, dest, fill, files)?;
    }
    Ok(())
}

/// Write a `lang` connector skeleton named `name` into `dir` (created; it
/// must not exist or be empty), building against the checkout at `root`.
pub fn new(lang: Lang, name: &str, dir: &Path, root: &Path) -> Result<Scaffolded, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(ScaffoldError::NotEmpty(dir.to_path_buf()));
        }
    }
    let template = TEMPLATES
        .get_dir(lang.as_str())
        .ok_or(ScaffoldError::NoTemplate(lang.as_str()))?;
    let snake = name.replace('-', "_");
    let root_text = root.display().to_string();
    let fill = |s: &str| {
        s.replace("{{name}}", name)
            .replace("{{name_snake}}", &snake)
            .replace("{{sluice_root}}", &root_text)
    };
    let mut files = Vec::new();
    copy_dir(template, template.path(), dir, &fill, &mut files)?;
    // The WIT and the SDK ride along where the language's build needs them;
    // they are written as they are (no placeholders).
    let verbatim = |s: &str| s.to_string();
    match lang {
        Lang::Rust => {}
        Lang::Python => {
            copy_dir(&WIT, WIT.path(), &dir.join("wit"), &verbatim, &mut files)?;
            copy_dir(
                &PYTHON_SDK,
                PYTHON_SDK.path(),
                &dir.join("sluice_sdk"),
                &verbatim,
                &mut files,
            )?;
        }
        Lang::Js => {
            copy_dir(&WIT, WIT.path(), &dir.join("wit"), &verbatim, &mut files)?;
            write(&dir.join("sdk/index.js"), JS_SDK.as_bytes(), &mut files)?;
        }
    }
    Ok(Scaffolded {
        dir: dir.to_path_buf(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("my-source"));
        assert!(valid_name("a1"));
        assert!(!valid_name("My-source"));
        assert!(!valid_name("my_source"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("x-"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn every_language_has_a_template_and_fills_it() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("p");
            let out = new(lang, "my-source", &dir, Path::new("/opt/sluice")).unwrap();
            assert!(!out.files.is_empty(), "{lang:?}");
            for f in &out.files {
                let rel = f.strip_prefix(&dir).unwrap().to_string_lossy().to_string();
                assert!(!rel.contains("{{"), "{lang:?}: {rel}");
                if rel.starts_with("wit/")
                    || rel.starts_with("sdk/")
                    || rel.starts_with("sluice_sdk/")
                {
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(f) {
                    assert!(
                        !text.contains("{{name"),
                        "{lang:?}: {rel} keeps a placeholder"
                    );
                    assert!(!text.contains("{{sluice_root}}"), "{lang:?}: {rel}");
                }
            }
            // A second time into the same, now non-empty, directory.
            assert!(matches!(
                new(lang, "my-source", &dir, Path::new("/opt/sluice")),
                Err(ScaffoldError::NotEmpty(_))
            ));
        }
    }
}
