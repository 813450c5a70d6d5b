//! The recipe's shared vocabulary: the fixed words its fields take (stage kinds, source
//! formats, precisions, ...), the ChatML special tokens, and how a checkpoint is stored. A leaf:
//! every table's module reads it, and it reads none of them.

use serde::Serialize;

/// A value the recipe spells as one of a fixed set of words.
pub trait Word: Sized {
    const WORDS: &'static [&'static str];
    fn from_word(w: &str) -> Option<Self>;
}

/// An enum spelled as a fixed set of words in the recipe.
macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $word),+ } }
            pub fn from_word(w: &str) -> Option<Self> { match w { $($word => Some($name::$variant),)+ _ => None } }
        }
        impl $crate::vocab::Word for $name {
            const WORDS: &'static [&'static str] = &[$($word),+];
            fn from_word(w: &str) -> Option<Self> { $name::from_word(w) }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
pub(crate) use words;

words!(StageKind { Pretrain = "pretrain", Sft = "sft", Dpo = "dpo", Distill = "distill", Merge = "merge" });
words!(SourceFormat {
    Text = "text",
    Jsonl = "jsonl",
    ChatJsonl = "chat-jsonl",
    PreferenceJsonl = "preference-jsonl",
    UnpairedPreferenceJsonl = "unpaired-preference-jsonl",
    Tokens = "tokens",
});
words!(OnError { Fail = "fail", Skip = "skip" });
words!(ChatTemplate {
    ChatMl = "chatml",
    Llama3 = "llama3",
    Llama31 = "llama3.1",
    Gemma = "gemma",
    Tokenizer = "tokenizer",
});
words!(TokenDtype { U16 = "u16", U32 = "u32" });
words!(Packing { Concat = "concat", BestFit = "best-fit", Pad = "pad" });
words!(LossOn { All = "all", Assistant = "assistant" });
words!(OnNonfinite { Stop = "stop", Skip = "skip" });
words!(Precision { F32 = "f32", Bf16Mixed = "bf16-mixed", F16Mixed = "f16-mixed", Bf16 = "bf16" });
words!(PeftMethod { Lora = "lora", Dora = "dora", Vera = "vera", TiedLora = "tied-lora" });
words!(LoraInit { Pissa = "pissa", Olora = "olora" });
words!(MergeMethod {
    Uniform = "uniform",
    Weighted = "weighted",
    Greedy = "greedy",
    TaskArithmetic = "task-arithmetic",
    Ties = "ties",
    DareTies = "dare-ties",
    DareLinear = "dare-linear",
    Slerp = "slerp",
});
impl MergeMethod {
    /// Whether it combines the inputs' differences from a `base` (task vectors).
    pub fn takes_base(self) -> bool {
        matches!(
            self,
            MergeMethod::TaskArithmetic | MergeMethod::Ties | MergeMethod::DareTies | MergeMethod::DareLinear
        )
    }

    /// Whether it trims each task vector to a `density` (TIES by magnitude, DARE at random).
    pub fn trims(self) -> bool {
        matches!(self, MergeMethod::Ties | MergeMethod::DareTies | MergeMethod::DareLinear)
    }
}

words!(InitKind { Stack = "stack" });
words!(AverageKind { Ema = "ema", Lawa = "lawa" });
words!(Keep { Tokens = "tokens", Batch = "batch" });
words!(AverageUse { Average = "average", Raw = "raw" });
words!(MuonScale { MatchRmsAdamw = "match-rms-adamw", Original = "original" });
words!(DistillLoss { ForwardKl = "forward-kl", ReverseKl = "reverse-kl", Jsd = "jsd" });
words!(PreferenceLoss { Sigmoid = "sigmoid", Ipo = "ipo", Hinge = "hinge", Simpo = "simpo", Orpo = "orpo", Kto = "kto" });

impl SourceFormat {
    /// Conversations, formatted with a chat template: `chat-jsonl` and the preference formats.
    pub fn is_chat(self) -> bool {
        self == SourceFormat::ChatJsonl || self.is_preference()
    }

    /// What a `dpo` stage learns from: pairs (`preference-jsonl`), or single responses marked
    /// desirable or not (`unpaired-preference-jsonl`, KTO's).
    pub fn is_preference(self) -> bool {
        matches!(self, SourceFormat::PreferenceJsonl | SourceFormat::UnpairedPreferenceJsonl)
    }
}

impl ChatTemplate {
    /// Every template, in the order `sample --chat` prefers them (Llama 3's plain form before
    /// its dated one, whose tokens are the same). The tokenizer's own comes last, so that a
    /// tokenizer that has both ChatML's tokens and a template of its own chats as it did
    /// before it was read.
    pub const ALL: [ChatTemplate; 5] = [
        ChatTemplate::ChatMl,
        ChatTemplate::Llama3,
        ChatTemplate::Llama31,
        ChatTemplate::Gemma,
        ChatTemplate::Tokenizer,
    ];

    /// The special tokens the template writes, which the tokenizer must have; the last ends
    /// a turn. ChatML's open and close each turn; Llama 3's start the conversation, surround
    /// each role's name and end each turn; Gemma's start the conversation, and open and close
    /// each turn. The tokenizer's own template names none: the tokenizer must have the
    /// template instead ([`TokenizerFacts::own_template`](crate::TokenizerFacts)).
    pub fn tokens(self) -> &'static [&'static str] {
        match self {
            ChatTemplate::Tokenizer => &[],
            ChatTemplate::ChatMl => &["<|im_start|>", "<|im_end|>"],
            ChatTemplate::Llama3 | ChatTemplate::Llama31 => {
                &["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
            }
            ChatTemplate::Gemma => &["<bos>", "<start_of_turn>", "<end_of_turn>"],
        }
    }
}

/// How a checkpoint is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointFormat {
    /// A Hugging Face model folder: `config.json`, `model.safetensors` (or shards listed in
    /// `model.safetensors.index.json`), usually `tokenizer.json`.
    HfDir,
    /// One `.safetensors` file with Hugging Face Llama tensor names; a `config.json` beside it
    /// is read when present.
    Safetensors,
    /// A llama.cpp `.gguf` file: dequantized on import, tokenizer in its metadata.
    Gguf,
}

impl OnNonfinite {
    /// The default, left out of the canonical form so that recipes written before the field
    /// existed keep their keys.
    pub fn is_stop(&self) -> bool {
        *self == OnNonfinite::Stop
    }
}
