//! Tokens from a local file, for meshes outside Kubernetes.
//!
//! Format: one token per line, `#` starts a comment line, blank lines ignored:
//!
//! ```text
//! # TOKEN                  NAMESPACE/SERVICEACCOUNT  [expires=UNIX_SECONDS]
//! 3f9c1b2e7a...            emojivoto/web
//! 8d2e44a0c1...            emojivoto/voting          expires=1798761600
//! ```
//!
//! Tokens are any run of non-whitespace characters (use long random ones,
//! e.g. `openssl rand -hex 32`). A token may appear only once. The file is
//! re-read when it changes; a malformed new version is refused as a whole and
//! the previous one stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::token::{ServiceAccount, TokenError, TokenValidator};

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {}, line {line}: {problem}", path.display())]
    Line { path: PathBuf, line: usize, problem: String },
}

struct Entry {
    account: ServiceAccount,
    expires: Option<SystemTime>,
}

/// The parsed file, swapped whole on reload. Tokens are kept and looked up
/// by their SHA-256: comparing digests leaks, through timing, at most how
/// much of a digest an attacker's guess matched, which says nothing about
/// the token; and the tokens themselves are not held in memory.
pub struct TokenFile {
    path: PathBuf,
    entries: ArcSwap<HashMap<TokenDigest, Entry>>,
}

type TokenDigest = [u8; 32];

fn digest(token: &[u8]) -> TokenDigest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let entries = parse_file(path)?;
        Ok(Self { path: path.to_owned(), entries: ArcSwap::from_pointee(entries) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; on error the current tokens stay in force.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let entries = parse_file(&self.path)?;
        let n = entries.len();
        self.entries.store(Arc::new(entries));
        Ok(n)
    }

    /// Re-reads the file whenever it changes, checking every `interval`.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut files = crate::reload::FileWatch::new([self.path.clone()]);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if files.changed() {
                match self.reload() {
                    Ok(tokens) => tracing::info!(tokens, "token file reloaded"),
                    Err(error) => {
                        tracing::error!(%error, "token file reload failed; keeping the previous tokens")
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TokenValidator for TokenFile {
    async fn validate(&self, token: &[u8]) -> Result<ServiceAccount, TokenError> {
        let entries = self.entries.load();
        let entry = entries
            .get(&digest(token))
            .ok_or_else(|| TokenError::Rejected("token not in the token file".into()))?;
        if let Some(expires) = entry.expires {
            if SystemTime::now() >= expires {
                return Err(TokenError::Rejected(format!("token for {} expired", entry.account)));
            }
        }
        Ok(entry.account.clone())
    }
}

fn parse_file(path: &Path) -> Result<HashMap<TokenDigest, Entry>, TokenFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TokenFileError::Read { path: path.to_owned(), source })?;
    parse(&text).map_err(|(line, problem)| TokenFileError::Line { path: path.to_owned(), line, problem })
}

fn parse(text: &str) -> Result<HashMap<TokenDigest, Entry>, (usize, String)> {
    let mut entries = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(token), Some(account)) = (fields.next(), fields.next()) else {
            return Err((n, "expected `TOKEN NAMESPACE/SERVICEACCOUNT`".into()));
        };
        let Some((namespace, name)) = account.split_once('/') else {
            return Err((n, format!("{account:?} is not NAMESPACE/SERVICEACCOUNT")));
        };
        weft_tls::name::check_dns_label("namespace", namespace).map_err(|e| (n, e.to_string()))?;
        weft_tls::name::check_dns_label("service account", name).map_err(|e| (n, e.to_string()))?;
        let mut expires = None;
        for extra in fields {
            let secs = extra
                .strip_prefix("expires=")
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| (n, format!("unexpected {extra:?}; only expires=UNIX_SECONDS may follow")))?;
            expires = Some(UNIX_EPOCH + Duration::from_secs(secs));
        }
        let entry = Entry {
            account: ServiceAccount { namespace: namespace.to_owned(), name: name.to_owned() },
            expires,
        };
        // Never echo the token itself: the error may end up in a log.
        if entries.insert(digest(token.as_bytes()), entry).is_some() {
            return Err((n, "duplicate token (seen on an earlier line)".into()));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_comments_and_expiry() {
        let map = parse("# comment\n\n  tok-a   emojivoto/web\ntok-b emojivoto/voting expires=1700000000\n")
            .unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map[&digest(b"tok-a")].account.to_string(), "emojivoto/web");
        assert!(map[&digest(b"tok-b")].expires.is_some());
    }

    #[test]
    fn errors_give_the_line_and_never_the_token() {
        for (text, line) in [
            ("secret1\n", 1),
            ("# x\nsecret1 emojivoto\n", 2),
            ("secret1 Emojivoto/web\n", 1),
            ("secret1 a/b\nsecret1 c/d\n", 2),
            ("secret1 a/b expires=soon\n", 1),
        ] {
            let (n, problem) = parse(text).err().unwrap();
            assert_eq!(n, line, "{text:?}");
            assert!(!problem.contains("secret1"), "{problem}");
        }
    }

    #[tokio::test]
    async fn validates_and_expires() {
        let dir = std::env::temp_dir().join(format!("weft-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "good emojivoto/web\nold emojivoto/web expires=1\n").unwrap();
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.validate(b"good").await.unwrap().to_string(), "emojivoto/web");
        assert!(matches!(file.validate(b"old").await, Err(TokenError::Rejected(_))));
        assert!(file.validate(b"nope").await.is_err());

        std::fs::write(&path, "new emojivoto/voting\n").unwrap();
        assert_eq!(file.reload().unwrap(), 1);
        assert!(file.validate(b"good").await.is_err());
        std::fs::write(&path, "broken\n").unwrap();
        assert!(file.reload().is_err());
        assert!(file.validate(b"new").await.is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
