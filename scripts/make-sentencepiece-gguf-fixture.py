"""A SentencePiece BPE tokenizer as llama.cpp stores one in GGUF (`tokenizer.ggml.model =
"llama"`, as for Llama 2, Mistral and TinyLlama), and the ids SentencePiece itself gives.

Trains a 1,200-piece BPE with byte fallback on the committed Moby-Dick, then writes its pieces,
scores and types as llama.cpp's `convert_hf_to_gguf.py` writes them from a `tokenizer.model`
(checked by hand: the converter's output carries the same three lists), with no tensors.

    pip install sentencepiece gguf
    python scripts/make-sentencepiece-gguf-fixture.py crates/recipe-run/tests/fixtures/sentencepiece-gguf
"""

import glob
import json
import os
import sys
import tempfile

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
here = os.path.dirname(os.path.abspath(__file__))
chapters = sorted(glob.glob(os.path.join(here, "..", "data", "moby-dick", "chapter_*.txt")))
with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        for path in chapters:
            f.write(open(path).read())
    prefix = os.path.join(tmp, "tok")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=1200, model_type="bpe", byte_fallback=True,
        split_digits=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        user_defined_symbols=["<|sep|>"], num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    proto = model_pb2.ModelProto()
    proto.ParseFromString(open(prefix + ".model", "rb").read())

# llama.cpp's token types, by SentencePiece's piece types.
types = {
    model_pb2.ModelProto.SentencePiece.NORMAL: 1,
    model_pb2.ModelProto.SentencePiece.UNKNOWN: 2,
    model_pb2.ModelProto.SentencePiece.CONTROL: 3,
    model_pb2.ModelProto.SentencePiece.USER_DEFINED: 4,
    model_pb2.ModelProto.SentencePiece.UNUSED: 5,
    model_pb2.ModelProto.SentencePiece.BYTE: 6,
}
writer = gguf.GGUFWriter(os.path.join(out, "tokenizer.gguf"), "llama")
writer.add_tokenizer_model("llama")
writer.add_tokenizer_pre("default")
writer.add_token_list([p.piece for p in proto.pieces])
writer.add_token_scores([p.score for p in proto.pieces])
writer.add_token_types([types[p.type] for p in proto.pieces])
writer.add_bos_token_id(1)
writer.add_eos_token_id(2)
writer.add_unk_token_id(0)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()

texts = [
    "Call me Ishmael.",
    "  Some years ago—never mind how long precisely—",
    "naïve café 日本語 12345",
    "Hello\nworld\t tabs  and   spaces",
    "whale-ship Pequod's",
    "trailing space ",
]
expected = [{"text": t, "ids": sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in texts]
# Around a user-defined piece llama.cpp tokenizes each stretch of text on its own, with its
# own leading `▁` (SentencePiece would not put one before "b"); checked by hand against
# llama-cpp-python 0.3.36 (`Llama(vocab_only=True).tokenize(..., special=True)`), which also
# gives the ids above for every other text.
sep = sp.piece_to_id("<|sep|>")
framed = sp.encode("a") + [sep] + sp.encode("b")
expected.append({"text": "a<|sep|>b", "ids": framed, "decoded": " a<|sep|> b"[1:]})
with open(os.path.join(out, "expected.json"), "w") as f:
    f.write("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in expected) + "\n]\n")
