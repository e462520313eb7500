//! Two walbusts on one slot, as an HA deployment runs them: the second waits
//! as a standby (live, not ready, not counting reconnections), never
//! acknowledges while the first streams, and takes over within seconds when
//! the first is killed, losing nothing.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const RULES: &str = r#"version: 1
rules:
  - table: public.items
    keys: ["item:{id}"]
"#;

/// Rows updated, one transaction each, while the active walbust is killed.
const ROWS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_killed_walbust_and_nothing_is_lost() {
    let svc = Services::start();
    let db = svc.pg.connect().await.unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    let (config, port) = config_with_metrics(&svc, RULES);
    let mut active = Walbust::start(&config);
    wait_slot_active(&db, &mut active, "walbust").await;
    let first_walsender = walsender_pid(&db).await.expect("the active one streams");

    let (standby_config, standby_port) = second_instance_config(&config, port);
    let mut standby = Walbust::start(&standby_config);
    standby.wait_log("waiting as a standby").await;

    // Every row's key is cached; each update below must remove its key.
    let keys: Vec<String> = (1..=ROWS).map(|i| format!("item:{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut redis = svc.redis.connection().await.unwrap();
    set_keys(&mut redis, &key_refs).await;
    set_keys(&mut redis, &["unrelated"]).await;

    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let written = Arc::clone(&written);
        let db = svc.pg.connect().await.unwrap();
        tokio::spawn(async move {
            for i in 1..=ROWS {
                let id = i32::try_from(i).unwrap();
                db.execute("UPDATE items SET v = v + 1 WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                written.store(i, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // While the active one streams and acknowledges, the standby neither
    // streams nor acknowledges, and counts no reconnection.
    eventually(Duration::from_secs(60), "a third of the writes", || async {
        (written.load(Ordering::SeqCst) >= ROWS / 3).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(60),
        "the active one to acknowledge",
        || async { (metric(port, "walbust_confirmed_lsn") > 0.0).then_some(()) },
    )
    .await;
    assert_eq!(metric(standby_port, "walbust_confirmed_lsn"), 0.0);
    assert_eq!(metric(standby_port, r#"walbust_role{role="standby"}"#), 1.0);
    assert_eq!(metric(standby_port, "walbust_reconnects_total"), 0.0);
    assert_eq!(walsender_pid(&db).await, Some(first_walsender));

    active.kill();
    let killed = Instant::now();
    let takeover = eventually(Duration::from_secs(60), "the standby to stream", || async {
        walsender_pid(&db)
            .await
            .filter(|pid| *pid != first_walsender)
            .map(|_| killed.elapsed())
    })
    .await;
    eprintln!(
        "takeover: the standby streams {} ms after the active walbust was killed",
        takeover.as_millis()
    );

    writer.await.unwrap();
    assert_invalidated(&mut redis, &key_refs, &["unrelated"], "every update").await;
    eventually(Duration::from_secs(30), "the takeover counted", || async {
        (metric(standby_port, "walbust_takeovers_total") == 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(standby_port, r#"walbust_role{role="active"}"#), 1.0);
    assert_eq!(
        metric(standby_port, "walbust_reconnects_total"),
        0.0,
        "waiting for the slot is not a reconnection"
    );
    assert!(standby.is_running(), "{}", standby.log());
}
