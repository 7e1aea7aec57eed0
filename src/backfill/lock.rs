//! A lock per output partition, so that two backfills of the same days never build one partition
//! at once. Built only from what every store offers: a create-only put and a delete.
//!
//! The lock is an object `<output>/_q2q/locks/dt=D.lock` holding its owner (run id, host, pid)
//! and when it was last renewed; the owner renews it while it builds. A lock is stale when its
//! owner ran on this host and its process is gone (kill -9), or when it was not renewed for
//! `lock_timeout_secs`. A stale lock is taken over by whoever first creates (create-only) the
//! token `dt=D.lock.takeover.<hash of the stale lock>`: only that run deletes the stale lock, so
//! two runs never both take it over. Tokens stay (a few bytes each) so that a token can never be
//! won twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::sink::sha256_writer::hex;

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch of the last renewal.
    pub renewed_at: u64,
}

impl Owner {
    pub fn me(run_id: &str) -> Owner {
        Owner {
            run_id: run_id.to_string(),
            host: host_name(),
            pid: std::process::id(),
            renewed_at: now_secs(),
        }
    }

    fn is_stale(&self, me: &Owner, timeout: Duration) -> bool {
        if self.host == me.host && self.pid != me.pid && !process_alive(self.pid) {
            return true;
        }
        now_secs().saturating_sub(self.renewed_at) > timeout.as_secs()
    }
}

/// A held lock; renewed in the background until [`PartitionLock::release`].
pub struct PartitionLock {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    owner: Owner,
    lost: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
}

/// Takes the lock at `path`, waiting while another live run holds it; `on_wait` is told who.
pub async fn acquire(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    run_id: &str,
    timeout: Duration,
    cancel: &CancellationToken,
    mut on_wait: impl FnMut(&Owner),
) -> Result<PartitionLock> {
    let poll = Duration::from_millis(250).min(timeout);
    loop {
        let me = Owner::me(run_id);
        let payload = serde_json::to_vec(&me).expect("plain data serializes");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store
            .put_opts(&path, PutPayload::from(payload), create.clone())
            .await
        {
            Ok(_) => {
                let lost = Arc::new(AtomicBool::new(false));
                let renewer = tokio::spawn(renew(
                    Arc::clone(&store),
                    path.clone(),
                    me.clone(),
                    timeout,
                    Arc::clone(&lost),
                ));
                return Ok(PartitionLock {
                    store,
                    path,
                    owner: me,
                    lost,
                    renewer,
                });
            }
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(lock_error(&path, e)),
        }
        let held = match store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| lock_error(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(lock_error(&path, e)),
        };
        let holder: Option<Owner> = serde_json::from_slice(&held).ok();
        // an unreadable lock (a foreign or truncated object) counts as stale
        let stale = holder.as_ref().is_none_or(|h| h.is_stale(&me, timeout));
        if stale {
            let token = ObjectPath::from(format!(
                "{path}.takeover.{}",
                &hex(&Sha256::digest(&held))[..16]
            ));
            match store
                .put_opts(&token, PutPayload::from(run_id.to_string()), create)
                .await
            {
                Ok(_) => {
                    tracing::info!("taking over the stale lock {path} ({holder:?})");
                    match store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(lock_error(&path, e)),
                    }
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(lock_error(&token, e)),
            }
        } else if let Some(holder) = &holder {
            on_wait(holder);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Interrupted),
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

impl PartitionLock {
    /// False once another run took the lock over (this run stalled past the timeout): the holder
    /// must then not publish.
    pub fn still_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// Stops renewing and deletes the lock if it is still this run's.
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(got) = self.store.get(&self.path).await
            && let Ok(bytes) = got.bytes().await
            && serde_json::from_slice::<Owner>(&bytes).is_ok_and(|o| o.run_id == self.owner.run_id)
            && let Err(e) = self.store.delete(&self.path).await
        {
            tracing::warn!("could not release the lock {}: {e}", self.path);
        }
    }
}

/// Renews the lock every quarter of the timeout; notes when someone else took it.
async fn renew(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    mut owner: Owner,
    timeout: Duration,
    lost: Arc<AtomicBool>,
) {
    let every = (timeout / 4).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        let current = match store.get(&path).await {
            Ok(got) => got.bytes().await.ok(),
            Err(_) => None,
        };
        let mine = current
            .and_then(|b| serde_json::from_slice::<Owner>(&b).ok())
            .is_some_and(|o| o.run_id == owner.run_id);
        if !mine {
            lost.store(true, Ordering::SeqCst);
            return;
        }
        owner.renewed_at = now_secs();
        let payload = serde_json::to_vec(&owner).expect("plain data serializes");
        if let Err(e) = store.put(&path, PutPayload::from(payload)).await {
            tracing::warn!("could not renew the lock {path}: {e}");
        }
    }
}

