//! Text models on a real engine (tract): tokenization equal to Hugging Face's
//! on the torture set, the tiny fixtures' outputs equal to onnxruntime's
//! reference whatever the batch and bucket a text lands in, and MiniLM's
//! embeddings equal to sentence-transformers' definition (shared models).

use pomme_core::{Backend, LoadedModel, Tensor};
use pomme_test_support::fixtures::{models_dir, repo_models, workspace_root};
use pomme_text::pool::cosine_distance;
use pomme_text::{TextConfig, TextModel, TextTokenizer, Truncation};
use pomme_tract::TractBackend;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tokenizer(file: &str) -> Arc<TextTokenizer> {
    Arc::new(TextTokenizer::from_file(&repo_models().join("text/minilm").join(file), true).unwrap())
}

#[test]
fn tokenization_equals_hugging_face_on_the_torture_set() {
    let expected = json(&workspace_root().join("tests/text/torture_expected.json"));
    let cases = expected.as_array().unwrap();
    assert!(cases.len() > 150);
    for file in ["tokenizer.json", "vocab.txt"] {
        let t = tokenizer(file);
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let e = t.encode(text, None, usize::MAX, Truncation::Right).unwrap();
            assert_eq!(e.ids, u32s(&case["ids"]), "{file}: {text:?}");
            let toks = t.tokens(text, true).unwrap();
            let offsets = case["byte_offsets"].as_array().unwrap();
            for (tok, off) in toks.iter().zip(offsets) {
                if !tok.special {
                    let want = (
                        off[0].as_u64().unwrap() as usize,
                        off[1].as_u64().unwrap() as usize,
                    );
                    assert_eq!(
                        (tok.start.unwrap(), tok.stop.unwrap()),
                        want,
                        "{file}: {text:?}"
                    );
                }
            }
        }
    }
}

fn load(file: &str) -> Arc<dyn LoadedModel> {
    let b = TractBackend::new();
    let a = TractBackend::artifact_for_path(repo_models().join("text").join(file)).unwrap();
    b.load(&a, &Default::default()).unwrap()
}

fn strings(texts: &[&str]) -> Tensor {
    Tensor::from_strings(
        vec![texts.len()],
        texts
            .iter()
            .map(|t| bytes::Bytes::from(t.to_string()))
            .collect(),
    )
    .unwrap()
}

fn cfg(toml_text: &str) -> TextConfig {
    toml::from_str(toml_text).unwrap()
}

/// Runs `texts` through a fresh session of `m` (as one runtime batch).
fn run(m: &TextModel, inputs: Vec<Tensor>) -> Vec<Tensor> {
    m.check_request(&inputs).unwrap();
    m.session().unwrap().run(inputs).unwrap()
}

