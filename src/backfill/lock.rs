//! A lock per output partition, so that two backfills of the same days never build one partition
//! at once. Built only from what every store offers: a create-only put, a get and a delete (plus
//! a conditional update where the store has one).
//!
//! The lock is an object `<output>/_q2q/locks/dt=D.lock` holding its owner (run id; host, boot
//! id, PID namespace, pid and the process's start time; its timeout) and when it was last
//! renewed. The owner renews it every quarter of its timeout while it builds.
//!
//! A lock is stale when its owner ran on this machine (same host name, boot id and PID namespace)
//! and its process is gone (kill -9; a reused pid has another start time), or when it was not
//! renewed for the owner's own timeout. A stale lock is taken over by whoever first creates
//! (create-only) the token `dt=D.lock.takeover.<hash of the stale lock>.<generation>`: only that
//! run deletes the stale lock, so two runs never both take it over. A token whose creator died
//! before deleting the lock is itself stale by the same rule, and the next generation's token
//! takes over. Tokens stay (a few hundred bytes each, only after a crash) so that none is won twice.
//!
//! This is a lease, not a fence: a holder that stalls past its timeout can be taken over while
//! it still runs. Such a holder notices at its next renewal or its check before publishing and
//! does not publish; it cannot stop a write already in flight (see the partition protocol in
//! `super`), and hosts' clocks must agree to within a fraction of the timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::hash::hex;
use crate::process::{self, host_name};

/// Who holds a lock (or a takeover token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub run_id: String,
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: tells a reboot (or another machine of the same name).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The PID namespace (`/proc/self/ns/pid`): pids are compared only within one.
    #[serde(default)]
    pub pid_ns: Option<String>,
    pub pid: u32,
    /// The process's start time in clock ticks since boot: a reused pid has another.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    /// The owner's timeout: it is stale once not renewed for this long.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Seconds since the Unix epoch of the last renewal (of the creation, for a token).
    pub renewed_at: u64,
}

impl Owner {
    pub fn me(run_id: &str, timeout: Duration) -> Owner {
        let pid = std::process::id();
        Owner {
            run_id: run_id.to_string(),
            host: host_name(),
            boot_id: process::boot_id(),
            pid_ns: process::pid_namespace(),
            pid,
            start_ticks: process::start_ticks(pid),
            timeout_secs: Some(timeout.as_secs()),
            renewed_at: now_secs(),
        }
    }

    /// Same host, same boot, same PID namespace: its pid can be looked up here.
    fn on_this_machine(&self, me: &Owner) -> bool {
        self.host == me.host
            && self.boot_id.is_some()
            && self.boot_id == me.boot_id
            && self.pid_ns.is_some()
            && self.pid_ns == me.pid_ns
    }

    /// Its process is known to be gone.
    fn is_dead(&self, me: &Owner) -> bool {
        if !self.on_this_machine(me) || self.pid == me.pid {
            return false;
        }
        match process::start_ticks(self.pid) {
            None => true,
            Some(started) => self.start_ticks.is_some_and(|mine| mine != started),
        }
    }

