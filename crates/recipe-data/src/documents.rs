//! Reading a source's files into documents: `text` (each file a document), `jsonl` (a named
//! field per line), `chat-jsonl` (`{"messages":[{"role","content"}]}`), `preference-jsonl`
//! (`{"prompt", "chosen", "rejected"}`: a pair of conversations), `unpaired-preference-jsonl`
//! (`{"prompt", "completion", "label"}`: one response marked desirable or not) and `tokens` (pre-tokenized
//! `X.bin` with its `X.idx`). Bad input is an error naming file and line;
//! with `on_error = "skip"` bad records are skipped and counted instead.

use std::path::{Path, PathBuf};

use recipe_spec::{OnError, Source, SourceFormat, TokenDtype};
use serde_json::Value;

use crate::error::{DataError, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Doc {
    Text(String),
    Chat(Vec<Message>),
    /// Two conversations that end in different assistant turns, the first preferred.
    Preference {
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    },
    /// A prompt and its response (ending in an assistant turn), marked desirable or not.
    Unpaired {
        prompt: Vec<Message>,
        completion: Vec<Message>,
        desirable: bool,
    },
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl Doc {
    /// The bytes that identify the document for the holdout split.
    pub fn identity(&self) -> Vec<u8> {
        let conversation = |messages: &[Message]| -> Vec<u8> {
            messages
                .iter()
                .flat_map(|m| [m.role.as_str().as_bytes(), b"\0", m.content.as_bytes(), b"\0"].concat())
                .collect()
        };
        match self {
            Doc::Text(t) => t.as_bytes().to_vec(),
            Doc::Chat(messages) => conversation(messages),
            Doc::Preference { chosen, rejected } => {
                [conversation(chosen), b"\x01".to_vec(), conversation(rejected)].concat()
            }
            Doc::Unpaired { prompt, completion, desirable } => {
                [conversation(prompt), vec![0x02, u8::from(*desirable)], conversation(completion)].concat()
            }
            Doc::Tokens(ids) => ids.iter().flat_map(|t| t.to_le_bytes()).collect(),
        }
    }

    /// Plain text of the document, for tokenizer training.
    pub fn text(&self) -> String {
        let conversation =
            |messages: &[Message]| messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
        match self {
            Doc::Text(t) => t.clone(),
            Doc::Chat(messages) => conversation(messages),
            Doc::Preference { chosen, rejected } => format!("{}\n{}", conversation(chosen), conversation(rejected)),
            Doc::Unpaired { prompt, completion, .. } => {
                format!("{}\n{}", conversation(prompt), conversation(completion))
            }
            Doc::Tokens(_) => String::new(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Doc::Text(t) => t.is_empty(),
            Doc::Chat(m) => m.is_empty(),
            Doc::Preference { chosen, rejected } => chosen.is_empty() || rejected.is_empty(),
            Doc::Unpaired { completion, .. } => completion.is_empty(),
            Doc::Tokens(t) => t.is_empty(),
        }
    }
}

/// The documents of a source, with counts of what was left out and why.
#[derive(Debug, Default)]
pub struct Documents {
    pub docs: Vec<Doc>,
    /// Records skipped under `on_error = "skip"`, with the first problem seen.
    pub skipped: usize,
    pub first_skip: Option<DataError>,
    /// Empty documents, which carry no tokens and are dropped.
    pub empty: usize,
}

/// Read every file of a source, in sorted file order.
pub fn read_source(source: &Source) -> Result<Documents> {
    let mut out = Documents::default();
    let limit = source.limit.map_or(usize::MAX, |n| n as usize);
    for file in &source.files {
        if out.docs.len() >= limit {
            break;
        }
        let mut record = |r: Result<Doc>| -> Result<()> {
            match r {
                Ok(doc) if doc.is_empty() => out.empty += 1,
                Ok(doc) => out.docs.push(doc),
                Err(e) if source.on_error == OnError::Skip => {
                    out.skipped += 1;
                    out.first_skip.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
            Ok(())
        };
        match source.format {
            SourceFormat::Text => record(read_text(file))?,
            SourceFormat::Jsonl
            | SourceFormat::ChatJsonl
            | SourceFormat::PreferenceJsonl
            | SourceFormat::UnpairedPreferenceJsonl => for_each_line(file, |i, line| {
                let doc = line.and_then(|line| match source.format {
                    SourceFormat::Jsonl => parse_jsonl(file, i, line, source.field.as_deref().unwrap_or("text")),
                    SourceFormat::PreferenceJsonl => parse_preference(file, i, line),
                    SourceFormat::UnpairedPreferenceJsonl => parse_unpaired(file, i, line),
                    _ => parse_chat(file, i, line),
                });
                record(doc)
            })?,
            SourceFormat::Tokens => {
                for doc in read_tokens(file, source.dtype.unwrap_or(TokenDtype::U16))? {
                    record(Ok(doc))?;
                }
            }
        }
    }
    out.docs.truncate(limit);
    if out.docs.is_empty() {
        let why = match (out.skipped, out.empty) {
            (0, 0) => String::new(),
            (s, e) => format!(" ({s} records skipped, {e} empty)"),
        };
        return Err(DataError::new(format!("source `{}` has no documents{why}", source.name)));
    }
    Ok(out)
}

/// The longest JSONL record read. A longer line is a bad record (an error, or skipped under
/// `on_error = "skip"`) and is never held whole, however long it is.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Call `f` with the number and content of each non-blank line of `file` (without its line
/// ending, and the first without a byte-order mark), streaming: memory stays bounded by
/// [`MAX_LINE_BYTES`].
fn for_each_line(file: &Path, mut f: impl FnMut(usize, Result<&[u8]>) -> Result<()>) -> Result<()> {
    use std::io::{BufRead, Read};
    let io = |e: std::io::Error| DataError::in_file(file, e.to_string());
    let mut reader = std::io::BufReader::new(open(file)?);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let read = reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line).map_err(io)?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            // Step over the rest of the line without keeping it.
            loop {
                let buf = reader.fill_buf().map_err(io)?;
                match buf.iter().position(|b| *b == b'\n') {
                    Some(end) => break reader.consume(end + 1),
                    None if buf.is_empty() => break,
                    None => {
                        let len = buf.len();
                        reader.consume(len);
                    }
                }
            }
            let why = format!("the line is longer than {} MiB", MAX_LINE_BYTES >> 20);
            f(number, Err(DataError::at_line(file, number, why)))?;
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let text = if number == 1 { without_bom(text) } else { text };
        if !text.iter().all(u8::is_ascii_whitespace) {
            f(number, Ok(text))?;
        }
    }
    Ok(())
}

/// `bytes` without the UTF-8 byte-order mark that Windows tools put at the start of a file:
/// it is no part of the text (and no JSON parser takes it).
fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Whether a source file is gzipped (named `*.gz`), and so read through a decoder.
fn gzipped(file: &Path) -> bool {
    file.extension().is_some_and(|e| e == "gz")
}

/// A source file's bytes as a stream, decompressed when it is gzipped (every member of a
/// multi-member file, as `zcat` reads it).
fn open(file: &Path) -> Result<Box<dyn std::io::Read>> {
    let handle = std::fs::File::open(file).map_err(|e| DataError::in_file(file, e.to_string()))?;
    Ok(match gzipped(file) {
        true => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(handle))),
        false => Box::new(handle),
    })
}

fn read_text(file: &Path) -> Result<Doc> {
    let mut bytes = Vec::new();
    open(file)?.read_to_end(&mut bytes).map_err(|e| DataError::in_file(file, e.to_string()))?;
    if without_bom(&bytes).len() < bytes.len() {
        bytes.drain(..3);
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Doc::Text(text)),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            Err(DataError::at_line(file, line, format!("invalid UTF-8 at byte {}", valid.len())))
        }
    }
}

