//! Replays the committed corpora through the targets and keeps the seeds in step with the
//! encoders that made them.

use std::path::{Path, PathBuf};

use super::{TARGETS, seeds};

/// Set to write the seed files instead of checking them:
/// `FUZZ_WRITE_SEEDS=1 cargo test -p shards --lib fuzzing`.
const WRITE_SEEDS: &str = "FUZZ_WRITE_SEEDS";

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Every committed corpus file of every target runs through it without breaking an
/// invariant, and no target's corpus is missing or empty.
#[test]
fn committed_corpora_replay() {
    let mut failed = Vec::new();
    for (target, run) in TARGETS {
        let files = corpus_files(target);
        assert!(
            !files.is_empty(),
            "corpus of {target} is empty ({})",
            corpus_dir(target).display()
        );
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| run(&bytes)).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "corpus files failing their target: {failed:#?}"
    );
}

/// The generated seeds are committed as generated; a change to an encoder shows up here
/// rather than silently leaving seeds that no longer reach what they were made for.
#[test]
fn seed_files_match_the_generator() {
    let write = std::env::var_os(WRITE_SEEDS).is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds::all() {
        let path = corpus_dir(target).join(&name);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (regenerate with {WRITE_SEEDS}=1 cargo test -p shards \
         --lib fuzzing): {stale:#?}"
    );
}

/// Seed names are unique per target, so no seed silently overwrites another.
#[test]
fn seed_names_are_unique() {
    let mut names: Vec<(&str, String)> = seeds::all().into_iter().map(|(t, n, _)| (t, n)).collect();
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total);
}

/// The one-shot stream oracle `session_recv` compares against gives the protocol's
/// answers on known streams, so agreement with it means something.
#[test]
fn stream_oracle_knows_good_and_bad_streams() {
    use super::session_recv::{fuzz_key, oracle};
    use crate::seal::Sealer;
    let records = crate::seal::vector_records();
    let mut plain = Vec::new();
    crate::wire::encode_batch(&records, &mut plain);
    let mut sealer = Sealer::new(fuzz_key());
    let mut stream = Vec::new();
    sealer.seal_into(&plain, &mut stream).unwrap();
    sealer.seal_into(&plain, &mut stream).unwrap();

    let o = oracle(&stream, true);
    assert_eq!((o.frames, o.consumed, o.error), (2, stream.len(), None));
    assert_eq!(o.records, [records.clone(), records.clone()].concat());

    let cut = &stream[..stream.len() - 1];
    let o = oracle(cut, true);
    assert_eq!(o.frames, 1);
    assert_eq!(o.error.as_deref(), Some(crate::session::FIN_MID_FRAME));
    let o = oracle(cut, false);
    assert_eq!((o.frames, o.error), (1, None));

    // The same frame twice: the second fails under the next counter.
    let first = &stream[..stream.len() / 2];
    let o = oracle(&[first, first].concat(), true);
    assert_eq!(o.frames, 1);
    assert!(o.error.unwrap().contains("authentication"));
}

/// The framing check of the handshake target rejects bytes that are not whole messages.
#[test]
fn handshake_framing_check_rejects_broken_framing() {
    use super::handshake_msg::framed_lengths;
    assert_eq!(framed_lengths(&[0, 1, 9, 0, 0]), [1, 0]);
    for broken in [&[0u8][..], &[0, 2, 1], &[0x04, 0x01]] {
        let r = std::panic::catch_unwind(|| framed_lengths(broken));
        assert!(r.is_err(), "{broken:?} passed the framing check");
    }
}

/// Each target accepts the inputs of its documented modes; a broken harness (or engine)
/// fails here before any fuzzer runs.
#[test]
fn targets_run_their_modes() {
    super::handshake_msg(&[1, 0xff, 0xff, 0, 0, 0]);
    super::handshake_msg(&[1, 0, 0, 0, 40, 0x01]);
    super::handshake_msg(&[0, 0xff, 0, 32, 1, 2]);
    super::cid_route(&[0xc0, 0, 0, 0, 1, 16, 42, 0]);
    super::session_recv(&[0xc0]);
    super::wire_batch(&[]);
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    seeds::all()
        .into_iter()
        .find(|(t, n, _)| *t == target && n == &format!("seed-{name}"))
        .unwrap_or_else(|| panic!("no seed {target}/{name}"))
        .2
}

/// The `cid_route` seeds reach every verdict of the endpoint's screening of unknown CIDs.
#[test]
fn cid_seeds_reach_every_screening_verdict() {
    use crate::endpoint::{UnknownCid, screen_unknown};
    let verdict = |name: &str, shards: usize, index: usize| {
        let mut pkt = seed("cid_route", name);
        let hdr = quiche::Header::from_slice(&mut pkt, crate::cid::CID_LEN).unwrap();
        screen_unknown(&hdr, pkt.len(), shards, index)
    };
    assert_eq!(verdict("initial-1200", 4, 0), UnknownCid::Accept);
    assert_eq!(verdict("initial-dcid-8", 4, 0), UnknownCid::Accept);
    assert_eq!(verdict("initial-1199", 4, 0), UnknownCid::TooSmall);
    assert_eq!(verdict("initial-dcid-7", 4, 0), UnknownCid::TooSmall);
    assert_eq!(
        verdict("initial-unknown-version", 4, 0),
        UnknownCid::UnsupportedVersion
    );
    assert_eq!(
        verdict("initial-unknown-version-cid-255", 4, 0),
        UnknownCid::UnsupportedVersion
    );
    // The CID in these names shard 3.
    for name in ["short-ours", "handshake-ours"] {
        assert_eq!(verdict(name, 4, 3), UnknownCid::Stray { misrouted: false });
        assert_eq!(verdict(name, 4, 1), UnknownCid::Stray { misrouted: true });
    }
    let mut pkt = seed("cid_route", "initial-dcid-21");
    assert!(quiche::Header::from_slice(&mut pkt, crate::cid::CID_LEN).is_err());
}

/// The raw-stream seeds of `session_recv` reach every way a stream can fail, and clean
/// ends with and without a FIN.
#[test]
fn stream_seeds_reach_every_outcome() {
    use super::session_recv::oracle;
    let mut outcomes = std::collections::BTreeSet::new();
    for (target, _, bytes) in seeds::all() {
        let Some((&mode, stream)) = bytes.split_first() else {
            continue;
        };
        if target != "session_recv" || mode & 0x80 == 0 {
            continue;
        }
        let o = oracle(stream, mode & 0x40 != 0);
        let kind = o.error.map_or("ok".to_owned(), |e| {
            e.split(|c: char| c.is_ascii_digit())
                .next()
                .unwrap()
                .to_owned()
        });
        outcomes.insert(kind);
    }
    let want = [
        "ok",
        "stream finished mid-frame",
        "seal: sealed frame failed authentication",
        "seal: sealed frame length ",
        "wire: empty batch",
        "wire: truncated record",
        "wire: unknown record type ",
    ];
    for w in want {
        assert!(outcomes.contains(w), "no seed reaches {w:?}: {outcomes:?}");
    }
}
