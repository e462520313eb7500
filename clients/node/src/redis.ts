/**
 * Records from walbust's Redis `publish_channel` (`sinks.redis.publish_channel`).
 *
 * Redis PUBLISH is at-most-once: a message sent while the subscriber is
 * disconnected is gone. So whenever the connection drops after it was
 * subscribed, the cache is cleared at once, and cleared again (and the gap
 * counted) once the subscription is back: entries cached in between may
 * have missed an invalidation too. For delivery without gaps, use Kafka.
 */

import Redis from "ioredis";
import type { RedisOptions } from "ioredis";

import { Subscriber } from "./subscriber";
import type { SubscriberOptions } from "./subscriber";

export interface RedisSubscriberOptions extends SubscriberOptions {
  /** `redis://[user:password@]host:port[/db]`, `rediss://` for TLS. */
  url: string;
  /** The channel walbust publishes on (`sinks.redis.publish_channel`). */
  channel: string;
  /** More ioredis options (retry strategy, TLS, ...). */
  redis?: RedisOptions;
}

export class RedisSubscriber extends Subscriber {
  readonly channel: string;
  private readonly client: Redis;
  private subscribed = false;
  private dropped = false;
  private stopping = false;
  private firstSubscription?: Promise<void>;

  constructor(options: RedisSubscriberOptions) {
    super(options);
    this.channel = options.channel;
    this.client = new Redis(options.url, {
      ...options.redis,
      lazyConnect: true,
      // The channel is subscribed again by hand on every `ready`, so that
      // the gap is declared only once the subscription is confirmed.
      autoResubscribe: false,
      maxRetriesPerRequest: null,
    });
    this.client.on("message", (channel: string, message: string) => {
      if (channel === this.channel) this.handle(message);
    });
    this.client.on("error", (err: Error) => this.emit("transportError", err));
    this.client.on("close", () => this.onDrop());
    this.client.on("reconnecting", () => this.onDrop());
  }

  /** Whether the channel is subscribed right now. */
  get connected(): boolean {
    return this.subscribed;
  }

  /** Connects and subscribes; resolves once the subscription is confirmed. */
  start(): Promise<void> {
    if (this.firstSubscription === undefined) {
      this.firstSubscription = new Promise((resolve, reject) => {
        this.client.on("ready", () => {
          this.client.subscribe(this.channel).then(
            () => {
              this.subscribed = true;
              if (this.dropped) {
                this.dropped = false;
                this.gap("redis connection lost: PUBLISH messages may have been missed");
              }
              resolve();
            },
            (err: Error) => {
              this.emit("transportError", err);
              reject(err);
            },
          );
        });
        this.client.connect().catch(reject);
      });
    }
    return this.firstSubscription;
  }

  /** Unsubscribes and closes the connection. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.subscribed = false;
    try {
      await this.client.quit();
    } catch {
      this.client.disconnect();
    }
  }

  private onDrop(): void {
    if (this.stopping || !this.subscribed) return;
    this.subscribed = false;
    this.dropped = true;
    // Whatever is cached may already have missed an invalidation.
    this.cache.clear();
  }
}
