//! A tokenizer's own chat template (`template = "tokenizer"`): its Jinja rendered as
//! `transformers`' `apply_chat_template` renders it (blocks trimmed and left-stripped, loop
//! controls, Python's string methods, `raise_exception`), then tokenized whole with no special
//! tokens added, as `apply_chat_template(tokenize=True)` does. Its clock (`strftime_now`) is
//! fixed, so that a conversation always gives the same ids.
//!
//! A template is code, so which tokens are the assistant's is read off the text it writes:
//! each assistant reply is looked for, as given or trimmed, after the message before it, and
//! its span runs on over the special token that follows it (after whitespace), which ends the
//! turn: `<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, `<|end|>`. Those are the tokens
//! the hand-written templates mask, so the model learns to stop. A template that rewrites a
//! reply (Qwen3's drops the reasoning of earlier turns) cannot be read so, and is an error
//! naming the message.

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, Value};
use recipe_spec::OwnChatTemplate;

use crate::documents::{Message, Role};
use crate::error::{DataError, Result};

const NAME: &str = "chat_template";

/// A compiled template, with the special tokens that may end a turn.
pub(crate) struct OwnTemplate {
    pub(crate) source: OwnChatTemplate,
    /// Or why it does not parse: said when it is used, since a tokenizer's template may never be.
    env: std::result::Result<Environment<'static>, String>,
    /// The special tokens' strings and ids, longest first.
    specials: Vec<(String, u32)>,
}

impl OwnTemplate {
    pub(crate) fn compile(source: OwnChatTemplate, specials: impl Iterator<Item = (String, u32)>) -> Self {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", strftime_fixed);
        let env = match env.add_template_owned(NAME, generation_as_if(&source.jinja)) {
            Ok(()) => Ok(env),
            Err(e) => Err(format!("the tokenizer's chat template does not parse: {e:#}")),
        };
        let mut specials: Vec<(String, u32)> = specials.filter(|(s, _)| !s.is_empty()).collect();
        specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        OwnTemplate { source, env, specials }
    }

    /// The conversation as text, and with `prompt` the assistant's header after it.
    pub(crate) fn render(&self, messages: &[Message], prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from(BTreeMap::from([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let mut context: BTreeMap<&str, Value> =
            self.source.tokens.iter().map(|(k, v)| (k.as_str(), Value::from(v.as_str()))).collect();
        context.insert("messages", Value::from(messages));
        context.insert("add_generation_prompt", Value::from(prompt));
        let env = self.env.as_ref().map_err(|e| DataError::new(e.clone()))?;
        let template = env.get_template(NAME).expect("added at compile");
        template.render(context).map_err(|e| DataError::new(format!("the tokenizer's chat template: {e:#}")))
    }

    /// Byte spans of `text` (rendered from `messages`) that hold the assistant's turns: each
    /// reply and the special token that ends it.
    pub(crate) fn assistant_spans(&self, text: &str, messages: &[Message]) -> Result<Vec<(usize, usize)>> {
        let mut spans = Vec::new();
        let mut at = 0;
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            // After the message before it, so that a reply quoted in the question is not
            // taken for the reply.
            if let Some((_, end)) = i.checked_sub(1).and_then(|p| locate(text, at, &messages[p].content)) {
                at = end;
            }
            let (start, end) = locate(text, at, &m.content).ok_or_else(|| {
                DataError::new(format!(
                    "the tokenizer's chat template does not write message {} (the assistant's) as given, so its tokens cannot be told from the prompt's",
                    i + 1
                ))
            })?;
            let end = end + self.turn_end_after(&text[end..]).map_or(0, |(len, _)| len);
            spans.push((start, end));
            at = end;
        }
        Ok(spans)
    }

    /// The special token that starts `rest` after whitespace, as the byte length through it and
    /// its id.
    fn turn_end_after(&self, rest: &str) -> Option<(usize, u32)> {
        let trimmed = rest.trim_start();
        let skipped = rest.len() - trimmed.len();
        self.specials.iter().find(|(s, _)| trimmed.starts_with(s.as_str())).map(|(s, id)| (skipped + s.len(), *id))
    }

    /// The token that ends an assistant turn in this template, read off a rendered exchange.
    pub(crate) fn turn_end(&self) -> Option<u32> {
        const PROBE: &str = "Turn-end probe.";
        let messages = [
            Message { role: Role::User, content: "Hello.".into() },
            Message { role: Role::Assistant, content: PROBE.into() },
        ];
        let text = self.render(&messages, false).ok()?;
        let end = text.find(PROBE)? + PROBE.len();
        self.turn_end_after(&text[end..]).map(|(_, id)| id)
    }
}

/// `jinja` with `transformers`' `{% generation %}` … `{% endgeneration %}` (which mark the
/// assistant's tokens for `return_assistant_tokens_mask`, and minijinja does not know) as
/// `{% if true %}` … `{% endif %}`: the same output, whitespace control kept.
fn generation_as_if(jinja: &str) -> String {
    let mut out = String::with_capacity(jinja.len());
    let mut rest = jinja;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}").map(|end| end + 2) else { break };
        let tag = &rest[start..start + len];
        let inner = tag[2..len - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        match inner {
            "generation" => out.push_str(&tag.replacen("generation", "if true", 1)),
            "endgeneration" => out.push_str(&tag.replacen("endgeneration", "endif", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// `strftime_now(format)` for a clock fixed at 26 July 2024 (a Friday), the date Llama 3.1's
/// template writes when it has no clock: with a real one the same conversation would give
/// other ids on another day, under the same key.
fn strftime_fixed(format: String) -> std::result::Result<String, Error> {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        out.push_str(match chars.next() {
            Some('d' | 'e') => "26",
            Some('m') => "07",
            Some('y') => "24",
            Some('Y') => "2024",
            Some('b') => "Jul",
            Some('B') => "July",
            Some('a') => "Fri",
            Some('A') => "Friday",
            Some('j') => "208",
            Some('H' | 'M' | 'S') => "00",
            Some('%') => "%",
            other => {
                let what = other.map_or("a lone %".to_string(), |c| format!("%{c}"));
                return Err(Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {what} is not supported")));
            }
        });
    }
    Ok(out)
}

/// `needle` in `text` at or after byte `from`, as given or else trimmed, as a byte span.
fn locate(text: &str, from: usize, needle: &str) -> Option<(usize, usize)> {
    [needle, needle.trim()].into_iter().find_map(|n| text[from..].find(n).map(|i| (from + i, from + i + n.len())))
}
