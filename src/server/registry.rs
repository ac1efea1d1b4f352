//! Which sessions belong to which user, so that a deleted users-row (seen in
//! the replication stream) ends every session of that user.
//!
//! Invariant: a session is registered from its successful AuthReq until it
//! ends (the guard unregisters on drop); a lookup costs one map access,
//! whatever the number of sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A session's registration id and its deletion signal.
type SessionSignal = (u64, Arc<Notify>);

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
}

impl Registry {
    pub fn register(self: &Arc<Self>, user_id: &str) -> Registration {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deleted = Arc::new(Notify::new());
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(user_id.to_string())
            .or_default()
            .push((id, deleted.clone()));
        Registration {
            registry: self.clone(),
            user_id: user_id.to_string(),
            id,
            deleted,
        }
    }

    /// Tells every session of `user_id` that its row is gone. Returns how many.
    pub fn user_deleted(&self, user_id: &str) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(user_id) {
            Some(sessions) => {
                for (_, n) in sessions {
                    // notify_one stores a permit, so a session busy elsewhere
                    // still sees it at its next select.
                    n.notify_one();
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
            for (_, notify) in sessions {
                notify.notify_one();
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
            v.retain(|(id, _)| *id != self.id);
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
