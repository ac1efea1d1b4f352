//! Which sessions belong to which user, so that a deleted users-row (seen in
//! the replication stream) ends every session of that user.
//!
//! Invariant: a session is registered from its successful AuthReq until it
//! ends (the guard unregisters on drop); a lookup costs one map access,
//! whatever the number of sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A session's registration id and its deletion signals.
struct SessionSignal {
    id: u64,
    deleted: Arc<Notify>,
    revoked: Arc<AtomicBool>,
}

impl SessionSignal {
    /// The flag first (the direct lane checks it before each write), then
    /// the wake-up.
    fn signal(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        // notify_one stores a permit, so a session busy elsewhere still
        // sees it at its next select.
        self.deleted.notify_one();
    }
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, Vec<SessionSignal>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// Held by a session; unregisters it when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    user_id: String,
    id: u64,
    /// Notified when the user's row is deleted.
    pub deleted: Arc<Notify>,
    /// Set (before `deleted` is notified) when the user's row is deleted:
    /// the direct lane writes nothing more to this session.
    pub revoked: Arc<AtomicBool>,
}

impl Registry {
    pub fn register(self: &Arc<Self>, user_id: &str) -> Registration {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deleted = Arc::new(Notify::new());
        let revoked = Arc::new(AtomicBool::new(false));
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(user_id.to_string())
            .or_default()
            .push(SessionSignal {
                id,
                deleted: deleted.clone(),
                revoked: revoked.clone(),
            });
        Registration {
            registry: self.clone(),
            user_id: user_id.to_string(),
            id,
            deleted,
            revoked,
        }
    }

    /// Tells every session of `user_id` that its row is gone. Returns how many.
    pub fn user_deleted(&self, user_id: &str) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(user_id) {
            Some(sessions) => {
                for s in sessions {
                    s.signal();
                }
                sessions.len()
            }
            None => 0,
        }
    }

    /// The users table was truncated: every session's user is gone.
    pub fn all_users_deleted(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for sessions in map.values() {
            for s in sessions {
                s.signal();
                n += 1;
            }
        }
        n
    }

    pub fn sessions_of(&self, user_id: &str) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(user_id).map_or(0, Vec::len)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get_mut(&self.user_id) {
            v.retain(|s| s.id != self.id);
            if v.is_empty() {
                map.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deletion_reaches_every_session_of_the_user_only() {
        let reg = Arc::new(Registry::default());
        let a1 = reg.register("alice");
        let a2 = reg.register("alice");
        let b = reg.register("bob");
        assert_eq!(reg.user_deleted("alice"), 2);
        assert!(a1.revoked.load(Ordering::SeqCst) && a2.revoked.load(Ordering::SeqCst));
        assert!(!b.revoked.load(Ordering::SeqCst));
        a1.deleted.notified().await;
        a2.deleted.notified().await;
        let got = tokio::time::timeout(std::time::Duration::from_millis(20), b.deleted.notified());
        assert!(got.await.is_err(), "bob was not deleted");
        drop(a1);
        drop(a2);
        assert_eq!(reg.sessions_of("alice"), 0);
        assert_eq!(reg.sessions_of("bob"), 1);
    }
}
