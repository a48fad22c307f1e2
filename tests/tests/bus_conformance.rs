//! One conformance suite for every Bus: the same cases run against LocalBus and
//! against NatsBus connected to a real nats-server on a free loopback port.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chronicle_bus::{
    Bus, BusError, BusExt, Fault, FaultController, FaultyBus, LocalBus, Message, NatsBus,
    NatsOptions, Subscription,
};
use chronicle_tests::NatsServer;

const WAIT: Duration = Duration::from_secs(5);

async fn recv(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no message on {} within {WAIT:?}", sub.subject()))
        .expect("subscription closed")
}

/// Asserts nothing was delivered before `sentinel`: publishes the sentinel on a
/// subject the subscription matches and expects it to be the next message.
async fn assert_nothing_before(bus: &dyn Bus, sub: &mut Subscription, sentinel: &str) {
    bus.publish(Message::new(sentinel, "sentinel"))
        .await
        .unwrap();
    let next = recv(sub).await;
    assert_eq!(next.subject, sentinel, "unexpected message {next:?}");
}

/// Waits until a subscription is live on the server (NATS subscribes asynchronously).
async fn settle(bus: &dyn Bus) {
    bus.flush().await.unwrap();
}

async fn publish_subscribe_and_headers(bus: Arc<dyn Bus>) {
    let mut sub = bus.subscribe("conf.pub.a", None).await.unwrap();
    settle(&*bus).await;
    let msg = Message::new("conf.pub.a", "hello").with_header("X-Trace", "abc");
    bus.publish(msg).await.unwrap();
    let got = recv(&mut sub).await;
    assert_eq!(got.subject, "conf.pub.a");
    assert_eq!(got.payload, Bytes::from("hello"));
    assert_eq!(got.headers.get("X-Trace"), Some("abc"));
}

async fn wildcards(bus: Arc<dyn Bus>) {
    let mut star = bus.subscribe("conf.wild.*.x", None).await.unwrap();
    let mut tail = bus.subscribe("conf.wild.>", None).await.unwrap();
    settle(&*bus).await;
    bus.publish_bytes("conf.wild.a.x", "1".into())
        .await
        .unwrap();
    bus.publish_bytes("conf.wild.a.y", "2".into())
        .await
        .unwrap();
    bus.publish_bytes("conf.wild.a.x.deep", "3".into())
        .await
        .unwrap();
    assert_eq!(recv(&mut star).await.payload, "1");
    assert_nothing_before(&*bus, &mut star, "conf.wild.end.x").await;
    for want in ["1", "2", "3"] {
        assert_eq!(recv(&mut tail).await.payload, want);
    }
}

async fn queue_groups(bus: Arc<dyn Bus>) {
    let mut a = bus.subscribe("conf.queue", Some("workers")).await.unwrap();
    let mut b = bus.subscribe("conf.queue", Some("workers")).await.unwrap();
    let mut plain = bus.subscribe("conf.queue", None).await.unwrap();
    settle(&*bus).await;
    let n = 200;
    for i in 0..n {
        bus.publish_bytes("conf.queue", i.to_string().into())
            .await
            .unwrap();
    }
    for _ in 0..n {
        recv(&mut plain).await;
    }
    // Each message reaches exactly one member: count both until all n are seen.
    let (mut got_a, mut got_b) = (0, 0);
    while got_a + got_b < n {
        tokio::select! {
            m = a.next() => { m.expect("member a open"); got_a += 1; }
            m = b.next() => { m.expect("member b open"); got_b += 1; }
            _ = tokio::time::sleep(WAIT) => panic!("only {} of {n} delivered to the group", got_a + got_b),
        }
    }
    assert_eq!(got_a + got_b, n);
    assert!(
        got_a > 0 && got_b > 0,
        "one member got everything: {got_a}/{got_b}"
    );
    // And no extra copies.
    bus.publish_bytes("conf.queue", "last".into())
        .await
        .unwrap();
    tokio::select! {
        m = a.next() => assert_eq!(m.unwrap().payload, "last"),
        m = b.next() => assert_eq!(m.unwrap().payload, "last"),
        _ = tokio::time::sleep(WAIT) => panic!("last message not delivered"),
    }
}

async fn request_reply(bus: Arc<dyn Bus>) {
    let mut service = bus.subscribe("conf.echo", None).await.unwrap();
    settle(&*bus).await;
    let responder = bus.clone();
    let task = tokio::spawn(async move {
        let req = recv(&mut service).await;
        let mut body = b"echo:".to_vec();
        body.extend_from_slice(&req.payload);
        responder.respond(&req, body.into()).await.unwrap();
    });
    let reply = bus
        .request(Message::new("conf.echo", "ping"), WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, "echo:ping");
    task.await.unwrap();
}

async fn no_responders_and_timeout(bus: Arc<dyn Bus>) {
    let err = bus
        .request(Message::new("conf.nobody.home", "x"), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders(_)), "{err}");

    let _silent = bus.subscribe("conf.silent", None).await.unwrap();
    settle(&*bus).await;
    let err = bus
        .request(Message::new("conf.silent", "x"), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Timeout { .. }), "{err}");
}