fn parse_json(file: &Path, line: usize, bytes: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(bytes).map_err(|_| DataError::at_line(file, line, "invalid UTF-8"))?;
    serde_json::from_str(text).map_err(|e| DataError::at_line(file, line, format!("malformed JSON: {e}")))
}

fn parse_jsonl(file: &Path, line: usize, bytes: &[u8], field: &str) -> Result<Doc> {
    let value = parse_json(file, line, bytes)?;
    match value.get(field) {
        Some(Value::String(s)) => Ok(Doc::Text(s.clone())),
        Some(other) => Err(DataError::at_line(file, line, format!("field `{field}` is not a string: {other}"))),
        None => Err(DataError::at_line(file, line, format!("missing field `{field}`"))),
    }
}

/// A conversation in any of the three layouts chat datasets come in: OpenAI's `messages`
/// (`role` and `content`), ShareGPT's `conversations` (`from` human, gpt or system and
/// `value`; or `role` and `content`), or Alpaca's `instruction`, optional `input` and
/// `output` (one user turn, the two joined by a blank line, and the answer).
fn parse_chat(file: &Path, line: usize, bytes: &[u8]) -> Result<Doc> {
    let value = parse_json(file, line, bytes)?;
    let bad = |why: String| DataError::at_line(file, line, why);
    if value.get("messages").is_none() && value.get("conversations").is_none() && value.get("instruction").is_some() {
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        let instruction = text("instruction").ok_or_else(|| bad("`instruction` is not a string".into()))?;
        let output =
            text("output").ok_or_else(|| bad("an Alpaca record (`instruction`) needs a string `output`".into()))?;
        let prompt = match text("input").filter(|input| !input.trim().is_empty()) {
            Some(input) => format!("{instruction}\n\n{input}"),
            None => instruction.to_string(),
        };
        let turn = |role, content: String| Message { role, content };
        return Ok(Doc::Chat(vec![turn(Role::User, prompt), turn(Role::Assistant, output.to_string())]));
    }
    if value.get("messages").is_none() && value.get("conversations").is_none() && value.get("completion").is_some() {
        let layout = "a prompt-completion record has `completion` and, before it, an optional `prompt`";
        let (prompt, completion) = prompt_and_completion(&value, layout, &bad)?;
        return Ok(Doc::Chat([prompt, completion].concat()));
    }
    let (key, messages) = ["messages", "conversations"]
        .into_iter()
        .find_map(|key| Some((key, value.get(key)?.as_array()?)))
        .ok_or_else(|| {
            bad("missing field `messages` (an array; or ShareGPT's `conversations`, Alpaca's `instruction` and \
                 `output`, or TRL's `prompt` and `completion`)"
                .into())
        })?;
    Ok(Doc::Chat(parse_messages(key, messages, &bad)?))
}

