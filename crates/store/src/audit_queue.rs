//! Group commit of audit records, shared by both backends: a queue in
//! front of one writer that appends whatever has gathered in one
//! transaction, and answers each waiting caller only after that
//! transaction committed.

use gavel_core::{AuditReceipt, AuditRecord, Error};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Appends a batch of records at consecutive positions in one transaction.
pub(crate) trait BatchAppender: Send + 'static {
    /// Returns the position of the first record once the batch is durable.
    fn append_batch(
        &mut self,
        records: &[&AuditRecord],
    ) -> impl std::future::Future<Output = Result<u64, Error>> + Send;
}

/// A record to write, and whom to tell when it is durable (nobody, for a
/// record nobody waits on).
type PendingAppend = (AuditRecord, Option<oneshot::Sender<Result<u64, String>>>);

/// How long the writer holds a batch that nobody waits on, to gather more
/// records into one commit.
const LINGER: Duration = Duration::from_millis(2);

/// Most records written in one transaction.
const MAX_BATCH: usize = 2_048;

/// The sending side of a store's audit writer.
#[derive(Clone)]
pub(crate) struct AuditQueue {
    appends: mpsc::Sender<PendingAppend>,
    /// Whether the writer's last batch committed.
    healthy: Arc<AtomicBool>,
}

fn stopped() -> Error {
    Error::Audit("the audit writer has stopped".into())
}

impl AuditQueue {
    /// Starts the writer task around `writer`.
    pub(crate) fn start(writer: impl BatchAppender) -> AuditQueue {
        let (appends, queue) = mpsc::channel(16 * MAX_BATCH);
        let healthy = Arc::new(AtomicBool::new(true));
        tokio::spawn(group_commit(writer, queue, healthy.clone()));
        AuditQueue { appends, healthy }
    }

    /// Whether the writer's last batch committed.
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Appends `record` and waits until it is durable.
    pub(crate) async fn append(&self, record: AuditRecord) -> Result<u64, Error> {
        let (reply, done) = oneshot::channel();
        self.appends
            .send((record, Some(reply)))
            .await
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?.map_err(Error::Audit)
    }

    /// Queues `record` now; the receipt resolves once it is durable.
    pub(crate) fn submit(&self, record: AuditRecord) -> AuditReceipt {
        let (reply, done) = oneshot::channel();
        match self.appends.try_send((record, Some(reply))) {
            Ok(()) => {
                Box::pin(async move { done.await.map_err(|_| stopped())?.map_err(Error::Audit) })
            }
            // Queue full: wait for room in a task of its own, so the write
            // still happens if the receipt is dropped.
            Err(mpsc::error::TrySendError::Full(item)) => {
                let appends = self.appends.clone();
                let task = tokio::spawn(async move { appends.send(item).await.is_ok() });
                Box::pin(async move {
                    if !task.await.unwrap_or(false) {
                        return Err(stopped());
                    }
                    done.await.map_err(|_| stopped())?.map_err(Error::Audit)
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Box::pin(async move { Err(stopped()) }),
        }
    }

    /// Queues `record`; nobody waits for it.
    pub(crate) fn enqueue(&self, record: AuditRecord) {
        match self.appends.try_send((record, None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                // The writer is behind: wait for room without holding up the
                // caller (it may then land after records queued later).
                let appends = self.appends.clone();
                tokio::spawn(async move {
                    if appends.send(item).await.is_err() {
                        tracing::error!("the audit writer has stopped; an outcome record is lost");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the audit writer has stopped; an outcome record is lost");
            }
        }
    }
}

/// Writes queued audit records in batches: every record that arrives while
/// a batch is being committed joins the next one, so one commit (one fsync)
/// covers many records. Each caller is answered only after its batch's
/// commit returned: group commit, no weaker durability.
async fn group_commit(
    mut writer: impl BatchAppender,
    mut queue: mpsc::Receiver<PendingAppend>,
    healthy: Arc<AtomicBool>,
) {
    let mut batch: Vec<PendingAppend> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Only records nobody waits on (outcomes): gather more for a moment,
        // unless a waited-on record arrives.
        if batch.iter().all(|(_, reply)| reply.is_none()) {
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if batch.iter().any(|(_, reply)| reply.is_some()) => break,
                    Ok(_) => {}
                }
            }
        }
        let records: Vec<&AuditRecord> = batch.iter().map(|(r, _)| r).collect();
        let result = writer.append_batch(&records).await;
        healthy.store(result.is_ok(), Ordering::Relaxed);
        for (i, (_, reply)) in batch.drain(..).enumerate() {
            let Some(reply) = reply else {
                if let Err(e) = &result {
                    tracing::error!(error = %e, "writing an audit record nobody waited for failed");
                }
                continue;
            };
            // A caller that gave up waiting has dropped its receiver.
            let _ = reply.send(match &result {
                Ok(first) => Ok(first + i as u64),
                Err(e) => Err(e.to_string()),
            });
        }
    }
}
