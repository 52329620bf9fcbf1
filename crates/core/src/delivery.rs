//! How approval channels deliver: one retry policy for every channel
//! (webhooks, Slack, Teams) and the per-request delivery status that the
//! API and the approval page show, so a reviewer sees a channel that
//! failed instead of wondering why nobody was asked.

use crate::{Approvals, Clock, RequestId, SystemClock, Timestamp};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempts per event before it is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// The first pause between attempts; it doubles each time (0.5, 1, 2, 4 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause a receiver's `Retry-After` may ask for; longer asks
/// are capped so one channel's queue keeps moving.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Requests whose delivery status is kept; the oldest are forgotten first.
const STATUS_KEPT: usize = 10_000;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Still trying.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: the receiver refused it or every attempt failed.
    Failed,
}

/// How one event's delivery to one channel went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// The channel's name.
    pub channel: String,
    /// The event, e.g. `request.pending`.
    pub event: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if any (never a secret: channels report status
    /// codes and the receiver's error names, not URLs or tokens).
    pub last_error: Option<String>,
    /// When the last attempt ended (ms since the epoch).
    pub at: Timestamp,
    /// Unique within the gateway: how an ongoing delivery finds its entry
    /// again, even after the request was forgotten and recorded anew.
    #[serde(skip)]
    pub seq: u64,
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone)]
pub struct AttemptError {
    /// What went wrong, for the request's delivery status and the log.
    pub message: String,
    /// `None`: do not retry (the receiver refused the event, e.g. a 4xx
    /// other than 408 and 429, or Slack's `channel_not_found`).
    /// `Some(wait)`: retry, after `wait` if the receiver said
    /// (`Retry-After`), else after the backoff.
    pub retry: Option<Option<Duration>>,
}

impl AttemptError {
    /// A failure worth retrying after the usual backoff.
    pub fn transient(message: impl Into<String>) -> AttemptError {
        AttemptError {
            message: message.into(),
            retry: Some(None),
        }
    }

    /// A refusal that another attempt would only repeat.
    pub fn permanent(message: impl Into<String>) -> AttemptError {
        AttemptError {
            message: message.into(),
            retry: None,
        }
    }

    /// An HTTP error status, retried when HTTP says it may pass (408,
    /// 429, 5xx), honouring `Retry-After` seconds.
    pub fn http(status: u16, retry_after: Option<Duration>) -> AttemptError {
        let message = format!("HTTP {status}");
        if status == 408 || status == 429 || status >= 500 {
            AttemptError {
                message,
                retry: Some(retry_after),
            }
        } else {
            AttemptError::permanent(message)
        }
    }
}

#[derive(Default)]
struct Kept {
    by_request: HashMap<String, Vec<Delivery>>,
    /// Request ids, oldest first, for eviction.
    order: VecDeque<String>,
    next_seq: u64,
}

/// Where delivery status goes beyond this process (the store), so that
/// every gateway sharing it shows how each channel delivery went. Must not
/// block: queue the write.
pub trait DeliveryRecorder: Send + Sync {
    /// `delivery` of request `request_id`, begun at `began_at`, stands as
    /// given (replacing what was recorded for its `seq` before).
    fn record(&self, request_id: &str, began_at: Timestamp, delivery: &Delivery);
}

/// Delivery status by request id, shared by every channel of a gateway.
#[derive(Default)]
pub struct Deliveries {
    kept: Mutex<Kept>,
    recorder: Option<std::sync::Arc<dyn DeliveryRecorder>>,
}

/// One delivery's place in [`Deliveries`].
#[derive(Debug, Clone)]
pub struct DeliverySlot {
    request_id: String,
    seq: u64,
    began_at: Timestamp,
}

