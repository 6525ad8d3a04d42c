//! [`DbLocation`]: where a run's data goes, as `--db` and `db =` name it:
//! a SQLite file (the embedded default) or a PostgreSQL server
//! (`postgres://user@host:port/database?schema=NAME`).
//!
//! A Postgres URL never carries a password: one there is refused, because
//! command lines and config files are seen by others (`ps`, shell history,
//! the run log). The password comes from a secret reference
//! (`--db-password env:VAR` or `file:PATH`, `db_password =` in
//! `sluice.toml`), else `PGPASSWORD`, else the libpq passfile
//! (`PGPASSFILE`, default `~/.pgpass`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// URL schemes that select the Postgres destination.
pub const POSTGRES_SCHEMES: [&str; 2] = ["postgres", "postgresql"];

/// The Postgres schema of Sluice's tables unless `?schema=` says otherwise.
pub const DEFAULT_POSTGRES_SCHEMA: &str = "public";

/// The query parameter of a Postgres URL that picks the schema. Sluice's
/// own: it is taken out before the URL reaches the server.
pub const SCHEMA_PARAM: &str = "schema";

/// A `--db` / `db =` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("the database URL holds a password: give it as a secret reference instead (--db-password env:VAR or file:PATH, `db_password` in sluice.toml), or in PGPASSWORD or a passfile (~/.pgpass)")]
    PasswordInUrl,
    #[error("invalid database URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("empty database path")]
    Empty,
}

/// Where a run's data goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// A SQLite database file (created if missing by the commands that
    /// write).
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(PostgresLocation),
}

/// A PostgreSQL database and the schema of Sluice's tables in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresLocation {
    /// `postgres://user@host:port/database[?libpq parameters]`: no
    /// password, no `schema` parameter.
    url: url::Url,
    schema: String,
}

impl PostgresLocation {
    /// The connection URL (without a password; safe to show).
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The schema of Sluice's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server's host as the URL names it (`localhost` if none).
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("localhost")
    }

    /// The server's port (5432 if none).
    pub fn port(&self) -> u16 {
        self.url.port().unwrap_or(5432)
    }

    /// The user (`$USER`'s name if none, as libpq does).
    pub fn user(&self) -> String {
        match self.url.username() {
            "" => std::env::var("USER").unwrap_or_default(),
            u => percent_decode(u),
        }
    }

    /// The database (the user's name if none, as libpq does).
    pub fn database(&self) -> String {
        match self.url.path().trim_start_matches('/') {
            "" => self.user(),
            d => percent_decode(d),
        }
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_string())
}

impl DbLocation {
    /// A SQLite file.
    pub fn sqlite(path: impl Into<PathBuf>) -> DbLocation {
        DbLocation::Sqlite(path.into())
    }

    /// The SQLite file, if this is one.
    pub fn as_sqlite(&self) -> Option<&Path> {
        match self {
            DbLocation::Sqlite(p) => Some(p),
            DbLocation::Postgres(_) => None,
        }
    }

    /// Does `text` name a Postgres server rather than a file?
    pub fn is_postgres_url(text: &str) -> bool {
        POSTGRES_SCHEMES.iter().any(|s| {
            text.len() > s.len() + 3
                && text[..s.len()].eq_ignore_ascii_case(s)
                && text[s.len()..].starts_with("://")
        })
    }
}

impl From<PathBuf> for DbLocation {
    fn from(path: PathBuf) -> Self {
        DbLocation::Sqlite(path)
    }
}

impl From<&Path> for DbLocation {
    fn from(path: &Path) -> Self {
        DbLocation::Sqlite(path.to_path_buf())
    }
}