    /// Dead, or not renewed for its own timeout (`fallback` for owners that did not record one).
    fn is_stale(&self, me: &Owner, fallback: Duration) -> bool {
        let timeout = self.timeout_secs.unwrap_or(fallback.as_secs());
        self.is_dead(me) || now_secs().saturating_sub(self.renewed_at) > timeout
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

/// Takes the lock at `path`, waiting while another live run holds it; `on_wait` is told who,
/// once per holder.
pub async fn acquire(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    run_id: &str,
    timeout: Duration,
    cancel: &CancellationToken,
    mut on_wait: impl FnMut(&Owner),
) -> Result<PartitionLock> {
    let poll = Duration::from_millis(250).min(timeout);
    let mut told: Option<String> = None;
    loop {
        let me = Owner::me(run_id, timeout);
        match store.put_opts(&path, json(&me), create_only()).await {
            Ok(_) => return Ok(PartitionLock::start(store, path, me, timeout)),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(lock_error(&path, e)),
        }
        let held = match store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| lock_error(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(lock_error(&path, e)),
        };
        let holder: Option<Owner> = serde_json::from_slice(&held).ok();
        if let Some(holder) = &holder
            && holder.run_id == run_id
        {
            // this run's own create, retried after it had succeeded
            return Ok(PartitionLock::start(store, path, me, timeout));
        }
        // an unreadable lock (a foreign object) counts as stale
        let stale = holder.as_ref().is_none_or(|h| h.is_stale(&me, timeout));
        if stale {
            if take_over(&store, &path, &held, &me, timeout).await? {
                tracing::info!("took over the stale lock {path} ({holder:?})");
                continue;
            }
        } else if let Some(holder) = &holder
            && told.as_deref() != Some(holder.run_id.as_str())
        {
            on_wait(holder);
            told = Some(holder.run_id.clone());
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Interrupted),
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Removes the lock at `path` when its holder is gone or its lease ran out (a run killed after
/// publishing its partition, before releasing the lock), through the same takeover as
/// [`acquire`]; a live holder's lock stays. True when it removed one.
pub async fn clear_abandoned(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    run_id: &str,
    timeout: Duration,
) -> Result<bool> {
    let held = match store.get(path).await {
        Ok(got) => got.bytes().await.map_err(|e| lock_error(path, e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(lock_error(path, e)),
    };
    let me = Owner::me(run_id, timeout);
    let holder: Option<Owner> = serde_json::from_slice(&held).ok();
    if holder.as_ref().is_some_and(|h| !h.is_stale(&me, timeout)) {
        return Ok(false);
    }
    take_over(store, path, &held, &me, timeout).await
}

/// Removes the stale lock whose content is `held` if this run wins its takeover token. False
/// when another live run is taking it over.
async fn take_over(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    held: &[u8],
    me: &Owner,
    timeout: Duration,
) -> Result<bool> {
    let hash = hex(&Sha256::digest(held));
    for generation in 0u32.. {
        let token = ObjectPath::from(format!("{path}.takeover.{}.{generation}", &hash[..16]));
        match store.put_opts(&token, json(me), create_only()).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                let creator: Option<Owner> = match store.get(&token).await {
                    Ok(got) => serde_json::from_slice(
                        &got.bytes().await.map_err(|e| lock_error(&token, e))?,
                    )
                    .ok(),
                    Err(e) => return Err(lock_error(&token, e)),
                };
                match creator {
                    // this run's own create, retried after it had succeeded
                    Some(c) if c.run_id == me.run_id => {}
                    // its creator died before deleting the lock: the next generation decides
                    Some(c) if c.is_stale(me, timeout) => {
                        tracing::info!(
                            "the takeover of {path} by run {} was abandoned; retrying",
                            c.run_id
                        );
                        continue;
                    }
                    None => continue,
                    Some(_) => return Ok(false),
                }
            }
            Err(e) => return Err(lock_error(&token, e)),
        }
        return match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(lock_error(path, e)),
        };
    }
    unreachable!("generations are unbounded")
}

impl PartitionLock {
    fn start(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        owner: Owner,
        timeout: Duration,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            Arc::clone(&store),
            path.clone(),
            owner.clone(),
            timeout,
            Arc::clone(&lost),
        ));
        PartitionLock {
            store,
            path,
            owner,
            lost,
            renewer,
        }
    }

    /// False once this run noticed that another run took the lock over (this run stalled past
    /// its timeout): the holder must then not publish.
    pub fn still_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// Reads the lock afresh: true while it is still this run's. Called right before publishing.
    pub async fn confirm(&self) -> Result<bool> {
        if !self.still_held() {
            return Ok(false);
        }
        match self.store.get(&self.path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| lock_error(&self.path, e))?;
                Ok(serde_json::from_slice::<Owner>(&bytes)
                    .is_ok_and(|o| o.run_id == self.owner.run_id))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(lock_error(&self.path, e)),
        }
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

/// Renews the lock every quarter of the timeout, with a conditional update where the store has
/// one (so a run that lost the lock cannot overwrite its new holder). Notes when someone else took
/// it, or when renewals failed for longer than the timeout (others may then take it over).
async fn renew(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    mut owner: Owner,
    timeout: Duration,
    lost: Arc<AtomicBool>,
) {
    let every = (timeout / 4).max(Duration::from_secs(1));
    let mut conditional = true;
    let mut renewed = std::time::Instant::now();
    let lose = |why: &str| {
        tracing::warn!("lost the lock {path}: {why}");
        lost.store(true, Ordering::SeqCst);
    };
    loop {
        tokio::time::sleep(every).await;
        if renewed.elapsed() > timeout {
            lose("it could not be renewed within its timeout");
            return;
        }
        let got = match store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return lose("it was deleted"),
            Err(e) => {
                tracing::warn!("could not read the lock {path} to renew it: {e}");
                continue;
            }
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = match got.bytes().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("could not read the lock {path} to renew it: {e}");
                continue;
            }
        };
        if !serde_json::from_slice::<Owner>(&bytes).is_ok_and(|o| o.run_id == owner.run_id) {
            return lose("another run took it over");
        }
        owner.renewed_at = now_secs();
        let mut result = if conditional && version.e_tag.is_some() {
            let update = PutOptions {
                mode: PutMode::Update(version),
                ..Default::default()
            };
            store.put_opts(&path, json(&owner), update).await
        } else {
            store.put(&path, json(&owner)).await
        };
        if matches!(result, Err(object_store::Error::NotImplemented { .. })) {
            // the local filesystem (and S3 with conditional puts disabled): check, then put
            conditional = false;
            result = store.put(&path, json(&owner)).await;
        }
        match result {
            Ok(_) => renewed = std::time::Instant::now(),
            Err(object_store::Error::Precondition { .. }) => {
                return lose("another run took it over");
            }
            Err(e) => tracing::warn!("could not renew the lock {path}: {e}"),
        }
    }
}

fn create_only() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

fn json(owner: &Owner) -> PutPayload {
    PutPayload::from(serde_json::to_vec(owner).expect("plain data serializes"))
}

fn lock_error(path: &ObjectPath, e: object_store::Error) -> Error {
    Error::Io(std::io::Error::other(format!("partition lock {path}: {e}")))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    const LONG: Duration = Duration::from_secs(600);

    fn store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap())
    }

    fn path() -> ObjectPath {
        ObjectPath::from("_q2q/locks/dt=2026-01-01.lock")
    }

    async fn put(store: &Arc<dyn ObjectStore>, path: &ObjectPath, owner: &Owner) {
        store.put(path, json(owner)).await.unwrap();
    }

    async fn take(store: &Arc<dyn ObjectStore>, run: &str) -> PartitionLock {
        let cancel = CancellationToken::new();
        acquire(Arc::clone(store), path(), run, LONG, &cancel, |o| {
            panic!("{run} waits for {o:?}")
        })
        .await
        .unwrap()
    }

    /// True when `run` has to wait (it is cancelled after a second).
    async fn waits(store: &Arc<dyn ObjectStore>, run: &str) -> bool {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        });
        match acquire(Arc::clone(store), path(), run, LONG, &cancel, |_| {}).await {
            Err(Error::Interrupted) => true,
            Ok(lock) => {
                lock.release().await;
                false
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// A live process on this machine other than this one.
    fn other_process() -> (std::process::Child, Owner) {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let owner = Owner {
            pid,
            start_ticks: process::start_ticks(pid),
            ..Owner::me("run-other", LONG)
        };
        assert!(owner.start_ticks.is_some());
        (child, owner)
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_released_locks_pass_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let cancel = CancellationToken::new();
        let first = take(&store, "run-a").await;
        assert!(first.still_held() && first.confirm().await.unwrap());

        // a second run waits while the first holds the lock, told once, and gets it once released
        let mut told = 0;
        let second = {
            let store = Arc::clone(&store);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                acquire(store, path(), "run-b", LONG, &cancel, |o| {
                    assert_eq!(o.run_id, "run-a");
                    told += 1;
                })
                .await
                .map(|l| (l, told))
            })
        };
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!second.is_finished(), "run-b waits for run-a");
        first.release().await;
        let (second, told) = second.await.unwrap().unwrap();
        assert_eq!(told, 1, "the holder is reported once, not every poll");
        assert_eq!(second.owner.run_id, "run-b");

        // a run that finds its own lock (a create retried after it succeeded) has it
        let again = take(&store, "run-b").await;
        assert!(again.confirm().await.unwrap());
        second.release().await;
        assert!(!again.confirm().await.unwrap(), "released");
    }

    #[tokio::test]
    async fn dead_holders_are_taken_over_live_ones_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let path = path();
        let (mut child, live) = other_process();

        // a live process on this machine, renewed: wait
        put(&store, &path, &live).await;
        assert!(waits(&store, "run-c").await);

        // gone (kill -9): taken over at once
        put(
            &store,
            &path,
            &Owner {
                pid: u32::MAX - 1,
                ..live.clone()
            },
        )
        .await;
        take(&store, "run-c").await.release().await;

        // its pid now belongs to another process (another start time): taken over at once
        let reused = Owner {
            start_ticks: live.start_ticks.map(|t| t + 1),
            ..live.clone()
        };
        put(&store, &path, &reused).await;
        take(&store, "run-c").await.release().await;

        // a dead pid in another PID namespace, or after a reboot, or on another host, cannot be
        // looked up here: the holder is waited for until its own timeout passes
        for elsewhere in [
            Owner {
                pid_ns: Some("pid:[1]".into()),
                ..live.clone()
            },
            Owner {
                boot_id: Some("another-boot".into()),
                ..live.clone()
            },
            Owner {
                host: "another-host".into(),
                ..live.clone()
            },
        ] {
            let dead = Owner {
                pid: u32::MAX - 1,
                ..elsewhere
            };
            put(&store, &path, &dead).await;
            assert!(waits(&store, "run-c").await, "{dead:?}");
            // its own timeout, not the waiter's, decides
            let expired = Owner {
                timeout_secs: Some(10),
                renewed_at: now_secs() - 30,
                ..dead
            };
            put(&store, &path, &expired).await;
            take(&store, "run-c").await.release().await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn an_abandoned_takeover_does_not_block_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let path = path();
        let (mut child, live) = other_process();
        let dead = Owner {
            pid: u32::MAX - 1,
            ..live.clone()
        };
        put(&store, &path, &dead).await;
        let held = serde_json::to_vec(&dead).unwrap();
        let hash = hex(&Sha256::digest(&held));
        let token = |g: u32| ObjectPath::from(format!("{path}.takeover.{}.{g}", &hash[..16]));

        // a live run won the token and is about to delete the lock: wait for it
        put(&store, &token(0), &live).await;
        assert!(waits(&store, "run-d").await);

        // ... it died before deleting the lock: the next generation takes over
        let crashed = Owner {
            pid: u32::MAX - 2,
            ..live.clone()
        };
        put(&store, &token(0), &crashed).await;
        let lock = take(&store, "run-d").await;
        assert!(store.head(&token(1)).await.is_ok(), "generation 1 decided");
        lock.release().await;
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_holder_notices_when_it_lost_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let cancel = CancellationToken::new();
        let lock = acquire(
            Arc::clone(&store),
            path(),
            "run-e",
            Duration::from_secs(2),
            &cancel,
            |_| {},
        )
        .await
        .unwrap();
        // another run took it over while this one stalled
        put(&store, &path(), &Owner::me("run-f", LONG)).await;
        assert!(!lock.confirm().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!lock.still_held(), "the renewer noticed");
        lock.release().await;
        let current: Owner =
            serde_json::from_slice(&store.get(&path()).await.unwrap().bytes().await.unwrap())
                .unwrap();
        assert_eq!(current.run_id, "run-f", "not renewed over, not deleted");
    }
}
