//! The applied watermark: the highest record LSN applied to the cache, for read-your-writes.

use std::time::Duration;

use tokio::sync::watch;

use crate::lsn::Lsn;

/// The highest LSN whose record the subscriber applied. Cheap to clone; clones share it.
///
/// walbust publishes records in commit order, so once the watermark reaches a transaction's
/// commit LSN its invalidations are applied (a transport gap clears the cache, which covers
/// whatever it lost). One exception: a batch too large for one record is split into parts that
/// all carry the batch's LSN and are applied one after the other, so the watermark reaches that
/// LSN with the first part.
#[derive(Debug, Clone)]
pub struct Watermark {
    lsn: watch::Sender<Lsn>,
}

/// [`Watermark::wait_for`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the applied watermark is {current}, still below {wanted} after {waited:?}")]
pub struct WatermarkTimeout {
    /// The LSN waited for.
    pub wanted: Lsn,
    /// The watermark when the wait ended.
    pub current: Lsn,
    /// How long it waited.
    pub waited: Duration,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            lsn: watch::Sender::new(Lsn(0)),
        }
    }
}

impl Watermark {
    /// The highest LSN applied so far (`0/0` before the first record).
    pub fn current(&self) -> Lsn {
        *self.lsn.borrow()
    }

    /// Raises the watermark to `lsn`; a lower `lsn` (a duplicate, a record of a split batch)
    /// leaves it where it is.
    pub fn advance(&self, lsn: Lsn) {
        self.lsn.send_if_modified(|current| {
            let raised = lsn > *current;
            if raised {
                *current = lsn;
            }
            raised
        });
    }

    /// Waits until the watermark reaches `lsn`, at most `timeout`.
    ///
    /// For read-your-writes, take the LSN inside the writing transaction, as its last statement:
    /// `SELECT pg_current_wal_insert_lsn()` is below the commit's LSN, which the record of the
    /// commit carries (`pg_current_wal_lsn()` after the commit would be past it, and would wait
    /// for a later commit).
    pub async fn wait_for(&self, lsn: Lsn, timeout: Duration) -> Result<(), WatermarkTimeout> {
        let mut receiver = self.lsn.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            // The sender lives in `self`, so the channel cannot close while we wait.
            receiver.wait_for(|current| *current >= lsn).await.is_ok()
        })
        .await;
        match reached {
            Ok(_) => Ok(()),
            Err(_) => Err(WatermarkTimeout {
                wanted: lsn,
                current: self.current(),
                waited: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_until_reached_or_times_out() {
        let watermark = Watermark::default();
        watermark.advance(Lsn(10));
        watermark.wait_for(Lsn(10), Duration::ZERO).await.unwrap();

        let waiter = {
            let watermark = watermark.clone();
            tokio::spawn(async move { watermark.wait_for(Lsn(20), Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        watermark.advance(Lsn(15));
        watermark.advance(Lsn(25));
        assert_eq!(waiter.await.unwrap(), Ok(()));

        let err = watermark
            .wait_for(Lsn(30), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.current, Lsn(25));
        assert_eq!(err.wanted, Lsn(30));
    }

    #[test]
    fn never_goes_back() {
        let watermark = Watermark::default();
        watermark.advance(Lsn(7));
        watermark.advance(Lsn(3));
        assert_eq!(watermark.current(), Lsn(7));
    }
}