impl FromStr for DbLocation {
    type Err = LocationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(LocationError::Empty);
        }
        if !DbLocation::is_postgres_url(text) {
            return Ok(DbLocation::Sqlite(PathBuf::from(text)));
        }
        let bad = |reason: String| LocationError::BadUrl {
            // Whatever follows `:` in the authority could be a password.
            url: shown(text),
            reason,
        };
        let mut url = url::Url::parse(text).map_err(|e| bad(e.to_string()))?;
        if url.password().is_some() {
            return Err(LocationError::PasswordInUrl);
        }
        let mut schema = None;
        let mut rest = Vec::new();
        for (k, v) in url.query_pairs() {
            if k == SCHEMA_PARAM {
                schema = Some(v.into_owned());
            } else if k == "password" {
                return Err(LocationError::PasswordInUrl);
            } else {
                rest.push((k.into_owned(), v.into_owned()));
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let schema = schema.unwrap_or_else(|| DEFAULT_POSTGRES_SCHEMA.to_string());
        if schema.is_empty() {
            return Err(bad("empty schema".into()));
        }
        Ok(DbLocation::Postgres(PostgresLocation { url, schema }))
    }
}

/// `text` with anything between `://` and `@` beyond the user cut out.
fn shown(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) => {
            let user = auth.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => text.to_string(),
    }
}

impl fmt::Display for DbLocation {
    /// The file's path, or the URL with `?schema=` when not the default
    /// (never a password: a location has none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbLocation::Sqlite(p) => write!(f, "{}", p.display()),
            DbLocation::Postgres(pg) => {
                let mut url = pg.url.clone();
                if pg.schema != DEFAULT_POSTGRES_SCHEMA {
                    url.query_pairs_mut().append_pair(SCHEMA_PARAM, &pg.schema);
                }
                write!(f, "{url}")
            }
        }
    }
}

crate::text::serde_as_text!(DbLocation);

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(text: &str) -> PostgresLocation {
        match text.parse::<DbLocation>().unwrap() {
            DbLocation::Postgres(p) => p,
            other => panic!("{text} is {other:?}"),
        }
    }

    #[test]
    fn files_and_urls_are_told_apart() {
        assert_eq!(
            "sluice.db".parse::<DbLocation>().unwrap(),
            DbLocation::sqlite("sluice.db")
        );
        assert_eq!(
            "./postgres://x".parse::<DbLocation>().unwrap(),
            DbLocation::sqlite("./postgres://x")
        );
        assert!(DbLocation::is_postgres_url("PostgreSQL://h/db"));
        assert!(!DbLocation::is_postgres_url("postgres://"));
        assert_eq!("".parse::<DbLocation>(), Err(LocationError::Empty));
    }

    #[test]
    fn the_schema_parameter_is_sluices_and_other_parameters_stay() {
        let p = pg("postgres://sluice@127.0.0.1:5433/app?schema=raw&application_name=x");
        assert_eq!(p.schema(), "raw");
        assert_eq!(
            p.url(),
            "postgres://sluice@127.0.0.1:5433/app?application_name=x"
        );
        assert_eq!((p.host(), p.port()), ("127.0.0.1", 5433));
        assert_eq!((p.user(), p.database()), ("sluice".into(), "app".into()));
        let d = pg("postgres://u@h/db");
        assert_eq!(d.schema(), DEFAULT_POSTGRES_SCHEMA);
        assert_eq!(d.url(), "postgres://u@h/db");
        // Shown back as given (the schema only when not the default).
        let text = "postgres://sluice@127.0.0.1:5433/app?schema=raw";
        assert_eq!(text.parse::<DbLocation>().unwrap().to_string(), text);
        assert_eq!(pg("postgres://u@h").database(), "u");
        assert_eq!(pg("postgres://us%40er@h/d%20b").database(), "d b");
        assert_eq!(pg("postgres://us%40er@h/d").user(), "us@er");
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_shown() {
        for text in [
            "postgres://u:hunter2@h/db",
            "postgresql://u:hunter2@h:5432/db?schema=x",
            "postgres://u@h/db?password=hunter2",
        ] {
            let e = text.parse::<DbLocation>().unwrap_err();
            assert_eq!(e, LocationError::PasswordInUrl, "{text}");
            assert!(!e.to_string().contains("hunter2"));
        }
        let e = "postgres://u:hunter2@h:notaport/db"
            .parse::<DbLocation>()
            .unwrap_err();
        assert!(matches!(e, LocationError::BadUrl { .. }), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(matches!(
            "postgres://u@h/db?schema=".parse::<DbLocation>(),
            Err(LocationError::BadUrl { .. })
        ));
    }
}
