//! Chat templates: a conversation as token ids, with the mask of what the model learns to
//! say. Every template writes each turn as its role's header, the content, and a token that
//! ends the turn; an assistant turn's content and that token are the masked part, so the
//! model learns to stop.
//!
//! ```text
//! chatml  <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n
//! llama3  <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>
//! llama3.1  <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user…  (then as llama3)
//! gemma   <bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n
//! ```
//!
//! Llama 3's and Gemma's trim each content, as their `tokenizer_config.json` templates do.
//! `llama3.1` is the template of Llama 3.1, 3.2 and 3.3 Instruct: a system turn always, its
//! knowledge cut-off and date before the conversation's own system prompt. The date is the one
//! those templates write when they are given none and cannot read the clock (3.1's always),
//! so that the same conversation always gives the same ids. Gemma has no system turn: a
//! first system message is written at the start of the first turn, and one later on is an
//! error, as in Gemma's template. `tokenizer` is the tokenizer's own Jinja ([`crate::jinja`]).

use recipe_spec::ChatTemplate;

use crate::documents::{Message, Role};
use crate::error::{DataError, Result};
use crate::jinja::OwnTemplate;
use crate::tokenizer::Tok;

/// A template's special tokens, looked up in a tokenizer.
enum Ids {
    ChatMl { start: u32, end: u32 },
    Llama3 { begin: u32, header_start: u32, header_end: u32, eot: u32, dated: bool },
    Gemma { bos: u32, start: u32, end: u32 },
}

fn ids(tok: &Tok, template: ChatTemplate) -> Result<Ids> {
    let ids = tok.template_ids(template).ok_or_else(|| {
        DataError::new(format!("the tokenizer lacks the {template} template's tokens {}", template.tokens().join(", ")))
    })?;
    Ok(match template {
        ChatTemplate::ChatMl => Ids::ChatMl { start: ids[0], end: ids[1] },
        ChatTemplate::Llama3 | ChatTemplate::Llama31 => Ids::Llama3 {
            begin: ids[0],
            header_start: ids[1],
            header_end: ids[2],
            eot: ids[3],
            dated: template == ChatTemplate::Llama31,
        },
        ChatTemplate::Gemma => Ids::Gemma { bos: ids[0], start: ids[1], end: ids[2] },
        ChatTemplate::Tokenizer => unreachable!("the tokenizer's own template is rendered, not assembled"),
    })
}

/// The tokenizer's own template, or an error saying it has none.
fn own_template(tok: &Tok) -> Result<&OwnTemplate> {
    tok.compiled_own_template().ok_or_else(|| DataError::new("the tokenizer has no chat template of its own"))
}

/// Token ids of a conversation in `template`, and for each token whether it belongs to an
/// assistant turn.
pub fn format_chat(tok: &Tok, template: ChatTemplate, messages: &[Message]) -> Result<(Vec<u32>, Vec<u8>)> {
    if template == ChatTemplate::Tokenizer {
        let own = own_template(tok)?;
        let text = own.render(messages, false)?;
        return tok.encode_marking(&text, &own.assistant_spans(&text, messages)?);
    }
    let ids = ids(tok, template)?;
    let (mut out, mut mask) = (Vec::new(), Vec::new());
    let mut push = |part: &[u32], bit: u8| {
        out.extend_from_slice(part);
        mask.extend(std::iter::repeat_n(bit, part.len()));
    };
    if let Ids::Llama3 { begin: first, .. } | Ids::Gemma { bos: first, .. } = ids {
        push(&[first], 0);
    }
    // Gemma writes a leading system prompt into the first turn; Llama 3.1 into a system turn
    // that it always writes.
    let (mut prefix, messages) = match (&ids, messages) {
        (Ids::Gemma { .. }, [system, rest @ ..]) if system.role == Role::System => {
            (format!("{}\n\n", system.content), rest)
        }
        (&Ids::Llama3 { header_start, header_end, eot, dated: true, .. }, _) => {
            let (system, rest) = match messages {
                [system, rest @ ..] if system.role == Role::System => (system.content.trim(), rest),
                _ => ("", messages),
            };
            push(&header(tok, header_start, header_end, Role::System)?, 0);
            push(&tok.encode(&format!("{LLAMA31_DATED}{system}"))?, 0);
            push(&[eot], 0);
            (String::new(), rest)
        }
        _ => (String::new(), messages),
    };
    for m in messages {
        let assistant = u8::from(m.role == Role::Assistant);
        match ids {
            Ids::ChatMl { start, end } => {
                push(&[start], 0);
                push(&tok.encode(&format!("{}\n", m.role.as_str()))?, 0);
                push(&tok.encode(&m.content)?, assistant);
                push(&[end], assistant);
                push(&tok.encode("\n")?, 0);
            }
            Ids::Llama3 { header_start, header_end, eot, .. } => {
                push(&header(tok, header_start, header_end, m.role)?, 0);
                push(&tok.encode(m.content.trim())?, assistant);
                push(&[eot], assistant);
            }
            Ids::Gemma { start, end, .. } => {
                if m.role == Role::System {
                    return Err(DataError::new(
                        "Gemma's chat template takes a system prompt only as the first message".to_string(),
                    ));
                }
                push(&gemma_header(tok, start, m.role)?, 0);
                push(&tok.encode(&(std::mem::take(&mut prefix) + m.content.trim()))?, assistant);
                push(&[end], assistant);
                push(&tok.encode("\n")?, 0);
            }
        }
    }
    Ok((out, mask))
}

