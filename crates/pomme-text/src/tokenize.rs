//! Tokenization with Hugging Face's `tokenizers`: a `tokenizer.json` as the
//! model ships it, or a BERT WordPiece `vocab.txt` with the same pipeline
//! Hugging Face's `BertTokenizerFast` builds (clean text, CJK characters
//! split, lowercase and accents stripped when uncased, WordPiece with
//! `[UNK]` past 100 characters, `[CLS] … [SEP]`).
//!
//! Truncation is pomme's, not the tokenizer file's: texts are encoded
//! without special tokens, cut to the model's limit (right, left, or
//! refused), then given their special tokens, so a limit always counts them.

use crate::config::Truncation;
use pomme_core::{Error, Result};
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Encoding, PostProcessor, Tokenizer, TruncationDirection};

/// One text (or pair), tokenized and truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Tokens cut off by truncation.
    pub truncated: usize,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A token as TEI's `/tokenize` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub special: bool,
    /// Byte offsets into the text (`None` for special tokens).
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// A model's tokenizer.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The id padding rows use.
    pub pad_id: u32,
    /// Special tokens a single text / a pair gets.
    specials: [usize; 2],
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidModelFormat(pomme_core::one_line(format!("{what}: {e}")))
}

impl TextTokenizer {
    /// Reads `tokenizer.json` (Hugging Face format) or a WordPiece `vocab.txt`
    /// (any other file name is read as a vocabulary, one token per line).
    pub fn from_file(path: &Path, lowercase: bool) -> Result<TextTokenizer> {
        let shown = path.display();
        if !path.is_file() {
            return Err(Error::InvalidModelFormat(format!(
                "tokenizer file {shown} does not exist"
            )));
        }
        let mut inner = if path.extension().is_some_and(|e| e == "json") {
            Tokenizer::from_file(path).map_err(|e| tk_err(&format!("cannot read {shown}"), e))?
        } else {
            Self::bert_wordpiece(path, lowercase)?
        };
        // pomme pads and truncates itself (buckets, its own limit).
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tk_err("tokenizer", e))?;
        let pad_id = ["[PAD]", "<pad>", "<|padding|>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        let specials = match inner.get_post_processor() {
            Some(p) => [p.added_tokens(false), p.added_tokens(true)],
            None => [0, 0],
        };
        Ok(TextTokenizer {
            inner,
            pad_id,
            specials,
        })
    }

    fn bert_wordpiece(path: &Path, lowercase: bool) -> Result<Tokenizer> {
        let shown = path.display();
        let vocab = WordPiece::read_file(&path.to_string_lossy())
            .map_err(|e| tk_err(&format!("cannot read vocabulary {shown}"), e))?;
        let id = |t: &str| {
            vocab.get(t).copied().ok_or_else(|| {
                Error::InvalidModelFormat(format!("vocabulary {shown} has no {t} token"))
            })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        id("[UNK]")?;
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tk_err(&format!("vocabulary {shown}"), e))?;
        let mut t = Tokenizer::new(model);
        t.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .map_err(|e| tk_err("tokenizer", e))?;
        t.with_pre_tokenizer(Some(BertPreTokenizer));
        t.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        t.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        // As Hugging Face's BertWordPieceTokenizer: the special tokens written
        // in a text are those tokens, not words in brackets.
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|s| t.token_to_id(s).is_some())
            .map(|s| AddedToken::from(*s, true))
            .collect();
        t.add_special_tokens(specials)
            .map_err(|e| tk_err("tokenizer special tokens", e))?;
        Ok(t)
    }

    fn raw(&self, text: &str) -> Result<Encoding> {
        self.inner.encode(text, false).map_err(|e| {
            Error::invalid_input(pomme_core::one_line(format!("cannot tokenize: {e}")))
        })
    }

    /// Tokens (special ones included) of `text` before truncation.
    pub fn count(&self, text: &str) -> Result<usize> {
        Ok(self.raw(text)?.len() + self.specials[0])
    }

    /// Encodes one text, or a pair (query, passage) for a cross-encoder,
    /// to at most `max_len` tokens special tokens included. With
    /// [`Truncation::Error`] a longer input is refused naming both counts.
    pub fn encode(
        &self,
        text: &str,
        pair: Option<&str>,
        max_len: usize,
        truncation: Truncation,
    ) -> Result<Encoded> {
        let mut a = self.raw(text)?;
        let mut b = pair.map(|p| self.raw(p)).transpose()?;
        let specials = self.specials[usize::from(b.is_some())];
        let total = a.len() + b.as_ref().map_or(0, Encoding::len) + specials;
        let budget = max_len.saturating_sub(specials);
        let mut truncated = 0;
        if total > max_len {
            let direction = match truncation {
                Truncation::Error => {
                    return Err(Error::invalid_input(format!(
                        "input of {total} tokens is longer than this model's limit of {max_len} (truncation = \"error\"; send shorter text or ask for truncation)"
                    )));
                }
                Truncation::Right => TruncationDirection::Right,
                Truncation::Left => TruncationDirection::Left,
            };
            truncated = total - max_len;
            match &mut b {
                None => a.truncate(budget, 0, direction),
                Some(b) => {
                    // Longest first, as Hugging Face's default pair strategy.
                    let (mut la, mut lb) = (a.len(), b.len());
                    while la + lb > budget {
                        if la >= lb { la -= 1 } else { lb -= 1 }
                    }
                    a.truncate(la, 0, direction);
                    b.truncate(lb, 0, direction);
                }
            }
        }
        let e = self
            .inner
            .post_process(a, b, true)
            .map_err(|e| Error::Internal(format!("tokenizer post-processing: {e}")))?;
        Ok(Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            truncated,
        })
    }

    /// The tokens of `text` with their byte offsets (TEI's `/tokenize`).
    pub fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>> {
        let e = self.inner.encode(text, add_special_tokens).map_err(|e| {
            Error::invalid_input(pomme_core::one_line(format!("cannot tokenize: {e}")))
        })?;
        Ok(e.get_ids()
            .iter()
            .zip(e.get_tokens())
            .zip(e.get_offsets())
            .zip(e.get_special_tokens_mask())
            .map(|(((&id, tok), &(start, stop)), &special)| {
                let special = special == 1;
                let piece = (!special).then(|| text.get(start..stop)).flatten();
                Token {
                    id,
                    text: piece.map_or_else(|| tok.clone(), str::to_string),
                    special,
                    start: (!special).then_some(start),
                    stop: (!special).then_some(stop),
                }
            })
            .collect())
    }

    /// Token ids back to text (TEI's `/decode`).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::invalid_input(pomme_core::one_line(format!("cannot decode: {e}"))))
    }

    /// Vocabulary size (special tokens included): the bound token ids are checked against.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repo(p: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(p)
    }

    fn minilm(file: &str) -> TextTokenizer {
        TextTokenizer::from_file(&repo(&format!("models/text/minilm/{file}")), true).unwrap()
    }

    #[test]
    fn vocab_and_tokenizer_json_agree_on_a_sentence() {
        let v = minilm("vocab.txt");
        let j = minilm("tokenizer.json");
        for t in [
            "The quick brown fox jumps over the lazy dog.",
            "Café naïve 東京 🙂",
        ] {
            let a = v.encode(t, None, 512, Truncation::Right).unwrap();
            let b = j.encode(t, None, 512, Truncation::Right).unwrap();
            assert_eq!(a, b, "{t}");
            assert_eq!(a.ids[0], 101);
            assert_eq!(*a.ids.last().unwrap(), 102);
        }
        assert_eq!(v.pad_id, 0);
    }

    #[test]
    fn truncation_keeps_special_tokens_and_counts_what_it_cut() {
        let t = minilm("vocab.txt");
        let text = "one two three four five six seven eight";
        let full = t.encode(text, None, 512, Truncation::Right).unwrap();
        assert_eq!(full.len(), 10);
        let r = t.encode(text, None, 5, Truncation::Right).unwrap();
        assert_eq!(r.ids, [&full.ids[..4], &[102]].concat());
        assert_eq!(r.truncated, 5);
        let l = t.encode(text, None, 5, Truncation::Left).unwrap();
        assert_eq!(l.ids, [&[101][..], &full.ids[6..]].concat());
        let e = t.encode(text, None, 5, Truncation::Error).unwrap_err();
        assert!(e.message().contains("10 tokens"), "{}", e.message());
        assert_eq!(t.count(text).unwrap(), 10);
    }

    #[test]
    fn pairs_get_segment_ids_and_longest_first_truncation() {
        let t = minilm("vocab.txt");
        let e = t
            .encode(
                "what is a fox",
                Some("a fox is an animal that runs"),
                512,
                Truncation::Right,
            )
            .unwrap();
        let seps: Vec<usize> = (0..e.len()).filter(|&i| e.ids[i] == 102).collect();
        assert_eq!(seps.len(), 2);
        assert!(e.type_ids[..=seps[0]].iter().all(|&x| x == 0));
        assert!(e.type_ids[seps[0] + 1..].iter().all(|&x| x == 1));
        let short = t
            .encode(
                "what is a fox",
                Some("a fox is an animal that runs"),
                10,
                Truncation::Right,
            )
            .unwrap();
        assert_eq!(short.len(), 10);
    }

    #[test]
    fn tokens_report_offsets_into_the_text() {
        let t = minilm("tokenizer.json");
        let toks = t.tokens("Hello, wörld", true).unwrap();
        assert!(toks[0].special && toks[0].text == "[CLS]" && toks[0].start.is_none());
        assert_eq!(toks[1].text, "Hello");
        assert_eq!((toks[1].start, toks[1].stop), (Some(0), Some(5)));
        let last_real = &toks[toks.len() - 2];
        assert_eq!(
            &"Hello, wörld"[last_real.start.unwrap()..last_real.stop.unwrap()],
            last_real.text
        );
        assert_eq!(t.decode(&[101, 7592, 102], true).unwrap(), "hello");
    }

    #[test]
    fn missing_or_bad_files_are_named() {
        let e =
            TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"), true).unwrap_err();
        assert!(e.message().contains("does not exist"));
        let dir = std::env::temp_dir().join(format!("pomme-text-tk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("tokenizer.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = TextTokenizer::from_file(&bad, true).unwrap_err();
        assert!(e.message().contains("cannot read"), "{}", e.message());
        let vocab = dir.join("vocab.txt");
        std::fs::write(&vocab, "a\nb\n").unwrap();
        let e = TextTokenizer::from_file(&vocab, true).unwrap_err();
        assert!(e.message().contains("[CLS]"), "{}", e.message());
    }
}
