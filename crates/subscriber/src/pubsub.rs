//! [`RedisSubscriber`]: records from walbust's Redis `PUBLISH` channel (`sinks.redis.publish_channel`).
//!
//! Redis Pub/Sub is at-most-once: a message published while the subscriber is disconnected is
//! gone. So every reconnection is a gap: once subscribed again, the subscriber clears the cache
//! (after the subscription is confirmed, so nothing published from then on is missed, and
//! nothing cached before it survives) and counts the gap
//! (`walbust_subscriber_gaps_total{transport="redis",reason="reconnect"}`).
//!
//! A connection that dies silently (no FIN, no RST) would otherwise look idle forever: a `PING`
//! every [`RedisSubscriber::ping_interval`] that gets no answer within the same time counts as a
//! disconnection.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

use crate::apply::{Applier, Transport};
use crate::cache::LocalCache;

/// Default of [`RedisSubscriber::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Connecting or subscribing failed.
#[derive(Debug, thiserror::Error)]
#[error("redis: could not subscribe to the invalidation channel")]
pub struct RedisSubscribeError(#[source] redis::RedisError);

/// Applies the records published on a Redis channel to a [`LocalCache`].
pub struct RedisSubscriber<C> {
    client: redis::Client,
    channel: String,
    applier: Applier<C>,
    sink: PubSubSink,
    stream: PubSubStream,
    ping_interval: Duration,
}

impl<C: LocalCache> RedisSubscriber<C> {
    /// Connects to `url` (`redis://` or `rediss://`) and subscribes to `channel`. Returns once
    /// subscribed: records published from then on reach `cache` when [`run`](Self::run) runs.
    /// Fill the cache only after this returns.
    pub async fn connect(
        url: &str,
        channel: impl Into<String>,
        cache: C,
    ) -> Result<Self, RedisSubscribeError> {
        let client = redis::Client::open(url).map_err(RedisSubscribeError)?;
        let channel = channel.into();
        let (sink, stream) = subscribe(&client, &channel).await?;
        Ok(RedisSubscriber {
            client,
            channel,
            applier: Applier::new(cache, Transport::Redis),
            sink,
            stream,
            ping_interval: DEFAULT_PING_INTERVAL,
        })
    }

    /// How often an idle connection is checked with `PING` (and how long the answer may take).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// What applies the records: take its [`watermark`](Applier::watermark) and
    /// [`stats`](Applier::stats) handles before [`run`](Self::run) consumes the subscriber.
    pub fn applier(&self) -> &Applier<C> {
        &self.applier
    }

    /// Applies records until the task is dropped (abort it to stop). Reconnects on its own with
    /// backoff; each reconnection clears the cache.
    pub async fn run(mut self) {
        loop {
            if self.receive().await.is_err() {
                self.resubscribe().await;
            }
        }
    }

    /// Applies messages until the connection is lost.
    async fn receive(&mut self) -> Result<(), ()> {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = self.stream.next() => {
                    let message = message.ok_or(())?;
                    // A refusal is counted by the applier; the payload is never logged.
                    if let Err(err) = self.applier.apply_payload(message.get_payload_bytes()) {
                        tracing::warn!(error = %err, "redis: refused an invalidation record");
                    }
                    ping.reset();
                }
                _ = ping.tick() => {
                    let answer = tokio::time::timeout(self.ping_interval, self.sink.ping::<()>());
                    if !matches!(answer.await, Ok(Ok(()))) {
                        return Err(());
                    }
                }
            }
        }
    }

    async fn resubscribe(&mut self) {
        tracing::warn!("redis: invalidation channel connection lost; reconnecting");
        let mut delay = RECONNECT_MIN;
        loop {
            match subscribe(&self.client, &self.channel).await {
                Ok((sink, stream)) => {
                    (self.sink, self.stream) = (sink, stream);
                    self.applier.gap("reconnect");
                    return;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "redis: resubscribing failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        }
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<(PubSubSink, PubSubStream), RedisSubscribeError> {
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(RedisSubscribeError)?;
    pubsub
        .subscribe(channel)
        .await
        .map_err(RedisSubscribeError)?;
    Ok(pubsub.split())
}