fn lock_error(path: &ObjectPath, e: object_store::Error) -> Error {
    Error::Io(std::io::Error::other(format!("partition lock {path}: {e}")))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether `pid` is a live (not zombie) process on this host. Where that cannot be told, a lock
/// is only taken over after its timeout.
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_none_or(|state| state != 'Z' && state != 'X'),
        }
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    fn store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap())
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_dead_holders_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let path = ObjectPath::from("_q2q/locks/dt=2026-01-01.lock");
        let cancel = CancellationToken::new();
        let timeout = Duration::from_secs(600);
        let first = acquire(
            Arc::clone(&store),
            path.clone(),
            "run-a",
            timeout,
            &cancel,
            |_| {},
        )
        .await
        .unwrap();
        assert!(first.still_held());

        // a second run waits while the first holds the lock, and gets it once released
        let mut waited = 0;
        let second = {
            let store = Arc::clone(&store);
            let path = path.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                acquire(store, path, "run-b", timeout, &cancel, |o| {
                    assert_eq!(o.run_id, "run-a");
                    waited += 1;
                })
                .await
                .map(|l| (l, waited))
            })
        };
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!second.is_finished(), "run-b waits for run-a");
        first.release().await;
        let (second, waited) = second.await.unwrap().unwrap();
        assert!(waited > 0);
        assert_eq!(second.owner.run_id, "run-b");
        second.release().await;

        // a lock left by a process that is gone is taken over at once
        let dead = Owner {
            run_id: "run-dead".into(),
            host: host_name(),
            pid: u32::MAX - 1,
            renewed_at: now_secs(),
        };
        store
            .put(&path, PutPayload::from(serde_json::to_vec(&dead).unwrap()))
            .await
            .unwrap();
        let third = acquire(
            Arc::clone(&store),
            path.clone(),
            "run-c",
            timeout,
            &cancel,
            |_| panic!("a dead holder is not waited for"),
        )
        .await
        .unwrap();
        third.release().await;

        // a lock on another host is taken over only once it has not been renewed for the timeout
        let away = Owner {
            run_id: "run-away".into(),
            host: "another-host".into(),
            pid: 1,
            renewed_at: now_secs() - 30,
        };
        store
            .put(&path, PutPayload::from(serde_json::to_vec(&away).unwrap()))
            .await
            .unwrap();
        let fourth = acquire(
            Arc::clone(&store),
            path.clone(),
            "run-d",
            Duration::from_secs(10),
            &cancel,
            |_| panic!("expired"),
        )
        .await
        .unwrap();
        fourth.release().await;
        let waiting = acquire(
            Arc::clone(&store),
            path.clone(),
            "run-e",
            timeout,
            &cancel,
            |_| {},
        );
        let held = Owner {
            renewed_at: now_secs(),
            ..away
        };
        store
            .put(&path, PutPayload::from(serde_json::to_vec(&held).unwrap()))
            .await
            .unwrap();
        cancel.cancel();
        assert!(matches!(waiting.await, Err(Error::Interrupted)));
    }
}