/// The messages of a conversation array, OpenAI's (`role`, `content`: a string or a list of
/// text parts) or ShareGPT's (`from`, `value`); `key` names the array in errors.
fn parse_messages(key: &str, messages: &[Value], bad: &dyn Fn(String) -> DataError) -> Result<Vec<Message>> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let (role_key, content_key) = if m.get("from").is_some() { ("from", "value") } else { ("role", "content") };
        let role = match m.get(role_key).and_then(Value::as_str) {
            Some("system") => Role::System,
            Some("user" | "human") => Role::User,
            Some("assistant" | "gpt") => Role::Assistant,
            Some(other) => {
                return Err(bad(format!("{key}[{i}].{role_key} is `{other}`; expected system, user or assistant")));
            }
            None => return Err(bad(format!("{key}[{i}] has no string `{role_key}`"))),
        };
        let content = match m.get(content_key) {
            Some(Value::String(text)) => text.clone(),
            // OpenAI's and `transformers`' list of parts, written one after another as the
            // templates write them; a conversation here is text only.
            Some(Value::Array(parts)) => parts
                .iter()
                .enumerate()
                .map(|(j, part)| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
                    (kind, _) => Err(bad(format!(
                        "{key}[{i}].{content_key}[{j}] is {}; expected a text part, {{\"type\": \"text\", \"text\": \"...\"}}",
                        kind.map_or("not a part".to_string(), |k| format!("a part of type `{k}`"))
                    ))),
                })
                .collect::<Result<String>>()?,
            _ => return Err(bad(format!("{key}[{i}] has no string `{content_key}` (nor a list of text parts)"))),
        };
        out.push(Message { role, content });
    }
    Ok(out)
}

