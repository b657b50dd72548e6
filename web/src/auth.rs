//! Who may use the console: the password file `hull-web --set-password` writes (one
//! `user:argon2id-hash` line per user, 0600), sessions (random ids held in memory, each with
//! its CSRF token and an expiry), and the login throttle.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// The password file's name in the state directory.
pub const PASSWD: &str = "passwd";

/// How long a session lasts without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);

/// Wrong passwords in a row after which each further attempt waits ([`Throttle`]).
pub const FREE_FAILURES: u32 = 10;

/// Errors of the password file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("user name {0:?} is not a name: 1-32 letters, digits, '.', '_' or '-'")]
    BadUser(String),
    #[error("the password is empty")]
    EmptyPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// True for a user name the password file can hold.
pub fn is_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Stores `password`'s Argon2id hash for `user` in `dir`'s password file, replacing the
/// user's old one; the file is written whole (a temporary file renamed over it), mode 0600.
pub fn set_password(dir: &Path, user: &str, password: &str) -> Result<(), AuthError> {
    if !is_user(user) {
        return Err(AuthError::BadUser(user.into()));
    }
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?
        .to_string();
    let path = dir.join(PASSWD);
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .filter(|l| l.split_once(':').is_some_and(|(u, _)| u != user))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{user}:{hash}\n"));
    let werr = |source| AuthError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = dir.join(format!(".{PASSWD}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_0600()
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(text.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, &path).map_err(werr)
}

/// `OpenOptions` with mode 0600 for new files.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Whether `password` is `user`'s (per `dir`'s password file). Slow on purpose (Argon2):
/// call it off the async threads.
pub fn verify(dir: &Path, user: &str, password: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(PASSWD)) else {
        return false;
    };
    let Some(hash) = text.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(u, _)| *u == user)
            .map(|(_, h)| h)
    }) else {
        return false;
    };
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// 32 random bytes from the OS, as 64 hex digits.
pub fn token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equality that takes the same time wherever the strings differ (tokens).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A logged-in user's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    /// The token every change must carry (a form field), which another site cannot read.
    pub csrf: String,
    last_used: Instant,
}

/// The sessions of this process (a restart logs everyone out).
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `user`: its id (the cookie's value) and the session.
    pub fn open(&self, user: &str) -> (String, Session) {
        let id = token();
        let s = Session {
            user: user.to_string(),
            csrf: token(),
            last_used: Instant::now(),
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session of cookie value `id`, its use noted.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        if s.last_used.elapsed() >= SESSION_IDLE {
            map.remove(id);
            return None;
        }
        s.last_used = Instant::now();
        Some(s.clone())
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Login attempts: after [`FREE_FAILURES`] wrong passwords in a row (from anywhere: a
/// password guesser changes addresses), each attempt first waits a second more than the
/// last, up to 30 s, until a right one.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<u32>,
}

impl Throttle {
    /// How long the next attempt waits.
    pub fn delay(&self) -> Duration {
        let n = *self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Duration::from_secs(u64::from(n.saturating_sub(FREE_FAILURES - 1)).min(30))
    }

    /// Notes an attempt's outcome.
    pub fn note(&self, ok: bool) {
        let mut n = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *n = if ok { 0 } else { n.saturating_add(1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hashed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        set_password(dir.path(), "root", "s3cret").expect("set");
        set_password(dir.path(), "ops", "other").expect("set");
        set_password(dir.path(), "root", "new one").expect("replace");
        let text = std::fs::read_to_string(dir.path().join(PASSWD)).expect("read");
        assert!(
            !text.contains("s3cret") && !text.contains("new one"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(verify(dir.path(), "root", "new one"));
        assert!(!verify(dir.path(), "root", "s3cret"));
        assert!(verify(dir.path(), "ops", "other"));
        assert!(!verify(dir.path(), "nobody", "other"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(PASSWD))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            set_password(dir.path(), "a:b", "x"),
            Err(AuthError::BadUser(_))
        ));
        assert!(matches!(
            set_password(dir.path(), "root", ""),
            Err(AuthError::EmptyPassword)
        ));
    }

    #[test]
    fn the_throttle_starts_after_ten_failures() {
        let t = Throttle::default();
        for _ in 0..9 {
            t.note(false);
        }
        assert_eq!(t.delay(), Duration::ZERO);
        t.note(false);
        assert_eq!(t.delay(), Duration::from_secs(1));
        t.note(false);
        assert_eq!(t.delay(), Duration::from_secs(2));
        t.note(true);
        assert_eq!(t.delay(), Duration::ZERO);
    }

    #[test]
    fn sessions_and_tokens() {
        let s = Sessions::default();
        let (id, sess) = s.open("root");
        assert_eq!(id.len(), 64);
        assert_ne!(id, sess.csrf);
        assert_eq!(s.get(&id).map(|x| x.user), Some("root".into()));
        assert!(s.get(&token()).is_none());
        s.close(&id);
        assert!(s.get(&id).is_none());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
