//! Blobs in the replicated state: a 200 MiB blob written while a member is
//! down comes back byte for byte through that member after it caught up
//! from a snapshot (the log it missed was purged) and took the lead; a
//! rewrite leaves only its own chunks; bad uses are refused.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::blob::{BlobError, BLOB_CHUNK_BYTES};
use chronicle_cluster::{ClusterConfig, ClusterNode};
use chronicle_storage::ShardConfig;
use tempfile::TempDir;
use tokio::io::{AsyncRead, ReadBuf};

/// Pseudo-random bytes (xorshift64*), as many as asked: incompressible, and
/// the same again from the same seed.
struct Noise {
    state: u64,
    left: u64,
}

impl Noise {
    fn new(seed: u64, len: u64) -> Self {
        Self {
            state: seed | 1,
            left: len,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

impl AsyncRead for Noise {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize;
        // Whole 8-byte words, so reads of any size give the same stream.
        let n = if n < self.left as usize { n - n % 8 } else { n };
        let mut bytes = vec![0u8; n];
        self.fill(&mut bytes);
        self.left -= n as u64;
        buf.put_slice(&bytes);
        Poll::Ready(Ok(()))
    }
}

fn config(dir: &TempDir, id: u64, members: Vec<u64>) -> ClusterConfig {
    let mut config = ClusterConfig::new(id, members, dir.path().join(format!("n{id}")));
    config.shards = 1;
    config.request_timeout = Duration::from_secs(10);
    // Snapshots (and log purges) every 16 MiB: a member away for 200 MiB
    // can only catch up from a snapshot.
    config.snapshot_log_bytes = 16 << 20;
    config.shard = ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    };
    config
}

async fn leader(nodes: &[Arc<ClusterNode>]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = nodes.iter().find_map(|n| n.status().1[0].leader) {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_blob_round_trips_through_a_member_that_caught_up_from_a_snapshot() {
    const SIZE: u64 = 200 << 20;
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(
            ClusterNode::start(config(&dir, id, vec![1, 2, 3]), bus.clone())
                .await
                .unwrap(),
        );
    }
    let first = leader(&nodes).await;
    let away = if first == 3 { 2 } else { 3 };
    let gone = nodes.remove(nodes.iter().position(|n| n.node_id() == away).unwrap());
    gone.shutdown().await;
    drop(gone);

    let store = nodes[0].state("models").unwrap();
    let started = Instant::now();
    let manifest = store
        .put_blob("weights", Noise::new(7, SIZE))
        .await
        .unwrap();
    eprintln!("200 MiB written in {:?}", started.elapsed());
    assert_eq!(manifest.size, SIZE);
    assert_eq!(
        manifest.chunks as u64,
        SIZE.div_ceil(BLOB_CHUNK_BYTES as u64)
    );

    // The member comes back; its log is far behind the leader's purge point.
    let back = ClusterNode::start(config(&dir, away, vec![1, 2, 3]), bus.clone())
        .await
        .unwrap();
    let cell = back.local_shard(0).expect("its replica");
    let opened = Arc::as_ptr(&cell.current());
    let deadline = Instant::now() + Duration::from_secs(240);
    while cell
        .current()
        .state_get("models", "weights")
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the member never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        Arc::as_ptr(&cell.current()),
        opened,
        "caught up without installing a snapshot"
    );

    // It leads, and the blob is read through it.
    nodes[0].transfer_leader(0, away).await.unwrap();
    nodes.push(back.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while back.status().1[0].leader != Some(away) {
        assert!(
            Instant::now() < deadline,
            "node {away} did not take the lead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut reader = back
        .state("models")
        .unwrap()
        .get_blob("weights")
        .await
        .unwrap()
        .expect("the blob");
    let mut expected = Noise::new(7, SIZE);
    let mut read = 0u64;
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        let mut want = vec![0u8; chunk.len()];
        expected.fill(&mut want);
        assert!(chunk == want, "chunk at byte {read} differs");
        read += chunk.len() as u64;
    }
    assert_eq!(read, SIZE);

    // Deleted: the manifest and every chunk.
    let store = back.state("models").unwrap();
    assert!(store.delete_blob("weights").await.unwrap());
    assert!(store.get_blob("weights").await.unwrap().is_none());
    assert!(store.scan(".blob/", None, 10).await.unwrap().0.is_empty());
    for n in nodes {
        n.shutdown().await;
    }
}

/// Every key under `prefix`, page by page (a page holds at most 768 KiB).
async fn chunk_keys(store: &chronicle_cluster::state::StateStore, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    loop {
        let (page, more) = store
            .scan(prefix, keys.last().map(String::as_str), 100)
            .await
            .unwrap();
        keys.extend(page.into_iter().map(|e| e.key));
        if !more {
            return keys;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_keeps_only_its_own_chunks_and_bad_uses_are_refused() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let node = ClusterNode::start(config(&dir, 1, vec![1]), bus)
        .await
        .unwrap();
    leader(std::slice::from_ref(&node)).await;
    let store = node.state("plugins").unwrap();
    let one = store
        .put_blob("m.wasm", Noise::new(1, 3 << 20))
        .await
        .unwrap();
    let two = store
        .put_blob("m.wasm", Noise::new(2, (1 << 20) + 5))
        .await
        .unwrap();
    assert_ne!(one.generation, two.generation);
    let chunks = chunk_keys(&store, ".blob/").await;
    assert_eq!(
        chunks.len(),
        3,
        "only the new generation's chunks: {chunks:?}"
    );
    assert!(chunks.iter().all(|k| k.contains(&two.generation)));
    // An empty blob is a blob.
    let empty = store.put_blob("empty", Noise::new(3, 0)).await.unwrap();
    assert_eq!((empty.size, empty.chunks), (0, 0));
    let mut r = store.get_blob("empty").await.unwrap().unwrap();
    assert!(r.next_chunk().await.unwrap().is_none());
    // Keys where one is a prefix of the other keep their own chunks.
    store.put_blob("a", Noise::new(5, 10)).await.unwrap();
    store.put_blob("a/b", Noise::new(6, 10)).await.unwrap();
    store.put_blob("a", Noise::new(7, 10)).await.unwrap();
    let mut r = store.get_blob("a/b").await.unwrap().unwrap();
    while r.next_chunk().await.unwrap().is_some() {}
    // A plain value is not a blob; chunk keys are not blob keys.
    store.put("plain", b"x".to_vec()).await.unwrap();
    assert!(matches!(
        store.get_blob("plain").await,
        Err(BlobError::NotABlob(_))
    ));
    assert!(matches!(
        store.put_blob(".blob/x", Noise::new(4, 1)).await,
        Err(BlobError::Key(_))
    ));
    // A tampered chunk is caught by the checksum.
    store.put(&chunks[1], vec![0u8; 10]).await.unwrap();
    let mut r = store.get_blob("m.wasm").await.unwrap().unwrap();
    let mut outcome = Ok(Some(Vec::new()));
    while let Ok(Some(_)) = outcome {
        outcome = r.next_chunk().await;
    }
    assert!(matches!(outcome, Err(BlobError::Corrupt(_))), "{outcome:?}");
    node.shutdown().await;
}
