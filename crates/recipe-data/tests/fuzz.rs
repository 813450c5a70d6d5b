//! Every document reader takes any bytes without a panic: random files and damaged copies of
//! valid ones (bytes flipped, cut short) in each format give documents or a clear error. A
//! JSONL line longer than the limit is an error or a skipped record, never held whole.

use std::path::Path;

use proptest::prelude::*;
use recipe_data::{MAX_LINE_BYTES, read_source};
use recipe_spec::{OnError, Source, SourceFormat, TokenDtype};

fn source(file: &Path, format: SourceFormat, on_error: OnError) -> Source {
    Source {
        name: "fuzzed".into(),
        path: vec![file.display().to_string()],
        files: vec![file.to_path_buf()],
        format,
        field: (format == SourceFormat::Jsonl).then(|| "text".to_string()),
        on_error,
        template: None,
        holdout: 0.0,
        dtype: (format == SourceFormat::Tokens).then_some(TokenDtype::U16),
        limit: None,
    }
}

const JSONL: &[u8] = b"{\"text\": \"one\"}\n{\"text\": \"two \\u00e9\"}\n\n{\"text\": \"three\"}\n";
const CHAT: &[u8] =
    b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n";

/// A valid seed with some bytes overwritten and maybe cut short.
fn damaged(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), any::<prop::sample::Index>()).prop_map(
        move |(flips, cut)| {
            let mut bytes = seed.to_vec();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes
        },
    )
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn text_jsonl_and_chat_readers_never_panic(
        bytes in prop_oneof![any_bytes(), damaged(JSONL), damaged(CHAT)],
        skip in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, &bytes).unwrap();
        let on_error = if skip { OnError::Skip } else { OnError::Fail };
        for format in [SourceFormat::Text, SourceFormat::Jsonl, SourceFormat::ChatJsonl] {
            let _ = read_source(&source(&file, format, on_error));
        }
    }

    #[test]
    fn the_tokens_reader_never_panics(tokens in any_bytes(), index in any_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.bin");
        std::fs::write(&file, &tokens).unwrap();
        std::fs::write(file.with_extension("idx"), &index).unwrap();
        if let Ok(docs) = read_source(&source(&file, SourceFormat::Tokens, OnError::Fail)) {
            prop_assert!(!docs.docs.is_empty());
        }
    }
}

#[test]
fn a_line_longer_than_the_limit_is_a_bad_record_not_a_memory_spike() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.jsonl");
    let mut bytes = b"{\"text\": \"".to_vec();
    bytes.resize(MAX_LINE_BYTES + 4096, b'a');
    bytes.extend_from_slice(b"\"}\n{\"text\": \"after\"}\n");
    std::fs::write(&file, &bytes).unwrap();
    drop(bytes);
    let err = read_source(&source(&file, SourceFormat::Jsonl, OnError::Fail)).err().unwrap().to_string();
    assert!(err.contains(":1: the line is longer than 64 MiB"), "{err}");
    let docs = read_source(&source(&file, SourceFormat::Jsonl, OnError::Skip)).unwrap();
    assert_eq!((docs.docs.len(), docs.skipped), (1, 1), "the next line is read");
}
