//! Host-side secrets. The operator binds names to values
//! (`--secret NAME=env:VAR`, `--secret NAME=file:PATH`) and says which hosts
//! may receive each (`--secret-host NAME=HOST`). A connector only ever writes
//! the placeholder `{{secret:NAME}}` (in a header value or the URL query);
//! the `http` capability substitutes the value after the egress check, only
//! for a host bound to that secret. Every value is redacted from the text
//! the host keeps or prints on the guest's behalf (log lines, errors, the
//! run record).
//!
//! The honest limit: an upstream that echoes a request header (or the
//! query) back in its response hands the value to the guest; the host does
//! not rewrite response bodies.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::egress::{GrantError, HostGrant};
use crate::limits::{MAX_SECRET_BYTES, MAX_SECRET_NAME_BYTES};

/// What opens a placeholder: `{{secret:NAME}}`.
pub const PLACEHOLDER_OPEN: &str = "{{secret:";
/// What closes a placeholder.
pub const PLACEHOLDER_CLOSE: &str = "}}";

/// A bad `--secret` / `--secret-host` value, or a secret that cannot be
/// loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("invalid --secret {input:?}: {reason}")]
    BadSpec { input: String, reason: String },
    #[error("invalid --secret-host {input:?}: {reason}")]
    BadHost { input: String, reason: String },
    #[error("invalid --secret-host {input:?}: {error}")]
    BadHostGrant { input: String, error: GrantError },
    #[error("secret {0} is defined twice")]
    Duplicate(String),
    #[error("--secret-host names secret {0}, which no --secret defines")]
    HostForUnknown(String),
    #[error("secret {name}: environment variable {var} is not set or not UTF-8")]
    MissingEnv { name: String, var: String },
    #[error("secret {name}: cannot read {}: {error}", path.display())]
    File {
        name: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("secret {name}: {} is not UTF-8", path.display())]
    NotUtf8 { name: String, path: PathBuf },
    #[error("secret {0} is empty")]
    Empty(String),
    #[error("secret {name} is longer than {max} bytes")]
    TooLong { name: String, max: usize },
    #[error("secret {0} contains control characters (a secret must fit in an HTTP header value)")]
    ControlCharacters(String),
}

/// Why a request's use of a secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretUseError {
    /// No secret of that name is bound (the request is invalid).
    #[error("unknown secret {0:?} in a placeholder (the operator binds secrets with --secret NAME=env:VAR or NAME=file:PATH)")]
    Unknown(String),
    /// A `{{secret:` without a well-formed name and `}}`.
    #[error("malformed secret placeholder: write {{{{secret:NAME}}}} with NAME of letters, digits, _ - .")]
    Malformed,
    /// The secret may not be sent to that host (a denial).
    #[error("secret {name} may not be sent to {host} (the operator allows it with --secret-host {name}=HOST)")]
    NotAllowed { name: String, host: String },
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the `sluice` process.
    Env(String),
    /// A file; one trailing newline is dropped.
    File(PathBuf),
}

impl SecretSource {
    /// Read the value (`name` is the secret's name in errors).
    pub fn read(&self, name: &str) -> Result<String, SecretError> {
        match self {
            SecretSource::Env(var) => std::env::var(var).map_err(|_| SecretError::MissingEnv {
                name: name.to_string(),
                var: var.clone(),
            }),
            SecretSource::File(path) => read_file(name, path),
        }
    }
}

impl FromStr for SecretSource {
    type Err = String;

    /// `env:VAR` or `file:PATH`: a reference, never the value itself.
    fn from_str(source: &str) -> Result<Self, Self::Err> {
        if let Some(var) = source.strip_prefix("env:") {
            if var.is_empty() {
                return Err("empty environment variable name".into());
            }
            Ok(SecretSource::Env(var.to_string()))
        } else if let Some(path) = source.strip_prefix("file:") {
            if path.is_empty() {
                return Err("empty file path".into());
            }
            Ok(SecretSource::File(PathBuf::from(path)))
        } else {
            Err("the value must be env:VAR or file:PATH (never the secret itself)".into())
        }
    }
}

impl fmt::Display for SecretSource {
    /// `env:VAR` or `file:PATH`: the reference, never the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env:{var}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

crate::text::serde_as_text!(SecretSource);

/// One `--secret NAME=env:VAR` or `--secret NAME=file:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub name: String,
    pub source: SecretSource,
}

