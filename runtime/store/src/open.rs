//! Opening the store a [`DbLocation`] names: a SQLite file or a Postgres
//! server, to write or read-only, behind `Box<dyn Store>`.
//!
//! Postgres passwords, first that applies:
//! 1. the secret reference the operator gave (`--db-password env:VAR` or
//!    `file:PATH`, `db_password =` in `sluice.toml`);
//! 2. `PGPASSWORD` ([`PASSWORD_ENV`]);
//! 3. the libpq passfile: `PGPASSFILE` ([`PASSFILE_ENV`]), else
//!    `~/.pgpass`, its first line matching host, port, database and user
//!    (`*` matches anything). As libpq does, a passfile that its group or
//!    others can read is ignored, with a warning.
//!
//! None of them: the connection is tried without (trust or peer
//! authentication, say). The password never appears in an error: the
//! backend replaces it.
//!
//! The synchronous Postgres client runs a runtime of its own, so these
//! functions must not be called on a tokio worker thread: call them on a
//! plain thread or through `spawn_blocking`.

use std::io::Read;
use std::path::{Path, PathBuf};

use sluice_core::destination::{Store, StoreError};
use sluice_core::location::{DbLocation, PostgresLocation};
use sluice_core::secrets::SecretSource;

use crate::{PostgresStore, SqliteStore};

/// The password of libpq's environment.
pub const PASSWORD_ENV: &str = "PGPASSWORD";
/// The passfile of libpq's environment.
pub const PASSFILE_ENV: &str = "PGPASSFILE";
/// The passfile in the home directory when `PGPASSFILE` is unset.
pub const DEFAULT_PASSFILE: &str = ".pgpass";
/// A passfile larger than this is not read (it is a handful of lines).
pub const MAX_PASSFILE_BYTES: u64 = 1 << 20;

/// The password for `location`, if any source has one.
pub fn postgres_password(
    location: &PostgresLocation,
    reference: Option<&SecretSource>,
) -> Result<Option<String>, StoreError> {
    if let Some(r) = reference {
        return r
            .read("db_password")
            .map(Some)
            .map_err(|e| StoreError::Open {
                path: location.url().to_string(),
                message: e.to_string(),
            });
    }
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(Some(p));
    }
    let file = match std::env::var_os(PASSFILE_ENV) {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(DEFAULT_PASSFILE),
            None => return Ok(None),
        },
    };
    Ok(passfile_password(&file, location))
}

/// The password `file` holds for `location`, if it is a passfile libpq
/// would use.
fn passfile_password(file: &Path, location: &PostgresLocation) -> Option<String> {
    let mut f = std::fs::File::open(file).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata().ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "password file {} has group or world access; permissions should be u=rw (0600) or less: not used",
                file.display()
            );
            return None;
        }
    }
    let mut text = String::new();
    f.by_ref()
        .take(MAX_PASSFILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    let port = location.port().to_string();
    let wanted = [
        location.host().to_string(),
        port,
        location.database(),
        location.user(),
    ];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(passfile_fields)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(&wanted)
                .all(|(have, want)| have == "*" || have == want)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// `host:port:database:user:password` with `\:` and `\\` escapes.
fn passfile_fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

/// Open `location` to write: a SQLite file is created if missing; a
/// Postgres schema gets Sluice's tables.
pub fn open(
    location: &DbLocation,
    password: Option<&SecretSource>,
) -> Result<Box<dyn Store>, StoreError> {
    match location {
        DbLocation::Sqlite(path) => Ok(Box::new(SqliteStore::open(path)?)),
        DbLocation::Postgres(pg) => {
            let pw = postgres_password(pg, password)?;
            Ok(Box::new(PostgresStore::connect_to(
                pg,
                pw.as_deref(),
                false,
            )?))
        }
    }
}

/// Open an existing store to write (a command that edits one never makes
/// one).
pub fn open_existing(
    location: &DbLocation,
    password: Option<&SecretSource>,
) -> Result<Box<dyn Store>, StoreError> {
    if let DbLocation::Sqlite(path) = location {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                message: "it does not exist".into(),
            });
        }
    }
    open(location, password)
}

/// Open `location` read-only: nothing is created or changed.
pub fn open_read_only(
    location: &DbLocation,
    password: Option<&SecretSource>,
) -> Result<Box<dyn Store>, StoreError> {
    match location {
        DbLocation::Sqlite(path) => Ok(Box::new(SqliteStore::open_read_only(path)?)),
        DbLocation::Postgres(pg) => {
            let pw = postgres_password(pg, password)?;
            Ok(Box::new(PostgresStore::connect_to(
                pg,
                pw.as_deref(),
                true,
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(text: &str) -> PostgresLocation {
        match text.parse::<DbLocation>().unwrap() {
            DbLocation::Postgres(p) => p,
            _ => unreachable!(),
        }
    }

    #[test]
    fn passfile_lines_split_on_unescaped_colons() {
        assert_eq!(
            passfile_fields(r"h:5432:db:u:pa\:ss\\word:x").unwrap(),
            ["h", "5432", "db", "u", r"pa:ss\word:x"]
        );
        assert!(passfile_fields("h:5432:db:u").is_none());
    }

    #[cfg(unix)]
    #[test]
    fn the_first_matching_passfile_line_wins_and_a_readable_file_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:no\n127.0.0.1:5433:app:sluice:right\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loc = pg("postgres://sluice@127.0.0.1:5433/app");
        assert_eq!(passfile_password(&file, &loc).as_deref(), Some("right"));
        let other = pg("postgres://sluice@127.0.0.1:5434/app");
        assert_eq!(
            passfile_password(&file, &other).as_deref(),
            Some("fallback")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(passfile_password(&file, &loc), None);
    }
}