impl Deliveries {
    /// Delivery status kept here and also passed to `recorder`.
    pub fn recorded(recorder: std::sync::Arc<dyn DeliveryRecorder>) -> Deliveries {
        Deliveries {
            kept: Mutex::default(),
            recorder: Some(recorder),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deliveries of request `id` so far, in the order they began.
    pub fn of(&self, id: &str) -> Vec<Delivery> {
        self.kept().by_request.get(id).cloned().unwrap_or_default()
    }

    /// Records a delivery that is about to be attempted.
    pub fn begin(&self, request_id: &str, channel: &str, event: &str) -> DeliverySlot {
        let mut kept = self.kept();
        if !kept.by_request.contains_key(request_id) {
            while kept.order.len() >= STATUS_KEPT {
                if let Some(oldest) = kept.order.pop_front() {
                    kept.by_request.remove(&oldest);
                }
            }
            kept.order.push_back(request_id.to_owned());
        }
        kept.next_seq += 1;
        let seq = kept.next_seq;
        let began_at = SystemClock.now();
        let delivery = Delivery {
            channel: channel.to_owned(),
            event: event.to_owned(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_error: None,
            at: began_at,
            seq,
        };
        if let Some(recorder) = &self.recorder {
            recorder.record(request_id, began_at, &delivery);
        }
        let list = kept.by_request.entry(request_id.to_owned()).or_default();
        list.push(delivery);
        DeliverySlot {
            request_id: request_id.to_owned(),
            seq,
            began_at,
        }
    }

    fn update(&self, slot: &DeliverySlot, change: impl FnOnce(&mut Delivery)) {
        let mut kept = self.kept();
        // Gone when evicted meanwhile: nothing to update.
        if let Some(d) = kept
            .by_request
            .get_mut(&slot.request_id)
            .and_then(|list| list.iter_mut().find(|d| d.seq == slot.seq))
        {
            change(d);
            d.at = SystemClock.now();
            if let Some(recorder) = &self.recorder {
                recorder.record(&slot.request_id, slot.began_at, d);
            }
        }
    }

    /// Runs `attempt` until it succeeds, is refused for good, or
    /// [`MAX_ATTEMPTS`] are spent, keeping the status of the delivery
    /// current and counting it in `/metrics`
    /// (`gavel_channel_deliveries_total{channel, outcome}`,
    /// `gavel_channel_delivery_seconds{channel}`).
    pub async fn deliver<T, F, Fut>(
        &self,
        request_id: &str,
        channel: &str,
        event: &str,
        mut attempt: F,
    ) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let slot = self.begin(request_id, channel, event);
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(value) => {
                    // Counted before the status changes: whoever sees the
                    // status also finds it in the metrics.
                    metrics::counter!("gavel_channel_deliveries_total", "channel" => channel.to_owned(), "outcome" => "delivered").increment(1);
                    metrics::histogram!("gavel_channel_delivery_seconds", "channel" => channel.to_owned())
                        .record(started.elapsed().as_secs_f64());
                    self.update(&slot, |d| {
                        d.attempts = attempts;
                        d.status = DeliveryStatus::Delivered;
                        d.last_error = None;
                    });
                    return Ok(value);
                }
                Err(e) => {
                    let give_up = attempts >= MAX_ATTEMPTS || e.retry.is_none();
                    if give_up {
                        metrics::counter!("gavel_channel_deliveries_total", "channel" => channel.to_owned(), "outcome" => "failed").increment(1);
                    }
                    self.update(&slot, |d| {
                        d.attempts = attempts;
                        d.last_error = Some(e.message.clone());
                        if give_up {
                            d.status = DeliveryStatus::Failed;
                        }
                    });
                    if give_up {
                        tracing::warn!(%channel, %event, request = %request_id, error = %e.message, attempts, "channel delivery failed; giving up");
                        return Err(e.message);
                    }
                    metrics::counter!("gavel_channel_deliveries_total", "channel" => channel.to_owned(), "outcome" => "retried").increment(1);
                    let wait = e
                        .retry
                        .flatten()
                        .map_or(backoff, |asked| asked.min(MAX_RETRY_AFTER));
                    tokio::time::sleep(wait).await;
                    backoff *= 2;
                }
            }
        }
    }
}

/// The messages a chat channel posted, by request id (Slack `ts`, Teams
/// activity id): kept in the store, so buttons keep working and later
/// states update the same message after a restart, with a cache of the
/// live requests in front. A finished request's entry is forgotten.
pub struct ChannelMessages {
    channel: String,
    cache: Mutex<HashMap<String, String>>,
}