/// A preference pair in the layouts TRL's trainers read: `prompt`, `chosen` and `rejected` as
/// strings (a user turn and two answers) or as message arrays; `chosen` and `rejected` as
/// whole conversations with no `prompt` (or one they already start with, as UltraFeedback's);
/// or two strings with no `prompt`, whose common beginning is the prompt (as TRL's
/// `extract_prompt` splits them, a space before the split going with the answers). Each
/// conversation must end with the assistant turn that is scored.
fn parse_preference(file: &Path, line: usize, bytes: &[u8]) -> Result<Doc> {
    let value = parse_json(file, line, bytes)?;
    let bad = |why: String| DataError::at_line(file, line, why);
    let messages = |key: &str, role: Role| -> Result<Option<Vec<Message>>> {
        match value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(vec![Message { role, content: text.clone() }])),
            Some(Value::Array(list)) => parse_messages(key, list, &bad).map(Some),
            Some(other) => Err(bad(format!("`{key}` is {other}; expected a string or an array of messages"))),
        }
    };
    if let (None, Some(Value::String(chosen)), Some(Value::String(rejected))) =
        (value.get("prompt"), value.get("chosen"), value.get("rejected"))
    {
        let (prompt, chosen, rejected) = implicit_prompt(chosen, rejected);
        let turn = |role, content: &str| Message { role, content: content.to_string() };
        let user = (!prompt.is_empty()).then(|| turn(Role::User, prompt));
        let conversation = |answer: &str| user.iter().cloned().chain([turn(Role::Assistant, answer)]).collect();
        return Ok(Doc::Preference { chosen: conversation(chosen), rejected: conversation(rejected) });
    }
    let prompt = messages("prompt", Role::User)?.unwrap_or_default();
    let conversation = |key: &str| -> Result<Vec<Message>> {
        let answer = messages(key, Role::Assistant)?.ok_or_else(|| {
            bad(format!(
                "missing field `{key}` (a preference record has `chosen` and `rejected`, and may have `prompt`)"
            ))
        })?;
        let whole = if answer.starts_with(&prompt) { answer } else { [prompt.clone(), answer].concat() };
        match whole.last() {
            Some(m) if m.role == Role::Assistant => Ok(whole),
            _ => Err(bad(format!("`{key}` does not end with an assistant turn, the response the pair compares"))),
        }
    };
    Ok(Doc::Preference { chosen: conversation("chosen")?, rejected: conversation("rejected")? })
}

/// One response marked desirable or not, in the layout TRL's `KTOTrainer` reads: `prompt` and
/// `completion` as strings (a user turn and an answer) or message arrays, and `label` true for
/// a desirable response.
fn parse_unpaired(file: &Path, line: usize, bytes: &[u8]) -> Result<Doc> {
    let value = parse_json(file, line, bytes)?;
    let bad = |why: String| DataError::at_line(file, line, why);
    let desirable = match value.get("label") {
        Some(Value::Bool(label)) => *label,
        _ => return Err(bad("missing boolean `label` (true: a desirable response, false: an undesirable one)".into())),
    };
    let (prompt, completion) =
        prompt_and_completion(&value, "an unpaired record has `prompt`, `completion` and `label`", &bad)?;
    Ok(Doc::Unpaired { prompt, completion, desirable })
}

/// A record's `prompt` (none, a string for a user turn, or messages) and `completion` (a string
/// for an answer, or messages ending with an assistant turn), as TRL's prompt-completion layout
/// has them; `layout` says what a record needs, for the error when `completion` is missing.
fn prompt_and_completion(
    value: &Value,
    layout: &str,
    bad: &dyn Fn(String) -> DataError,
) -> Result<(Vec<Message>, Vec<Message>)> {
    let messages = |key: &str, role: Role| -> Result<Vec<Message>> {
        match value.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(text)) => Ok(vec![Message { role, content: text.clone() }]),
            Some(Value::Array(list)) => parse_messages(key, list, bad),
            Some(other) => Err(bad(format!("`{key}` is {other}; expected a string or an array of messages"))),
        }
    };
    let (prompt, completion) = (messages("prompt", Role::User)?, messages("completion", Role::Assistant)?);
    match completion.last() {
        Some(m) if m.role == Role::Assistant => Ok((prompt, completion)),
        Some(_) => Err(bad("`completion` does not end with an assistant turn, the response it gives".into())),
        None => Err(bad(format!("missing field `completion` ({layout})"))),
    }
}