async fn invalid_subjects(bus: Arc<dyn Bus>) {
    for bad in ["", "a..b", "a b", "a.*", "a.>"] {
        let err = bus.publish_bytes(bad, "x".into()).await.unwrap_err();
        assert!(
            matches!(err, BusError::InvalidSubject { .. }),
            "{bad:?}: {err}"
        );
    }
    for bad in ["a.>.b", "a.b*", ""] {
        let err = bus.subscribe(bad, None).await.unwrap_err();
        assert!(
            matches!(err, BusError::InvalidSubject { .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(matches!(
        bus.subscribe("a.b", Some("bad group")).await.unwrap_err(),
        BusError::InvalidQueueGroup(_)
    ));
}

async fn drain_delivers_buffered_then_closes(bus: Arc<dyn Bus>) {
    let mut sub = bus.subscribe("conf.drain", None).await.unwrap();
    let mut marker = bus.subscribe("conf.drain-marker", None).await.unwrap();
    settle(&*bus).await;
    for i in 0..10 {
        bus.publish_bytes("conf.drain", i.to_string().into())
            .await
            .unwrap();
    }
    // Once the marker published after them is back, the ten are buffered in
    // this client: delivered, not only processed by the server.
    bus.publish_bytes("conf.drain-marker", "after".into())
        .await
        .unwrap();
    recv(&mut marker).await;
    bus.drain().await.unwrap();
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(WAIT, sub.next()).await {
        seen += 1;
    }
    assert_eq!(seen, 10, "buffered messages are delivered before close");
}

async fn draining_one_subscription_keeps_the_bus_open(bus: Arc<dyn Bus>) {
    let mut sub = bus.subscribe("conf.subdrain", None).await.unwrap();
    let mut marker = bus.subscribe("conf.subdrain-marker", None).await.unwrap();
    settle(&*bus).await;
    for i in 0..10 {
        bus.publish_bytes("conf.subdrain", i.to_string().into())
            .await
            .unwrap();
    }
    bus.publish_bytes("conf.subdrain-marker", "after".into())
        .await
        .unwrap();
    recv(&mut marker).await;
    sub.drain_handle().drain();
    // What it held is still delivered; then it ends.
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(WAIT, sub.next()).await {
        seen += 1;
    }
    assert_eq!(
        seen, 10,
        "buffered messages are delivered, then the stream ends"
    );
    // The bus still publishes (acknowledgements of what was drained) and the
    // other subscription still receives.
    bus.publish_bytes("conf.subdrain-marker", "still".into())
        .await
        .unwrap();
    assert_eq!(&recv(&mut marker).await.payload[..], b"still");
}

async fn faults(bus: Arc<dyn Bus>) {
    let faults = FaultController::new(7);
    let n1 = FaultyBus::new(bus.clone(), "n1", faults.clone());
    let n2 = FaultyBus::new(bus.clone(), "n2", faults.clone());

    let mut sub = n2.subscribe("conf.fault.>", None).await.unwrap();
    settle(&n2).await;

    // Drop everything on one subject; others pass.
    let rule = faults
        .add_rule("conf.fault.lossy", Fault::Drop { probability: 1.0 })
        .unwrap();
    n1.publish_bytes("conf.fault.lossy", "lost".into())
        .await
        .unwrap();
    assert_nothing_before(&n1, &mut sub, "conf.fault.ok").await;
    faults.remove_rule(rule);

    // Duplicate.
    let rule = faults.add_rule("conf.fault.dup", Fault::Duplicate).unwrap();
    n1.publish_bytes("conf.fault.dup", "twice".into())
        .await
        .unwrap();
    assert_eq!(recv(&mut sub).await.payload, "twice");
    assert_eq!(recv(&mut sub).await.payload, "twice");
    faults.remove_rule(rule);

    // Delay: a delayed message is overtaken by a later one.
    let rule = faults
        .add_rule("conf.fault.slow", Fault::Delay(Duration::from_millis(300)))
        .unwrap();
    n1.publish_bytes("conf.fault.slow", "late".into())
        .await
        .unwrap();
    n1.publish_bytes("conf.fault.fast", "early".into())
        .await
        .unwrap();
    assert_eq!(recv(&mut sub).await.payload, "early");
    assert_eq!(recv(&mut sub).await.payload, "late");
    faults.remove_rule(rule);

    // Partition: n1's messages no longer reach n2, requests time out; heal restores.
    let mut service = n2.subscribe("conf.fault.svc", None).await.unwrap();
    settle(&n2).await;
    let responder = n2.clone();
    tokio::spawn(async move {
        while let Some(req) = service.next().await {
            let _ = responder.respond(&req, "pong".into()).await;
        }
    });
    let ok = n1
        .request(Message::new("conf.fault.svc", "ping"), WAIT)
        .await
        .unwrap();
    assert_eq!(ok.payload, "pong");
    faults.partition(&["n1"], &["n2", "n3"]);
    assert!(faults.is_partitioned("n2", "n1"));
    n1.publish_bytes("conf.fault.cut", "cut".into())
        .await
        .unwrap();
    let err = n1
        .request(
            Message::new("conf.fault.svc", "ping"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Timeout { .. }), "{err}");
    // n2 still hears itself.
    assert_nothing_before(&n2, &mut sub, "conf.fault.self").await;
    faults.heal();
    let ok = n1
        .request(Message::new("conf.fault.svc", "ping"), WAIT)
        .await
        .unwrap();
    assert_eq!(ok.payload, "pong");
    assert!(faults.injected() >= 4);
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod local {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Arc::new(LocalBus::default())).await;
                }
            )*
        }
        mod nats {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = NatsServer::start();
                    let bus = NatsBus::connect(NatsOptions {
                        urls: vec![server.url()],
                        ..Default::default()
                    })
                    .await
                    .expect("connect to the test's nats-server");
                    super::$case(Arc::new(bus)).await;
                    drop(server);
                }
            )*
        }
    };
}

conformance!(
    publish_subscribe_and_headers,
    wildcards,
    queue_groups,
    request_reply,
    no_responders_and_timeout,
    invalid_subjects,
    drain_delivers_buffered_then_closes,
    draining_one_subscription_keeps_the_bus_open,
    faults,
);
