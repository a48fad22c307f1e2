use std::cell::Cell;

use proptest::prelude::*;

use super::*;

thread_local! {
    /// Makes this thread's decodes take the baseline path (see `x86_v3_subset`).
    pub(super) static BASELINE_ONLY: Cell<bool> = const { Cell::new(false) };
}

fn opts() -> EncodeOptions {
    EncodeOptions::default()
}

fn assert_round_trip(samples: &[Sample]) {
    let chunk = encode_chunk(samples, opts());
    let back = decode_chunk(&chunk).expect("a fresh chunk decodes");
    assert_eq!(back.len(), samples.len());
    for (a, b) in samples.iter().zip(&back) {
        assert!(a.bit_eq(b), "{a:?} came back as {b:?}");
    }
    let h = chunk_header(&chunk).unwrap();
    assert_eq!(h.count, samples.len());
    // Never larger than the raw fallback plus the header and checksum.
    assert!(
        chunk.len() <= samples.len() * 16 + 40,
        "{} bytes for {}",
        chunk.len(),
        samples.len()
    );
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::from_bits(crate::model::STALE_NAN_BITS)),
        any::<u64>().prop_map(f64::from_bits),
        Just(0.0),
        Just(-0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        (-100_000i64..100_000).prop_map(|m| m as f64 / 100.0),
        (0u32..1_000_000).prop_map(|n| n as f64),
    ]
}

fn timestamp_step() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(10_000_000_000),
        (9_990i64..10_010).prop_map(|ms| ms * 1_000_000),
        any::<i64>(),
        -1_000_000i64..1_000_000,
    ]
}