/// What Llama 3.1's system turn starts with.
const LLAMA31_DATED: &str = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

/// `<start_of_turn>role\n`, the assistant's role named `model`.
fn gemma_header(tok: &Tok, start: u32, role: Role) -> Result<Vec<u32>> {
    let name = if role == Role::Assistant { "model" } else { role.as_str() };
    Ok([vec![start], tok.encode(&format!("{name}\n"))?].concat())
}

/// `<|start_header_id|>role<|end_header_id|>\n\n`.
fn header(tok: &Tok, start: u32, end: u32, role: Role) -> Result<Vec<u32>> {
    let mut ids = vec![start];
    ids.extend(tok.encode(role.as_str())?);
    ids.push(end);
    ids.extend(tok.encode("\n\n")?);
    Ok(ids)
}

/// The ids that prompt a chat model for its next assistant turn: the conversation so far,
/// then the assistant's header.
pub fn chat_prompt(tok: &Tok, template: ChatTemplate, messages: &[Message]) -> Result<Vec<u32>> {
    if template == ChatTemplate::Tokenizer {
        return tok.encode(&own_template(tok)?.render(messages, true)?);
    }
    let (mut out, _) = format_chat(tok, template, messages)?;
    match ids(tok, template)? {
        Ids::ChatMl { start, .. } => {
            out.push(start);
            out.extend(tok.encode("assistant\n")?);
        }
        Ids::Llama3 { header_start, header_end, .. } => {
            out.extend(header(tok, header_start, header_end, Role::Assistant)?)
        }
        Ids::Gemma { start, .. } => out.extend(gemma_header(tok, start, Role::Assistant)?),
    }
    Ok(out)
}

/// `template` as a `transformers` chat template (Jinja, for `tokenizer_config.json`'s
/// `chat_template`), rendering conversations as [`format_chat`] and [`chat_prompt`] do, so that
/// `apply_chat_template` on an exported model gives the ids it trained on. Gemma's is the text
/// part of Gemma 3's own; the tokenizer's own is itself (none when it has none).
pub fn jinja(tok: &Tok, template: ChatTemplate) -> Option<String> {
    Some(match template {
        ChatTemplate::Tokenizer => return tok.own_template().map(|own| own.jinja.clone()),
        ChatTemplate::ChatMl => concat!(
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        ),
        ChatTemplate::Llama3 => concat!(
            "{{ '<|begin_of_text|>' }}{% for message in messages %}",
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        ),
        // Llama 3.1's own without its tools, the date fixed as `format_chat` fixes it.
        ChatTemplate::Llama31 => concat!(
            "{{ '<|begin_of_text|>' }}{% if messages[0]['role'] == 'system' %}",
            "{% set system_message = messages[0]['content'] | trim %}{% set loop_messages = messages[1:] %}",
            "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}",
            "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' + system_message + '<|eot_id|>' }}",
            "{% for message in loop_messages %}",
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        ),
        ChatTemplate::Gemma => concat!(
            "{{ '<bos>' }}{% if messages[0]['role'] == 'system' %}",
            "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}",
            "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}",
            "{% for message in loop_messages %}{% if message['role'] == 'system' %}",
            "{{ raise_exception('Gemma takes a system prompt only as the first message') }}{% endif %}",
            "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}",
            "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}",
            "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
        ),
    }
    .to_string())
}