#[test]
fn tiny_embedder_matches_the_reference_in_any_batch_and_bucket() {
    let r = json(&repo_models().join("text/tiny_reference.json"));
    let cases = r["texts"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for config in [
        "seq_buckets = [16, 32, 64]\nmax_batch_tokens = 64",
        "seq_buckets = [64]",
        "",
        "seq_buckets = [8, 16, 32, 64]\nmax_batch_tokens = 64",
    ] {
        let m = TextModel::new(
            load("tiny_embed.onnx"),
            cfg(config),
            tokenizer("tokenizer.json"),
            None,
        )
        .unwrap();
        // Alone, and all together (mixed lengths in one batch).
        let mut batches: Vec<Vec<usize>> = (0..texts.len()).map(|i| vec![i]).collect();
        batches.push((0..texts.len()).rev().collect());
        for b in batches {
            let sel: Vec<&str> = b.iter().map(|&i| texts[i]).collect();
            let out = run(&m, vec![strings(&sel)]);
            let names: Vec<&str> = m
                .signature()
                .outputs
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(
                names,
                ["embedding", "pooled", "token_count", "token_embeddings"]
            );
            let emb = out[0].to_vec::<f32>().unwrap();
            let counts = out[2].to_vec::<i64>().unwrap();
            let tokens = out[3].to_vec::<f32>().unwrap();
            let longest = out[3].shape()[1];
            for (row, &i) in b.iter().enumerate() {
                let want = f32s(&cases[i]["tiny_embed"]["embedding"]);
                let got = &emb[row * 16..(row + 1) * 16];
                let d = cosine_distance(got, &want);
                assert!(
                    d < 1e-6,
                    "{config:?} text {i} in {b:?}: cosine distance {d}"
                );
                let hidden = cases[i]["tiny_embed"]["last_hidden_state"]
                    .as_array()
                    .unwrap();
                assert_eq!(counts[row] as usize, hidden.len());
                for (t, h) in hidden.iter().enumerate() {
                    let at = (row * longest + t) * 16;
                    for (x, y) in tokens[at..at + 16].iter().zip(f32s(h)) {
                        assert!((x - y).abs() < 1e-5, "{config:?} token {t} of text {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn tiny_classifier_and_reranker_match_the_reference() {
    let r = json(&repo_models().join("text/tiny_reference.json"));
    let labels: Vec<String> = (0..3)
        .map(|i| r["labels"][i.to_string()].as_str().unwrap().to_string())
        .collect();
    let m = TextModel::new(
        load("tiny_classifier.onnx"),
        cfg("task = \"classify\"\nseq_buckets = [32, 64]"),
        tokenizer("vocab.txt"),
        Some(labels.clone()),
    )
    .unwrap();
    assert_eq!(m.signature().outputs[0].labels.as_ref(), Some(&labels));
    let cases = r["texts"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let out = run(&m, vec![strings(&texts)]);
    let logits = out[0].to_vec::<f32>().unwrap();
    for (i, c) in cases.iter().enumerate() {
        for (x, y) in logits[i * 3..i * 3 + 3]
            .iter()
            .zip(f32s(&c["tiny_classifier"]["logits"]))
        {
            assert!((x - y).abs() < 1e-5, "classifier text {i}: {x} vs {y}");
        }
    }
    let m = TextModel::new(
        load("tiny_reranker.onnx"),
        cfg("task = \"rerank\""),
        tokenizer("tokenizer.json"),
        None,
    )
    .unwrap();
    let pairs = r["pairs"].as_array().unwrap();
    let q: Vec<&str> = pairs.iter().map(|p| p["query"].as_str().unwrap()).collect();
    let p: Vec<&str> = pairs
        .iter()
        .map(|p| p["passage"].as_str().unwrap())
        .collect();
    let out = run(&m, vec![strings(&q), strings(&p)]);
    let scores = out[0].to_vec::<f32>().unwrap();
    for (i, c) in pairs.iter().enumerate() {
        let want = f32s(&c["tiny_reranker"]["logits"])[0];
        assert!(
            (scores[i] - want).abs() < 1e-5,
            "pair {i}: {} vs {want}",
            scores[i]
        );
    }
}

#[test]
fn bad_texts_and_models_get_one_line_errors() {
    let m = TextModel::new(
        load("tiny_embed.onnx"),
        cfg("seq_buckets = [16]\ntruncation = \"error\""),
        tokenizer("vocab.txt"),
        None,
    )
    .unwrap();
    let long = "word ".repeat(40);
    let e = m.check_request(&[strings(&["ok", &long])]).unwrap_err();
    assert!(
        e.message().contains("text 1") && e.message().contains("limit of 16"),
        "{}",
        e.message()
    );
    let bad = Tensor::from_strings(vec![1], vec![bytes::Bytes::from_static(b"\xff\xfe")]).unwrap();
    let e = m.check_request(&[bad]).unwrap_err();
    assert!(e.message().contains("not UTF-8"), "{}", e.message());
    let e = m.check_request(&[strings(&[])]).unwrap_err();
    assert!(e.message().contains("no texts"), "{}", e.message());
    // A classifier task on an encoder without logits.
    let e = TextModel::new(
        load("tiny_embed.onnx"),
        cfg("task = \"classify\""),
        tokenizer("vocab.txt"),
        None,
    )
    .unwrap_err();
    assert!(e.message().contains("logits"), "{}", e.message());
    let e = TextModel::new(
        load("tiny_embed.onnx"),
        cfg("pooling = \"model\""),
        tokenizer("vocab.txt"),
        None,
    )
    .unwrap_err();
    assert!(
        e.message().contains("sentence_embedding"),
        "{}",
        e.message()
    );
}

#[test]
fn minilm_embeddings_equal_sentence_transformers_in_any_bucket() {
    let Some(dir) = models_dir("minilm_embeddings_equal_sentence_transformers_in_any_bucket")
    else {
        return;
    };
    let r = json(&workspace_root().join("tests/text/reference_embeddings.json"));
    let cases = r["texts"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let b = TractBackend::new();
    let a = TractBackend::artifact_for_path(dir.join("minilm_l6.onnx")).unwrap();
    let inner: Arc<dyn LoadedModel> = b.load(&a, &Default::default()).unwrap();
    for config in [
        "seq_buckets = [16, 32, 64, 128, 256]\nmax_batch_tokens = 1024",
        "pooling = \"model\"\nmax_length = 256",
    ] {
        let m = TextModel::new(inner.clone(), cfg(config), tokenizer("vocab.txt"), None).unwrap();
        let out = run(&m, vec![strings(&texts)]);
        let emb = out[0].to_vec::<f32>().unwrap();
        for (i, c) in cases.iter().enumerate() {
            let want = f32s(&c["embedding"]);
            let d = cosine_distance(&emb[i * 384..(i + 1) * 384], &want);
            assert!(d < 1e-5, "{config:?}: text {i} cosine distance {d}");
        }
    }
}
