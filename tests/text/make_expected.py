"""Expected MiniLM tokenizations of the tokenizer torture set.

What: tokenizes every text of tests/text/torture.txt (one text per line; lines are
split on "\\n" only, the file's final newline ends the last line) and of
tests/text/torture_extra.json (a JSON list: texts with newlines, CR, NUL and other
control characters, the empty string) with the HF `tokenizers` package, loading
models/text/minilm/tokenizer.json (all-MiniLM-L6-v2's, shipped in the repo).
Writes tests/text/torture_expected.json, a JSON list (one entry per line) of
    {source, text, ids, tokens, offsets, byte_offsets, ids_no_special}
ids/tokens/offsets include [CLS] and [SEP] (offsets [0,0]); offsets are
*character* (Unicode code point) offsets [start,end) as the Python binding returns
them; byte_offsets are the same spans in UTF-8 bytes (what the Rust crate returns).
No truncation and no padding: tokenizer.json itself carries truncation
max_length=128 and padding Fixed(128), which are switched off here (Rust loaders
must do the same, or set their own).

It also checks whether a tokenizer built from vocab.txt alone
(BertWordPieceTokenizer(vocab.txt, lowercase=True), i.e. BertNormalizer with
clean_text, handle_chinese_chars, strip_accents following lowercase) gives the
same ids, tokens and offsets on the whole set, and prints the differences.

Why: golden data for pomme's Rust tokenization (the `tokenizers` crate, or a
vocab.txt-only WordPiece implementation).

How:  python tests/text/make_expected.py      (needs tokenizers==0.23.3; run from anywhere)
"""
import json
from pathlib import Path

from tokenizers import BertWordPieceTokenizer, Tokenizer

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent.parent / "models" / "text" / "minilm"


def load_texts():
    """[(source, text)] for torture.txt then torture_extra.json."""
    raw = (HERE / "torture.txt").read_text(encoding="utf-8")
    assert raw.endswith("\n") and "\r" not in raw
    out = [(f"torture.txt:{i + 1}", t) for i, t in enumerate(raw[:-1].split("\n"))]
    extra = json.loads((HERE / "torture_extra.json").read_text(encoding="utf-8"))
    return out + [(f"torture_extra.json[{i}]", t) for i, t in enumerate(extra)]


def byte_spans(text, offsets):
    pos = [0]
    for ch in text:
        pos.append(pos[-1] + len(ch.encode("utf-8")))
    return [[pos[a], pos[b]] for a, b in offsets]


def main():
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    vocab_tok = BertWordPieceTokenizer(str(MODEL / "vocab.txt"), lowercase=True)
    entries, diffs = [], []
    for src, text in load_texts():
        e = tok.encode(text)
        plain = tok.encode(text, add_special_tokens=False)
        assert e.ids[0] == 101 and e.ids[-1] == 102 and e.ids[1:-1] == plain.ids, src
        offsets = [list(o) for o in e.offsets]
        entries.append({"source": src, "text": text, "ids": e.ids, "tokens": e.tokens, "offsets": offsets,
                        "byte_offsets": byte_spans(text, offsets), "ids_no_special": plain.ids})
        v = vocab_tok.encode(text)
        if (v.ids, v.tokens, v.offsets) != (e.ids, e.tokens, e.offsets):
            diffs.append((src, text, e.tokens, v.tokens, e.offsets, v.offsets))
    out = HERE / "torture_expected.json"
    with open(out, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in entries) + "\n]\n")
    n_tok = sum(len(x["ids"]) for x in entries)
    n_unk = sum(x["ids"].count(100) for x in entries)
    print(f"wrote {out}: {len(entries)} texts, {n_tok} tokens ({n_unk} [UNK]), longest {max(len(x['ids']) for x in entries)}")
    print(f"vocab.txt-only BertWordPieceTokenizer vs tokenizer.json: {len(diffs)} of {len(entries)} texts differ")
    for src, text, a, b, oa, ob in diffs:
        print(f"  {src} {text!r}\n    tokenizer.json: {a} {oa}\n    vocab.txt:      {b} {ob}")


if __name__ == "__main__":
    main()