/// One `--secret-host NAME=HOST`: a host that may receive secret `NAME`,
/// in the grammar of `--allow-host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHost {
    pub name: String,
    pub host: HostGrant,
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty secret name".into());
    }
    if name.len() > MAX_SECRET_NAME_BYTES {
        return Err(format!(
            "secret names are at most {MAX_SECRET_NAME_BYTES} bytes"
        ));
    }
    if !name.bytes().all(is_name_byte) {
        return Err("secret names are letters, digits, _ - and .".into());
    }
    Ok(())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

impl FromStr for SecretSpec {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| SecretError::BadSpec {
            input: s.to_string(),
            reason,
        };
        let (name, source) = s
            .split_once('=')
            .ok_or_else(|| bad("write NAME=env:VAR or NAME=file:PATH".into()))?;
        check_name(name).map_err(bad)?;
        let source = source.parse().map_err(bad)?;
        Ok(SecretSpec {
            name: name.to_string(),
            source,
        })
    }
}

impl fmt::Display for SecretSpec {
    /// `NAME=env:VAR` or `NAME=file:PATH`: the reference, never the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.source)
    }
}

impl fmt::Display for SecretHost {
    /// `NAME=HOST`, as `--secret-host` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.host)
    }
}

crate::text::serde_as_text!(SecretSpec, SecretHost);

impl FromStr for SecretHost {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, host) = s.split_once('=').ok_or_else(|| SecretError::BadHost {
            input: s.to_string(),
            reason: "write NAME=HOST (HOST as for --allow-host)".into(),
        })?;
        check_name(name).map_err(|reason| SecretError::BadHost {
            input: s.to_string(),
            reason,
        })?;
        let host = host.parse().map_err(|error| SecretError::BadHostGrant {
            input: s.to_string(),
            error,
        })?;
        Ok(SecretHost {
            name: name.to_string(),
            host,
        })
    }
}

struct Secret {
    value: String,
    /// The value as it appears in a URL query once substituted.
    query_encoded: String,
    hosts: Vec<HostGrant>,
}

/// The secrets of one run: values, the hosts each may go to, and redaction.
/// Cheap to clone; `Debug` never shows a value.
#[derive(Clone, Default)]
pub struct Secrets {
    by_name: Arc<BTreeMap<String, Secret>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.by_name.iter().map(|(name, s)| {
                let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
                (name, format!("[redacted] for {}", hosts.join(", ")))
            }))
            .finish()
    }
}