impl ChannelMessages {
    /// The messages of the channel named `channel`.
    pub fn new(channel: impl Into<String>) -> ChannelMessages {
        ChannelMessages {
            channel: channel.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The message posted for request `id`, if any. A store error counts
    /// as none: the caller then posts anew, or refuses a button.
    pub async fn get(&self, approvals: Option<&Approvals>, id: &str) -> Option<String> {
        if let Some(found) = self.cache().get(id).cloned() {
            return Some(found);
        }
        let stored = approvals?
            .channel_message(&RequestId(id.to_owned()), &self.channel)
            .await
            .inspect_err(|e| tracing::warn!(channel = %self.channel, request = %id, error = %e, "cannot read the channel's message reference"))
            .ok()
            .flatten()?;
        self.cache().insert(id.to_owned(), stored.clone());
        Some(stored)
    }

    /// Records the message posted for request `id` (`None`: forgets it).
    pub async fn set(&self, approvals: Option<&Approvals>, id: &str, reference: Option<&str>) {
        match reference {
            Some(r) => {
                self.cache().insert(id.to_owned(), r.to_owned());
            }
            None => {
                self.cache().remove(id);
            }
        }
        if let Some(approvals) = approvals
            && let Err(e) = approvals
                .set_channel_message(&RequestId(id.to_owned()), &self.channel, reference)
                .await
        {
            tracing::warn!(channel = %self.channel, request = %id, error = %e, "cannot store the channel's message reference; it lasts until a restart");
        }
    }
}

/// The seconds of an HTTP `Retry-After` header (the date form is not used
/// by the receivers gavel talks to and is ignored).
pub fn retry_after_seconds(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_refusals_are_not() {
        let deliveries = Deliveries::default();
        let calls = AtomicU32::new(0);
        let got = deliveries
            .deliver("r1", "hook", "request.pending", || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => Err(AttemptError::http(503, None)),
                        1 => Err(AttemptError::http(429, Some(Duration::from_secs(2)))),
                        _ => Ok("ok"),
                    }
                }
            })
            .await;
        assert_eq!(got, Ok("ok"));
        let d = &deliveries.of("r1")[0];
        assert_eq!((d.status, d.attempts), (DeliveryStatus::Delivered, 3));
        assert_eq!(d.last_error, None);

        let calls = AtomicU32::new(0);
        let refused: Result<(), String> = deliveries
            .deliver("r1", "hook", "request.denied", || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(AttemptError::http(404, None)) }
            })
            .await;
        assert_eq!(refused, Err("HTTP 404".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a 404 is not retried");
        let d = &deliveries.of("r1")[1];
        assert_eq!((d.status, d.attempts), (DeliveryStatus::Failed, 1));

        let calls = AtomicU32::new(0);
        let _: Result<(), String> = deliveries
            .deliver("r2", "hook", "request.pending", || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(AttemptError::transient("connection failed")) }
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), MAX_ATTEMPTS);
        assert_eq!(deliveries.of("r2")[0].status, DeliveryStatus::Failed);
    }

    #[test]
    fn an_update_finds_its_own_entry_after_the_request_was_forgotten() {
        let deliveries = Deliveries::default();
        let stale = deliveries.begin("r0", "teams", "request.pending");
        for i in 1..=STATUS_KEPT {
            deliveries.begin(&format!("r{i}"), "hook", "request.pending");
        }
        let fresh = deliveries.begin("r0", "slack", "request.pending");
        deliveries.update(&stale, |d| d.status = DeliveryStatus::Delivered);
        assert_eq!(deliveries.of("r0")[0].status, DeliveryStatus::Pending);
        deliveries.update(&fresh, |d| d.status = DeliveryStatus::Failed);
        assert_eq!(deliveries.of("r0")[0].status, DeliveryStatus::Failed);
    }

    #[test]
    fn the_oldest_requests_are_forgotten_first() {
        let deliveries = Deliveries::default();
        for i in 0..=STATUS_KEPT {
            deliveries.begin(&format!("r{i}"), "hook", "request.pending");
        }
        assert!(deliveries.of("r0").is_empty());
        assert_eq!(deliveries.of("r1").len(), 1);
        assert_eq!(deliveries.of(&format!("r{STATUS_KEPT}")).len(), 1);
    }

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(
            retry_after_seconds(Some(" 3")),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after_seconds(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(retry_after_seconds(None), None);
    }
}