/// A partial decode up to `end` is the full decode's samples before `end`,
/// for every encoding the encoder picks.
fn assert_prefix_decodes(samples: &[Sample]) {
    let chunk = encode_chunk(samples, opts());
    let full = decode_chunk(&chunk).expect("a fresh chunk decodes");
    let mut ends: Vec<i64> = samples.iter().map(|s| s.timestamp).collect();
    ends.extend(samples.iter().map(|s| s.timestamp.saturating_add(1)));
    ends.extend([i64::MIN, i64::MAX]);
    for end in ends {
        let mut part = Vec::new();
        let header = decode_chunk_before(&chunk, end, &mut part).expect("decodes");
        assert_eq!(header.count, samples.len());
        let want: Vec<&Sample> = full.iter().take_while(|s| s.timestamp < end).collect();
        assert_eq!(part.len(), want.len(), "up to {end}");
        for (a, b) in part.iter().zip(want) {
            assert!(a.bit_eq(b), "{a:?} against {b:?} up to {end}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_partial_decode_is_the_prefix_before_its_end(
        start in -1_000_000_000_000i64..1_000_000_000_000,
        steps in prop::collection::vec((timestamp_step(), value()), 0..200),
    ) {
        // Ascending, as a shard writes them (heads are sorted when cut).
        let mut t = start;
        let samples: Vec<Sample> = steps
            .into_iter()
            .map(|(step, v)| {
                t = t.saturating_add(step.unsigned_abs().min(1 << 40) as i64);
                Sample::new(t, v)
            })
            .collect();
        assert_prefix_decodes(&samples);
    }

    #[test]
    fn arbitrary_series_round_trip(
        start in any::<i64>(),
        steps in prop::collection::vec((timestamp_step(), value()), 0..400),
    ) {
        let mut t = start;
        let samples: Vec<Sample> = steps
            .into_iter()
            .map(|(dt, v)| {
                t = t.wrapping_add(dt);
                Sample::new(t, v)
            })
            .collect();
        assert_round_trip(&samples);
    }

    #[test]
    fn decimal_walks_round_trip(
        start_ms in -1_000_000_000_000i64..1_000_000_000_000,
        digits in 0usize..=4,
        steps in prop::collection::vec(-5_000i64..5_000, 1..600),
    ) {
        let mut m = 0i64;
        let samples: Vec<Sample> = steps
            .iter()
            .enumerate()
            .map(|(i, d)| {
                m += d;
                Sample::new((start_ms + i as i64 * 10_000) * 1_000_000, m as f64 / POW10[digits])
            })
            .collect();
        assert_round_trip(&samples);
    }

    #[test]
    fn corrupting_any_byte_is_an_error_not_a_panic(
        steps in prop::collection::vec((timestamp_step(), value()), 1..100),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut t = 0i64;
        let samples: Vec<Sample> = steps.into_iter().map(|(dt, v)| { t = t.wrapping_add(dt); Sample::new(t, v) }).collect();
        let mut chunk = encode_chunk(&samples, opts());
        let i = at.index(chunk.len());
        chunk[i] ^= flip;
        prop_assert!(decode_chunk(&chunk).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_chunk(&bytes);
        // With a valid checksum the body parser itself is exercised.
        let mut framed = bytes.clone();
        framed.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        let _ = decode_chunk(&framed);
    }
}

#[test]
fn edge_cases_round_trip() {
    assert_round_trip(&[]);
    assert_round_trip(&[Sample::new(i64::MIN, -0.0)]);
    assert_round_trip(&[
        Sample::new(i64::MIN, 1.0),
        Sample::new(i64::MAX, 2.0),
        Sample::new(i64::MIN, 3.0),
        Sample::new(0, 3.0),
        Sample::new(0, 3.0),
    ]);
    let nan_payload = f64::from_bits(0x7ff8_dead_beef_0001);
    assert_round_trip(&[
        Sample::new(1, nan_payload),
        Sample::new(2, -0.0),
        Sample::new(3, 0.0),
    ]);
}

#[test]
fn regular_series_compress_far_below_raw() {
    let samples: Vec<Sample> = (0..720)
        .map(|i| Sample::new(1_700_000_000_000_000_000 + i * 10_000_000_000, 42.0))
        .collect();
    let chunk = encode_chunk(&samples, opts());
    // Constant values at a fixed interval: a few bits per sample at most.
    assert!(chunk.len() < 720 / 4, "{} bytes", chunk.len());
    assert_round_trip(&samples);
}

#[test]
fn gorilla_xor_reuses_the_window() {
    // Values whose XORs share a window: after the first, each costs 2 + width bits.
    let samples: Vec<Sample> = (0..64)
        .map(|i| Sample::new(i, 1.0 + (i % 2) as f64 * 0.5))
        .collect();
    let mut body = Vec::new();
    gorilla_values(&samples, &mut body);
    let window_bits = 64
        - (1.0f64.to_bits() ^ 1.5f64.to_bits()).leading_zeros()
        - (1.0f64.to_bits() ^ 1.5f64.to_bits()).trailing_zeros();
    let expected_bits = 64 + (2 + 5 + 6 + window_bits) + 62 * (2 + window_bits);
    assert_eq!(body.len(), (expected_bits as usize).div_ceil(8));
}

#[test]
fn corrupt_chunk_reports_checksum() {
    let samples = [Sample::new(1, 1.0), Sample::new(2, 2.0)];
    let mut chunk = encode_chunk(&samples, opts());
    let last = chunk.len() - 6;
    chunk[last] ^= 0x40;
    assert!(matches!(
        decode_chunk(&chunk),
        Err(CodecError::ChecksumMismatch { .. })
    ));
}

/// Scrape-like timestamps: 10 s grid, a phase, ±5 ms of jitter at ms precision.
fn jittered(n: usize, seed: u64) -> Vec<Sample> {
    let mut x = seed;
    (0..n as i64)
        .map(|i| {
            // xorshift: deterministic jitter without a dependency on the generator.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let jitter_ms = (x % 11) as i64 - 5;
            let t = 1_700_000_000_000_000_000 + i * 10_000_000_000 + jitter_ms * 1_000_000;
            Sample::new(t, (i % 7) as f64 * 0.25)
        })
        .collect()
}

#[test]
fn grid_timestamps_cost_about_the_jitter_entropy() {
    let samples = jittered(720, 99);
    let grid = modelled::grid_timestamps(&samples, 6, samples[0].timestamp).unwrap();
    let dod = gorilla_timestamps(&samples, 6);
    // 11 equally likely offsets: log2(11) = 3.46 bits; allow the models' learning.
    assert!(grid.len() * 8 < 720 * 4, "grid {} bytes", grid.len());
    assert!(
        grid.len() * 3 < dod.len() * 2,
        "grid {} vs dod {}",
        grid.len(),
        dod.len()
    );
    assert_round_trip(&samples);
}

#[test]
fn grid_re_anchors_after_a_phase_shift() {
    let mut samples = jittered(720, 5);
    // The target restarts half way through with a new phase 3.7 s later.
    for s in &mut samples[360..] {
        s.timestamp += 3_700_000_000;
    }
    let grid = modelled::grid_timestamps(&samples, 6, samples[0].timestamp).unwrap();
    assert!(grid.len() * 8 < 720 * 5, "grid {} bytes", grid.len());
    assert_round_trip(&samples);
}

#[test]
fn grid_handles_gaps_unsorted_and_equal_timestamps() {
    let mut samples = jittered(300, 11);
    samples.drain(100..140); // a scrape outage
    samples.swap(10, 11);
    samples.insert(50, samples[50]);
    assert_round_trip(&samples);
    assert_eq!(grid_interval(&[0, 10, 20, 50, 60, 61]), 10);
}

#[test]
fn decimal_model_learns_a_counter_rate() {
    // A counter rising by 1000 ± a little: the median step is taken out.
    let samples: Vec<Sample> = (0..720i64)
        .map(|i| Sample::new(i * 10_000, (i * 1000 + (i * 7) % 5) as f64))
        .collect();
    let mut modelled = Vec::new();
    modelled::decimal_model_values(&samples, 0, &mut modelled);
    assert!(modelled.len() < 720 * 3 / 8, "{} bytes", modelled.len());
    assert_round_trip(&samples);
}

proptest! {
    // The checksum normally rejects damage first; the decoders must still be total.
    #[test]
    fn modelled_decoders_never_panic_on_garbage(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        count in 0usize..300,
        min_time in any::<i64>(),
        scale in 0u8..20,
    ) {
        let mut out = Vec::new();
        if let Ok(opened) = GridReader::open(&bytes, scale, min_time) {
            let _ = read_times(opened, count, None, &mut out);
        }
        if let Ok(opened) = GridTimestamps::open(&bytes, min_time) {
            let _ = read_times(opened, count, None, &mut out);
        }
        let mut samples = vec![Sample::new(0, 0.0); count];
        if let Ok(opened) = DecimalReader::open(&bytes) {
            let _ = read_values(opened, &mut samples);
        }
        if let Ok(opened) = DecimalModelValues::open(&bytes) {
            let _ = read_values(opened, &mut samples);
        }
    }
}

fn pinned_samples() -> Vec<Sample> {
    let mut m: i64 = 5_000;
    jittered(500, 7)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            m += (i as i64 * 7919) % 301 - 150;
            Sample::new(s.timestamp, m as f64 / 100.0)
        })
        .collect()
}

/// Chunks already on disk must keep decoding, so the rANS arithmetic is
/// pinned: a fixed scrape-like chunk (grid timestamps and modelled decimals)
/// must encode to the same bytes. A change that still round-trips but codes
/// differently fails here, not on a user's old data. (The checksum is taken
/// over the content: a CRC over a chunk with its own CRC appended is the same
/// constant for every chunk.)
#[test]
fn the_format_2_encoding_is_pinned() {
    let samples = pinned_samples();
    let chunk = encode_chunk(&samples, opts());
    assert_eq!(chunk[0], FORMAT_VERSION);
    assert_eq!(
        chunk[1] & 0b1111,
        TsEncoding::Grid as u8 | (ValueEncoding::DecimalModel as u8) << 2
    );
    let content = &chunk[..chunk.len() - CHECKSUM_LEN];
    assert_eq!(
        (chunk.len(), crc32fast::hash(content)),
        PINNED_FORMAT_2,
        "the encoding of a pinned chunk changed"
    );
    assert_round_trip(&samples);
}

const PINNED_FORMAT_2: (usize, u32) = (807, 3_894_229_856);

/// A format 1 chunk, written by the encoder before format 2 (the same samples
/// as the pinned chunk), decodes to its samples, whole and in part.
#[test]
fn format_1_chunks_still_decode() {
    let chunk: &[u8] = include_bytes!("testdata/format1-grid-decimal.chunk");
    assert_eq!(chunk[0], FORMAT_V1);
    let samples = pinned_samples();
    let back = decode_chunk(chunk).expect("a format 1 chunk decodes");
    assert_eq!(back.len(), samples.len());
    for (a, b) in samples.iter().zip(&back) {
        assert!(a.bit_eq(b), "{a:?} came back as {b:?}");
    }
    let header = chunk_header(chunk).unwrap();
    assert_eq!(header.min_time, samples[0].timestamp);
    assert_eq!(header.max_time, samples.last().unwrap().timestamp);
    let end = samples[200].timestamp;
    let mut part = Vec::new();
    decode_chunk_before(chunk, end, &mut part).unwrap();
    assert_eq!(part.len(), 200);
    // And the format 1 encoders (kept for this test) still produce it.
    assert_eq!(encode_v1_modelled(&samples), chunk);
}

/// `n` jittered scrapes whose values (two decimals) walk by `walk`'s steps,
/// plus a jump `(at, by)` at each sample `at`.
fn walked(n: usize, seed: u64, walk: &[i64], jumps: &[(usize, i64)]) -> Vec<Sample> {
    let mut m = 0i64;
    jittered(n, seed)
        .into_iter()
        .zip(walk)
        .enumerate()
        .map(|(i, (s, d))| {
            m += d + jumps.iter().filter(|j| j.0 == i).map(|j| j.1).sum::<i64>();
            Sample::new(s.timestamp, m as f64 / 100.0)
        })
        .collect()
}

/// A format 1 chunk with grid timestamps and modelled decimals, as the
/// encoder before format 2 wrote it.
fn encode_v1_modelled(samples: &[Sample]) -> Vec<u8> {
    let scale = timestamp_scale(samples);
    let min_time = samples.iter().map(|s| s.timestamp).min().unwrap();
    let max_time = samples.iter().map(|s| s.timestamp).max().unwrap();
    let k = decimal_exponent(samples).expect("short decimals");
    let ts = modelled_v1::grid_timestamps(samples, scale, min_time).expect("a grid");
    let mut out = vec![
        FORMAT_V1,
        TsEncoding::Grid as u8 | (ValueEncoding::DecimalModel as u8) << 2,
    ];
    put_uvarint(&mut out, samples.len() as u64);
    out.extend_from_slice(&min_time.to_le_bytes());
    out.extend_from_slice(&max_time.to_le_bytes());
    put_uvarint(&mut out, ts.len() as u64);
    out.extend_from_slice(&ts);
    modelled_v1::decimal_model_values(samples, k, &mut out);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

proptest! {
    /// Format 1's decoders keep decoding what its encoders wrote.
    #[test]
    fn format_1_round_trips(
        seed in 1u64..u64::MAX,
        n in 2usize..400,
        walk in prop::collection::vec(-20_000i64..20_000, 400),
    ) {
        let samples = walked(n, seed, &walk, &[]);
        let chunk = encode_v1_modelled(&samples);
        let back = decode_chunk(&chunk).expect("decodes");
        prop_assert_eq!(back.len(), samples.len());
        for (a, b) in samples.iter().zip(&back) {
            prop_assert!(a.bit_eq(b), "{:?} came back as {:?}", a, b);
        }
    }
}

/// Sets [`BASELINE_ONLY`] until dropped (also when a decode panics).
struct BaselineOnly;

impl BaselineOnly {
    fn on() -> Self {
        BASELINE_ONLY.with(|b| b.set(true));
        BaselineOnly
    }
}

impl Drop for BaselineOnly {
    fn drop(&mut self) {
        BASELINE_ONLY.with(|b| b.set(false));
    }
}

proptest! {
    /// Both compilations of format 2's loop (baseline and AVX2, where the CPU
    /// has it) decode the same samples, escapes included: an outage (steps of
    /// more than one interval), a phase shift (offsets past the grid alphabet)
    /// and value jumps past 2^19.
    #[test]
    fn the_baseline_and_simd_loops_agree(
        seed in 1u64..u64::MAX,
        n in 2usize..800,
        walk in prop::collection::vec(-20_000i64..20_000, 800),
        outage in prop::option::of(0usize..800),
        shift_at in prop::option::of(0usize..800),
        jumps in prop::collection::vec((0usize..800, -50_000_000i64..50_000_000), 0..4),
    ) {
        let mut samples = walked(n, seed, &walk, &jumps);
        if let Some(at) = shift_at {
            for s in samples.iter_mut().skip(at) {
                s.timestamp += 3_700_000_000;
            }
        }
        if let Some(at) = outage.filter(|&at| at + 20 < samples.len()) {
            samples.drain(at + 1..at + 20);
        }
        let chunk = encode_chunk(&samples, opts());
        prop_assert_eq!(
            chunk[1] & 0b1111,
            TsEncoding::Grid as u8 | (ValueEncoding::DecimalModel as u8) << 2
        );
        let simd = decode_chunk(&chunk).expect("decodes");
        let baseline = {
            let _baseline = BaselineOnly::on();
            decode_chunk(&chunk).expect("decodes")
        };
        prop_assert_eq!(simd.len(), samples.len());
        prop_assert_eq!(baseline.len(), samples.len());
        for ((a, b), c) in samples.iter().zip(&simd).zip(&baseline) {
            prop_assert!(a.bit_eq(b) && a.bit_eq(c), "{:?}: {:?} and {:?}", a, b, c);
        }
    }
}
