//! Whether the edge may answer a public content read from its own copy, and under which
//! epoch. The edge follows `ContentService.WatchRevision` (content.proto) the same way in
//! every deployment (`portico serve`, separate pods): each revision the stream delivers, each
//! write the edge forwards itself, and each loss of the stream start a new epoch, and a copy is
//! served only while the epoch it was read under is current. While the edge is not subscribed
//! (or the service says it cannot tell), there is no epoch and no copy is served (README,
//! Content; docs/RUNBOOK.md §15).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use portico_proto::content::{content_service_client::ContentServiceClient, WatchRevisionRequest};
use tokio_util::sync::CancellationToken;

use crate::backends::TimedChannel;

/// The first wait before subscribing again after the stream failed or ended.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The current epoch of the edge's content copies.
#[derive(Debug, Default)]
pub(crate) struct ContentRevision {
    /// 0: no copy may be served. Otherwise the epoch new copies are tagged with.
    epoch: AtomicU64,
    /// Where new epochs come from: never reused, so a copy of an old epoch never matches again.
    issued: AtomicU64,
}

impl ContentRevision {
    /// The epoch a read may be served from and filled under; `None`: no copies now.
    pub(crate) fn current(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::SeqCst)).filter(|epoch| *epoch != 0)
    }

    fn fresh(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A write went through this edge (whatever its outcome): no copy read before it is
    /// served again. Does not turn copies on while they are off.
    pub(crate) fn invalidate(&self) {
        let fresh = self.fresh();
        let _ = self
            .epoch
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |epoch| {
                (epoch != 0).then_some(fresh)
            });
    }

    /// The stream delivered a new revision: a new epoch, or none when it is empty (unknown).
    fn observe(&self, known: bool) {
        let epoch = if known { self.fresh() } else { 0 };
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The stream is gone: no copies until a new one delivers a revision.
    fn lost(&self) {
        self.epoch.store(0, Ordering::SeqCst);
    }
}

/// Subscribes to `WatchRevision` on `channel` and keeps `revision` following it, subscribing
/// again with exponential back-off (50 ms to 5 s) whenever the stream fails or ends. Stops with
/// `shutdown`.
pub(crate) fn follow(
    channel: TimedChannel,
    revision: Arc<ContentRevision>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        let mut was_following = false;
        loop {
            let mut client = ContentServiceClient::new(channel.clone());
            // No deadline: the stream lasts as long as both ends do.
            let answer = tokio::select! {
                () = shutdown.cancelled() => return,
                answer = client.watch_revision(WatchRevisionRequest {}) => answer,
            };
            match answer {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut last: Option<Vec<u8>> = None;
                    loop {
                        let message = tokio::select! {
                            () = shutdown.cancelled() => {
                                revision.lost();
                                return;
                            }
                            message = stream.message() => message,
                        };
                        match message {
                            Ok(Some(message)) => {
                                if last.as_ref() != Some(&message.revision) {
                                    revision.observe(!message.revision.is_empty());
                                    last = Some(message.revision);
                                }
                                if !was_following {
                                    tracing::info!("following the content revision");
                                    was_following = true;
                                }
                                backoff = FIRST_BACKOFF;
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(%status, "content revision stream failed");
                                break;
                            }
                        }
                    }
                }
                Err(status) => tracing::debug!(%status, "WatchRevision refused or unreachable"),
            }
            revision.lost();
            if was_following {
                tracing::warn!(
                    "lost the content revision stream: public reads go to the content service until it is back"
                );
                was_following = false;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_epoch_until_a_revision_arrives_and_none_after_the_stream_is_lost() {
        let revision = ContentRevision::default();
        assert_eq!(revision.current(), None);
        revision.invalidate();
        assert_eq!(revision.current(), None, "a write does not turn copies on");
        revision.observe(true);
        let first = revision.current().expect("an epoch");
        revision.invalidate();
        let second = revision.current().expect("still on");
        assert_ne!(first, second, "a forwarded write starts a new epoch");
        revision.observe(false);
        assert_eq!(revision.current(), None, "an empty revision: unknown");
        revision.observe(true);
        let third = revision.current().expect("on again");
        assert!(third != first && third != second, "epochs are never reused");
        revision.lost();
        assert_eq!(revision.current(), None);
    }
}
