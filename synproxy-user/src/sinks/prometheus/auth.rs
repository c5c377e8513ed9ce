//! `basic_auth_users`: HTTP basic authentication against bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so it runs on
//! the blocking pool, two at a time, and a name and password that checked out
//! are remembered until the configuration changes (Prometheus sends the same
//! pair every scrape). An unknown user costs a comparison too, so the time
//! of an answer does not tell which user names exist.

use base64::Engine;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::HeaderMap;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Checked for unknown users: a valid hash no password matches in practice.
const DUMMY_HASH: &str = "$2y$10$JkSnyRmOF2I7stXtJPDdLussQCQNgeJ2V4n9YmJvhbp53oMjleLJG";
/// Name and password pairs remembered per configuration.
const REMEMBERED: usize = 64;

/// The users of one configuration.
#[derive(Debug)]
pub struct Users {
    hashes: BTreeMap<String, String>,
    verified: Mutex<HashSet<(String, String)>>,
}

impl Users {
    pub fn new(hashes: BTreeMap<String, String>) -> Self {
        Self {
            hashes,
            verified: Mutex::new(HashSet::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether a request with `headers` may pass (always, without users).
    pub async fn allows(
        self: &Arc<Self>,
        headers: &HeaderMap,
        bcrypt_slots: &Arc<Semaphore>,
    ) -> bool {
        if self.hashes.is_empty() {
            return true;
        }
        let Some((user, password)) = credentials(headers.get(AUTHORIZATION)) else {
            return false;
        };
        let pair = (user, password);
        {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.contains(&pair) {
                return true;
            }
        }
        let Ok(_slot) = Arc::clone(bcrypt_slots).acquire_owned().await else {
            return false;
        };
        let hash = self.hashes.get(&pair.0).cloned();
        let password = pair.1.clone();
        let checked = tokio::task::spawn_blocking(move || match hash {
            Some(hash) => bcrypt::verify(password, &hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
            }
        })
        .await
        .unwrap_or(false);
        if checked {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= REMEMBERED {
                verified.clear();
            }
            verified.insert(pair);
        }
        checked
    }
}

/// The user name and password of a `Basic` authorization header.
fn credentials(header: Option<&HeaderValue>) -> Option<(String, String)> {
    let text = header?.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user_password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        headers
    }

    #[tokio::test]
    async fn basic_auth_against_bcrypt_hashes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Arc::new(Users::new(BTreeMap::from([("alice".into(), hash)])));
        let slots = Arc::new(Semaphore::new(2));
        assert!(users.allows(&header("alice:s3cret"), &slots).await);
        // Remembered: the same answer without bcrypt.
        assert!(users.allows(&header("alice:s3cret"), &slots).await);
        assert!(!users.allows(&header("alice:wrong"), &slots).await);
        assert!(!users.allows(&header("bob:s3cret"), &slots).await);
        assert!(!users.allows(&HeaderMap::new(), &slots).await);
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert!(!users.allows(&bearer, &slots).await);
        let open = Arc::new(Users::new(BTreeMap::new()));
        assert!(open.allows(&HeaderMap::new(), &slots).await);
    }
}