fn read_file(name: &str, path: &PathBuf) -> Result<String, SecretError> {
    let file_err = |error| SecretError::File {
        name: name.to_string(),
        path: path.clone(),
        error,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(file_err)?
        .take(MAX_SECRET_BYTES as u64 + 2)
        .read_to_end(&mut bytes)
        .map_err(file_err)?;
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8 {
        name: name.to_string(),
        path: path.clone(),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

impl Secrets {
    /// Read every secret's value and attach its hosts.
    pub fn load(specs: &[SecretSpec], hosts: &[SecretHost]) -> Result<Secrets, SecretError> {
        let mut values = Vec::new();
        for spec in specs {
            let value = spec.source.read(&spec.name)?;
            values.push((spec.name.clone(), value));
        }
        Secrets::from_values(values, hosts)
    }

    /// [`Secrets::load`], warning about each secret that no host may
    /// receive (an operator's likely mistake: it is sent nowhere).
    pub fn load_warning(
        specs: &[SecretSpec],
        hosts: &[SecretHost],
    ) -> Result<Secrets, SecretError> {
        let secrets = Secrets::load(specs, hosts)?;
        for name in secrets.unsendable() {
            tracing::warn!("secret {name} has no --secret-host: it will not be sent anywhere");
        }
        Ok(secrets)
    }

    /// Secrets from values already in hand (e.g. from a vault client).
    pub fn from_values(
        values: impl IntoIterator<Item = (String, String)>,
        hosts: &[SecretHost],
    ) -> Result<Secrets, SecretError> {
        let mut by_name = BTreeMap::new();
        for (name, value) in values {
            check_name(&name).map_err(|reason| SecretError::BadSpec {
                input: name.clone(),
                reason,
            })?;
            if value.is_empty() {
                return Err(SecretError::Empty(name));
            }
            if value.len() > MAX_SECRET_BYTES {
                return Err(SecretError::TooLong {
                    name,
                    max: MAX_SECRET_BYTES,
                });
            }
            if value.chars().any(char::is_control) {
                return Err(SecretError::ControlCharacters(name));
            }
            let secret = Secret {
                query_encoded: url::form_urlencoded::byte_serialize(value.as_bytes()).collect(),
                value,
                hosts: Vec::new(),
            };
            if by_name.insert(name.clone(), secret).is_some() {
                return Err(SecretError::Duplicate(name));
            }
        }
        for h in hosts {
            by_name
                .get_mut(&h.name)
                .ok_or_else(|| SecretError::HostForUnknown(h.name.clone()))?
                .hosts
                .push(h.host.clone());
        }
        Ok(Secrets {
            by_name: Arc::new(by_name),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Names of secrets bound to no host (they can never be sent).
    pub fn unsendable(&self) -> impl Iterator<Item = &str> {
        self.by_name
            .iter()
            .filter(|(_, s)| s.hosts.is_empty())
            .map(|(n, _)| n.as_str())
    }

    /// `Unknown` unless a secret `name` is bound.
    pub fn check_known(&self, name: &str) -> Result<(), SecretUseError> {
        if self.by_name.contains_key(name) {
            Ok(())
        } else {
            Err(SecretUseError::Unknown(name.to_string()))
        }
    }

    /// Whether secret `name` may be sent to `url`'s host.
    pub fn check_allowed(&self, name: &str, url: &url::Url) -> Result<(), SecretUseError> {
        let secret = self
            .by_name
            .get(name)
            .ok_or_else(|| SecretUseError::Unknown(name.to_string()))?;
        if secret.hosts.iter().any(|g| g.matches(url)) {
            return Ok(());
        }
        Err(SecretUseError::NotAllowed {
            name: name.to_string(),
            host: format!(
                "{}://{}:{}",
                url.scheme(),
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            ),
        })
    }

    /// `text` with every placeholder replaced by its secret's value
    /// (percent-encoded for a URL query when `for_query`).
    pub fn substitute(&self, text: &str, for_query: bool) -> Result<String, SecretUseError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some((before, name, after)) = next_placeholder(rest)? {
            let secret = self
                .by_name
                .get(name)
                .ok_or_else(|| SecretUseError::Unknown(name.to_string()))?;
            out.push_str(before);
            out.push_str(if for_query {
                &secret.query_encoded
            } else {
                &secret.value
            });
            rest = after;
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `text` with every secret value (raw or query-encoded) replaced by
    /// `[secret NAME redacted]`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.by_name.is_empty() {
            return Cow::Borrowed(text);
        }
        // Longest first, so a secret containing another is redacted whole.
        let mut needles: Vec<(&str, &str)> = Vec::new();
        for (name, s) in self.by_name.iter() {
            needles.push((&s.value, name));
            if s.query_encoded != s.value {
                needles.push((&s.query_encoded, name));
            }
        }
        needles.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        let mut out = Cow::Borrowed(text);
        for (value, name) in needles {
            if out.contains(value) {
                out = Cow::Owned(out.replace(value, &format!("[secret {name} redacted]")));
            }
        }
        out
    }
}

/// Split `text` at its first placeholder: (text before, name, text after).
fn next_placeholder(text: &str) -> Result<Option<(&str, &str, &str)>, SecretUseError> {
    let Some(start) = text.find(PLACEHOLDER_OPEN) else {
        return Ok(None);
    };
    let after_open = &text[start + PLACEHOLDER_OPEN.len()..];
    let end = after_open
        .find(PLACEHOLDER_CLOSE)
        .ok_or(SecretUseError::Malformed)?;
    let name = &after_open[..end];
    check_name(name).map_err(|_| SecretUseError::Malformed)?;
    Ok(Some((
        &text[..start],
        name,
        &after_open[end + PLACEHOLDER_CLOSE.len()..],
    )))
}

/// The secret names `text` refers to, in order (with repeats).
pub fn placeholders(text: &str) -> Result<Vec<&str>, SecretUseError> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some((_, name, after)) = next_placeholder(rest)? {
        names.push(name);
        rest = after;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::from_values(
            [
                ("API_KEY".to_string(), "s3cr3t+/=&".to_string()),
                ("other".to_string(), "tok".to_string()),
            ],
            &["API_KEY=api.example.com".parse().unwrap()],
        )
        .unwrap()
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            "K=env:VAR".parse::<SecretSpec>().unwrap(),
            SecretSpec {
                name: "K".into(),
                source: SecretSource::Env("VAR".into())
            }
        );
        assert_eq!(
            "k.1=file:/run/k".parse::<SecretSpec>().unwrap().source,
            SecretSource::File("/run/k".into())
        );
        for bad in ["K", "K=hunter2", "=env:X", "K=env:", "K=file:", "a b=env:X"] {
            assert!(bad.parse::<SecretSpec>().is_err(), "{bad}");
        }
        let h: SecretHost = "K=*.example.com".parse().unwrap();
        assert_eq!(h.host.to_string(), "*.example.com");
        assert!("K".parse::<SecretHost>().is_err());
        assert!("K=http://x/y".parse::<SecretHost>().is_err());
    }

    #[test]
    fn load_checks_values_and_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "from-file\n").unwrap();
        let spec = SecretSpec {
            name: "F".into(),
            source: SecretSource::File(f),
        };
        let s = Secrets::load(std::slice::from_ref(&spec), &[]).unwrap();
        assert_eq!(s.substitute("{{secret:F}}", false).unwrap(), "from-file");
        assert_eq!(s.unsendable().collect::<Vec<_>>(), ["F"]);
        assert!(matches!(
            Secrets::load(&[spec.clone(), spec], &[]),
            Err(SecretError::Duplicate(_))
        ));
        assert!(matches!(
            Secrets::load(
                &["E=env:SLUICE_TEST_SURELY_UNSET_VARIABLE".parse().unwrap()],
                &[]
            ),
            Err(SecretError::MissingEnv { .. })
        ));
        assert!(matches!(
            Secrets::from_values([], &["X=a.example".parse().unwrap()]),
            Err(SecretError::HostForUnknown(_))
        ));
        assert!(matches!(
            Secrets::from_values([("X".into(), "a\r\nb".into())], &[]),
            Err(SecretError::ControlCharacters(_))
        ));
        assert!(matches!(
            Secrets::from_values([("X".into(), String::new())], &[]),
            Err(SecretError::Empty(_))
        ));
    }

    #[test]
    fn placeholders_substitute_and_redact() {
        let s = secrets();
        assert_eq!(
            placeholders("Bearer {{secret:API_KEY}} {{secret:other}}").unwrap(),
            ["API_KEY", "other"]
        );
        assert_eq!(
            placeholders("{{secret:API_KEY").unwrap_err(),
            SecretUseError::Malformed
        );
        assert_eq!(
            placeholders("{{secret:a b}}").unwrap_err(),
            SecretUseError::Malformed
        );
        assert_eq!(
            s.substitute("Bearer {{secret:API_KEY}}", false).unwrap(),
            "Bearer s3cr3t+/=&"
        );
        assert_eq!(
            s.substitute("a=1&key={{secret:API_KEY}}", true).unwrap(),
            "a=1&key=s3cr3t%2B%2F%3D%26"
        );
        assert!(matches!(
            s.substitute("{{secret:nope}}", false),
            Err(SecretUseError::Unknown(_))
        ));
        let red = s.redact("got s3cr3t+/=& and s3cr3t%2B%2F%3D%26 and tok");
        assert!(!red.contains("s3cr3t") && !red.contains("tok"), "{red}");
        assert!(red.contains("[secret API_KEY redacted]"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn secrets_go_only_to_their_hosts() {
        let s = secrets();
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(s
            .check_allowed("API_KEY", &url("https://api.example.com/x"))
            .is_ok());
        assert!(matches!(
            s.check_allowed("API_KEY", &url("https://evil.example.com/x")),
            Err(SecretUseError::NotAllowed { .. })
        ));
        assert!(matches!(
            s.check_allowed("other", &url("https://api.example.com/x")),
            Err(SecretUseError::NotAllowed { .. })
        ));
    }
}
