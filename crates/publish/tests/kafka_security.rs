//! librdkafka is built with TLS, so the SASL_SSL settings people run Kafka
//! with in production are accepted as they are passed through.

use walbust_publish::kafka_sink::{KafkaSink, KafkaSinkConfig};

#[test]
fn sasl_ssl_properties_are_supported_by_the_build() {
    let mut cfg = KafkaSinkConfig::new("127.0.0.1:9", "invalidations");
    for (k, v) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "walbust"),
        ("sasl.password", "secret"),
    ] {
        cfg.properties.insert(k.into(), v.into());
    }
    cfg.validate().expect("valid configuration");
    let sink = KafkaSink::new(cfg, "walbust");
    assert!(sink.is_ok(), "{:?}", sink.err().map(|e| e.to_string()));
}

#[test]
fn an_unknown_security_protocol_is_refused_clearly() {
    let mut cfg = KafkaSinkConfig::new("127.0.0.1:9", "invalidations");
    cfg.properties
        .insert("security.protocol".into(), "CARRIER_PIGEON".into());
    let Err(err) = KafkaSink::new(cfg, "walbust") else {
        panic!("an unknown security.protocol was accepted");
    };
    assert!(
        err.to_string().contains("security.protocol")
            || format!("{err:?}").contains("security.protocol"),
        "{err}"
    );
}