/// Two texts split where they first differ, into their common beginning and the two rests, a
/// space before the split going with the rests (TRL's `extract_prompt` on strings).
fn implicit_prompt<'a>(chosen: &'a str, rejected: &'a str) -> (&'a str, &'a str, &'a str) {
    let mut at = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map_or_else(|| chosen.len().min(rejected.len()), |((i, _), _)| i);
    if chosen[..at].ends_with(' ') {
        at -= 1;
    }
    (&chosen[..at], &chosen[at..], &rejected[at..])
}

fn read_tokens(file: &Path, dtype: TokenDtype) -> Result<Vec<Doc>> {
    if gzipped(file) {
        return Err(DataError::in_file(
            file,
            "a `tokens` file is memory-mapped, so it cannot be gzipped; decompress it",
        ));
    }
    let mut tokens = TokenFile::open(file, dtype)?;
    let mut ids = Vec::new();
    (0..tokens.docs())
        .map(|i| {
            tokens.read_doc(i, &mut ids)?;
            Ok(Doc::Tokens(ids.clone()))
        })
        .collect()
}

/// A pre-tokenized file with its checked document index: `X.bin` holds the ids back to back,
/// `X.idx` n_docs + 1 little-endian u64 token offsets. Documents are read one at a time, so
/// memory does not grow with the file.
pub struct TokenFile {
    path: PathBuf,
    file: std::io::BufReader<std::fs::File>,
    width: usize,
    offsets: Vec<u64>,
    bytes: Vec<u8>,
    /// Where the reader is in the file, so that reading in order never seeks.
    at: u64,
}

impl TokenFile {
    pub fn open(file: &Path, dtype: TokenDtype) -> Result<TokenFile> {
        let width = match dtype {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        };
        let io = |e: std::io::Error| DataError::in_file(file, e.to_string());
        let handle = std::fs::File::open(file).map_err(io)?;
        let len = handle.metadata().map_err(io)?.len();
        if len % width as u64 != 0 {
            return Err(DataError::in_file(file, format!("length {len} is not a multiple of {width} ({dtype})")));
        }
        let n_ids = len / width as u64;
        let index_path = file.with_extension("idx");
        let index = std::fs::read(&index_path).map_err(|e| DataError::in_file(&index_path, e.to_string()))?;
        if index.len() % 8 != 0 || index.len() < 16 {
            return Err(DataError::in_file(&index_path, "expected n_docs + 1 little-endian u64 offsets"));
        }
        let offsets: Vec<u64> =
            index.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        for (i, w) in offsets.windows(2).enumerate() {
            if w[0] > w[1] || w[1] > n_ids {
                return Err(DataError::in_file(
                    &index_path,
                    format!("document {i} spans tokens {}..{} of {n_ids}", w[0], w[1]),
                ));
            }
        }
        let file_path = file.to_path_buf();
        Ok(TokenFile {
            path: file_path,
            file: std::io::BufReader::new(handle),
            width,
            offsets,
            bytes: Vec::new(),
            at: 0,
        })
    }

    pub fn docs(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Read the ids of document `i` into `ids`; in order is fastest.
    pub fn read_doc(&mut self, i: usize, ids: &mut Vec<u32>) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let (start, end) = (self.offsets[i] * self.width as u64, self.offsets[i + 1] * self.width as u64);
        let io = |e: std::io::Error| DataError::in_file(&self.path, e.to_string());
        self.bytes.resize((end - start) as usize, 0);
        if start != self.at {
            self.file.seek(SeekFrom::Start(start)).map_err(io)?;
        }
        self.file.read_exact(&mut self.bytes).map_err(io)?;
        self.at = end;
        ids.clear();
        ids.extend(self.bytes.chunks_exact(self.width).map(|c| match c {
            [a, b] => u16::from_le_bytes([*a, *b]) as u32,
            _ => u32::from_le_bytes(c.try_into().expect("4 bytes")),
        }));
        Ok(())
    }
}
