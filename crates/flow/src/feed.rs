use tokio::sync::{mpsc, watch};

use crate::Item;

/// The pipeline's input was closed, or the pipeline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The reader's end of a running pipeline.
///
/// - Items go in through a bounded channel: when the sinks fall behind it
///   fills and [`reserve`](Self::reserve) waits (backpressure).
/// - [`confirmed`](Self::confirmed) watches the end LSN of the last
///   transaction that every sink confirmed together with everything before
///   it: the only position that may be acknowledged to Postgres. It starts
///   at 0 and never goes backwards.
/// - [`close`](Self::close) tells the pipeline that nothing more comes: it
///   publishes what it holds, sends its last confirmation and ends, which
///   closes the watch.
#[derive(Debug)]
pub struct Feed {
    items: Option<mpsc::Sender<Item>>,
    confirmed: watch::Receiver<u64>,
}

impl Feed {
    /// Wraps the two ends a pipeline hands out.
    pub fn new(items: mpsc::Sender<Item>, confirmed: watch::Receiver<u64>) -> Self {
        Feed {
            items: Some(items),
            confirmed,
        }
    }

    /// Hands an item over if there is room now; gives it back when the
    /// channel is full, so the caller can wait with
    /// [`reserve`](Self::reserve) without losing it.
    pub fn try_send(&self, item: Item) -> Result<(), TrySend> {
        let items = self.items.as_ref().ok_or(TrySend::Closed)?;
        items.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) => TrySend::Full(item),
            mpsc::error::TrySendError::Closed(_) => TrySend::Closed,
        })
    }

    /// A sender for waiting on room in the channel
    /// (`sender.reserve().await`) while `self` stays free to watch
    /// confirmations.
    pub fn sender(&self) -> Result<mpsc::Sender<Item>, Closed> {
        self.items.clone().ok_or(Closed)
    }

    /// The confirmed end LSN, to wait on (`changed().await` fails once the
    /// pipeline ended).
    pub fn confirmed(&mut self) -> &mut watch::Receiver<u64> {
        &mut self.confirmed
    }

    /// The confirmed end LSN now, marking it seen.
    pub fn take_confirmed(&mut self) -> u64 {
        *self.confirmed.borrow_and_update()
    }

    /// The confirmed end LSN now.
    pub fn confirmed_lsn(&self) -> u64 {
        *self.confirmed.borrow()
    }

    /// Ends the input: the pipeline publishes what it holds, confirms it and
    /// stops. Items can no longer be sent; confirmations keep arriving until
    /// the pipeline ended.
    pub fn close(&mut self) {
        self.items = None;
    }

    /// The channel's sender and the confirmed watch, for a stage that sits
    /// between the reader and the pipeline (it hands the reader a new
    /// `Feed` over its own channel and the same watch, and passes items on).
    pub fn into_parts(self) -> Result<(mpsc::Sender<Item>, watch::Receiver<u64>), Closed> {
        Ok((self.items.ok_or(Closed)?, self.confirmed))
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.items.is_none()
    }
}

/// Why [`Feed::try_send`] did not take an item.
#[derive(Debug)]
pub enum TrySend {
    /// The channel is full; here is the item back.
    Full(Item),
    /// The input was closed or the pipeline ended.
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(end_lsn: u64) -> Item {
        Item::Commit { end_lsn }
    }

    #[test]
    fn full_gives_the_item_back_and_close_ends_the_input() {
        let (tx, mut rx) = mpsc::channel(1);
        let (watch_tx, watch_rx) = watch::channel(0);
        let mut feed = Feed::new(tx, watch_rx);
        feed.try_send(commit(1)).unwrap();
        assert!(matches!(
            feed.try_send(commit(2)),
            Err(TrySend::Full(Item::Commit { end_lsn: 2 }))
        ));
        watch_tx.send_replace(7);
        assert_eq!(feed.confirmed_lsn(), 7);
        assert_eq!(feed.take_confirmed(), 7);
        feed.close();
        assert!(feed.is_closed());
        assert!(matches!(feed.try_send(commit(3)), Err(TrySend::Closed)));
        assert_eq!(feed.sender().unwrap_err(), Closed);
        // The pipeline still drains what was sent, then sees the end.
        assert_eq!(rx.try_recv().unwrap(), commit(1));
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
