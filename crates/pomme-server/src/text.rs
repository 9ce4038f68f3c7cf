//! Text routes beside KServe v2 on the HTTP port: OpenAI's
//! `POST /v1/embeddings` and `GET /v1/models`, and text-embeddings-inference's
//! `POST /embed`, `/embed_all`, `/tokenize`, `/decode`, `/rerank`, `/predict`.
//!
//! A text model (`[text]` in its `config.toml`) is served by the runtime as
//! text in, vectors out (`pomme_text::TextModel`); these handlers only turn
//! each API's JSON into requests for it — split at the model's
//! `max_batch_size`, sent concurrently, so the runtime's batcher sees them —
//! and shape the answer. Many text models share one process: OpenAI names
//! the model in `model`; TEI's requests may (`"model"`, a pomme extension),
//! and may leave it out when one text model is served.
//!
//! Per-request truncation (TEI's `truncate` / `truncation_direction`) cuts the
//! text at a token's byte offset before it is sent, so the model's own
//! setting (`[text] truncation`) applies only when a request says nothing.

use crate::service::Shared;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pomme_core::{Error, ErrorKind, Result, Tensor};
use pomme_runtime::InferRequest;
use pomme_text::{Task, TextAdapter, Truncation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

/// The text routes (merged into the HTTP application).
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/models", get(openai_models))
        .route("/embed", post(tei_embed))
        .route("/embed_all", post(tei_embed_all))
        .route("/tokenize", post(tei_tokenize))
        .route("/decode", post(tei_decode))
        .route("/rerank", post(tei_rerank))
        .route("/predict", post(tei_predict))
}

/// Which API family shapes an error body.
#[derive(Clone, Copy)]
enum Api {
    OpenAi,
    Tei,
}

fn status(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// OpenAI: `{"error": {"message", "type", "param", "code"}}` with pomme's
/// one status table; TEI: `{"error", "error_type"}` with TEI's statuses.
fn error(api: Api, e: Error) -> Response {
    let msg = e.client_message();
    match api {
        Api::OpenAi => {
            let st = status(&e);
            let body = json!({"error": {
                "message": msg,
                "type": if st.is_client_error() { "invalid_request_error" } else { "server_error" },
                "param": Value::Null,
                "code": Value::Null,
            }});
            (st, axum::Json(body)).into_response()
        }
        Api::Tei => {
            let (st, kind) = tei_status(&e);
            (st, axum::Json(json!({"error": msg, "error_type": kind}))).into_response()
        }
    }
}

/// Start of the message of a body that does not deserialize ([`parse`]).
const BAD_BODY: &str = "bad request body";
/// Start of the message of a request with nothing to embed ([`empty_input`]).
const EMPTY: &str = "empty input";

/// The refusal of a request with no text, or an empty one.
fn empty_input(what: impl std::fmt::Display) -> Error {
    Error::invalid_input(format!("{EMPTY}: {what}"))
}

/// TEI's own status table (its clients read it): validation errors (input
/// too long, too many inputs, wrong task) 413, empty input 400, a body that
/// does not deserialize 422 (axum's JSON rejection in TEI), overload 429,
/// unhealthy 503, engine failures 424. A model name pomme does not serve
/// (TEI serves one model) stays 404.
fn tei_status(e: &Error) -> (StatusCode, &'static str) {
    let code = |c: u16| StatusCode::from_u16(c).expect("valid status");
    let msg = e.message();
    match e.kind() {
        ErrorKind::ResourceLimit => (code(429), "Overloaded"),
        ErrorKind::Unavailable => (code(503), "Unhealthy"),
        ErrorKind::ModelNotFound => (code(404), "Validation"),
        k if (400..500).contains(&k.mapping().0) => {
            if msg.starts_with(BAD_BODY) {
                (code(422), "Validation")
            } else if msg.starts_with(EMPTY) {
                (code(400), "Empty")
            } else {
                (code(413), "Validation")
            }
        }
        _ => (code(424), "Backend"),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::invalid_input(format!("{BAD_BODY}: {e}")))
}

/// One string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The text model a request names, or the only one served.
fn resolve(s: &Shared, model: Option<&str>) -> Result<(String, Arc<TextAdapter>)> {
    if let Some(name) = model {
        return match s.text_model(name) {
            Some(a) => Ok((name.to_string(), a)),
            None if s.runtime.model(name, None).is_ok() => Err(Error::invalid_input(format!(
                "model '{name}' is not a text model (its config.toml has no [text] section)"
            ))),
            None => Err(Error::ModelNotFound(format!(
                "text model '{name}' is not served"
            ))),
        };
    }
    let names = s.text_models();
    match names.as_slice() {
        [one] => {
            let a = s.text_model(one).expect("listed");
            Ok((one.clone(), a))
        }
        [] => Err(Error::ModelNotFound("no text model is served".into())),
        many => Err(Error::invalid_input(format!(
            "several text models are served ({}): name one with \"model\"",
            many.join(", ")
        ))),
    }
}

fn strings(v: &[String]) -> Result<Tensor> {
    Tensor::from_strings(
        vec![v.len()],
        v.iter().map(|s| Bytes::from(s.clone())).collect(),
    )
}

/// Runs `texts` (and `pairs` for a reranker) through a text model, in
/// chunks of its `max_batch_size` sent concurrently; returns the named
/// outputs per text, concatenated in order.
async fn run(
    s: &Shared,
    model: &str,
    texts: Vec<String>,
    pairs: Option<Vec<String>>,
    outputs: &[&str],
) -> Result<Vec<Tensor>> {
    if texts.is_empty() {
        return Err(empty_input("no texts"));
    }
    let chunk = s
        .runtime
        .model(model, None)
        .map(|v| v.max_batch_size)
        .unwrap_or(0);
    // Without a max_batch_size a request may hold any number of rows.
    let chunk = if chunk == 0 { texts.len() } else { chunk };
    let jobs = texts.chunks(chunk).enumerate().map(|(i, part)| {
        let mut inputs = vec![("text".to_string(), strings(part))];
        if let Some(p) = &pairs {
            inputs.push((
                "text_pair".to_string(),
                strings(&p[i * chunk..i * chunk + part.len()]),
            ));
        }
        async move {
            let inputs = inputs
                .into_iter()
                .map(|(n, t)| t.map(|t| (n, t)))
                .collect::<Result<Vec<_>>>()?;
            let mut req = InferRequest::new(model, inputs);
            req.outputs = Some(outputs.iter().map(|s| s.to_string()).collect());
            s.infer_request(req).await
        }
    });
    let answers = futures::future::try_join_all(jobs).await?;
    outputs
        .iter()
        .map(|name| {
            let parts: Vec<&Tensor> = answers
                .iter()
                .map(|r| {
                    r.output(name)
                        .ok_or_else(|| Error::Internal(format!("text model returned no '{name}'")))
                })
                .collect::<Result<_>>()?;
            concat_ragged(&parts)
        })
        .collect()
}

/// Concatenates along the first axis, padding a middle axis (token
/// states of chunks with different longest texts) with zeros.
fn concat_ragged(parts: &[&Tensor]) -> Result<Tensor> {
    if parts.len() == 1
        || parts
            .iter()
            .all(|p| p.shape()[1..] == parts[0].shape()[1..])
    {
        return Tensor::concat_rows(parts);
    }
    let (mid, d) = (
        parts.iter().map(|p| p.shape()[1]).max().unwrap_or(0),
        parts[0].shape()[2],
    );
    let rows: usize = parts.iter().map(|p| p.shape()[0]).sum();
    let mut out = vec![0f32; rows * mid * d];
    let mut r0 = 0;
    for p in parts {
        let (n, m) = (p.shape()[0], p.shape()[1]);
        let v = p.to_vec::<f32>()?;
        for r in 0..n {
            out[((r0 + r) * mid) * d..((r0 + r) * mid + m) * d]
                .copy_from_slice(&v[r * m * d..(r + 1) * m * d]);
        }
        r0 += n;
    }
    Tensor::from_vec(vec![rows, mid, d], out)
}

/// Rows of a `[n, k]` float tensor.
fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let k = t.shape().get(1).copied().unwrap_or(1).max(1);
    Ok(t.to_vec::<f32>()?.chunks(k).map(<[f32]>::to_vec).collect())
}

fn task_name(t: Task) -> &'static str {
    match t {
        Task::Embed => "embed",
        Task::Classify => "classify",
        Task::Rerank => "rerank",
    }
}

/// [`resolve`] for a route that needs models of one task.
fn resolve_for(
    s: &Shared,
    model: Option<&str>,
    want: Task,
    route: &str,
) -> Result<(String, Arc<TextAdapter>)> {
    let (name, a) = resolve(s, model)?;
    check_task(&name, &a, want, route)?;
    Ok((name, a))
}

fn check_task(name: &str, a: &TextAdapter, want: Task, route: &str) -> Result<()> {
    let have = a.config().task;
    if have == want {
        return Ok(());
    }
    Err(Error::invalid_input(format!(
        "model '{name}' has task = \"{}\"; {route} needs task = \"{}\"",
        task_name(have),
        task_name(want)
    )))
}

/// TEI's truncation fields applied to `texts`: `truncate: false` (and a
/// model configured with `truncation = "error"`) refuses over-long input,
/// `true` cuts it at a token boundary in `direction`; unsaid, the text goes
/// as it is and the model's own `truncation` applies (nothing tokenized here).
fn truncate(
    a: &TextAdapter,
    texts: Vec<String>,
    truncate_it: Option<bool>,
    direction: Direction,
) -> Result<Vec<String>> {
    let refuse = match a.config().truncation {
        Truncation::Error => Some(false),
        _ => None,
    };
    let Some(cut_it) = truncate_it.or(refuse) else {
        return Ok(texts);
    };
    let (tk, max_len) = (a.tokenizer(), a.config().max_length());
    let mut out = Vec::with_capacity(texts.len());
    for (i, t) in texts.into_iter().enumerate() {
        let n = tk.count(&t)?;
        if n <= max_len {
            out.push(t);
            continue;
        }
        if !cut_it {
            return Err(Error::invalid_input(format!(
                "input {i} has {n} tokens, more than this model's limit of {max_len} (send \"truncate\": true to cut it)"
            )));
        }
        let toks: Vec<_> = tk.tokens(&t, false)?;
        let keep = max_len.saturating_sub(n - toks.len());
        let cut = match direction {
            Direction::Left => {
                let first = &toks[toks.len() - keep];
                t[first.start.unwrap_or(0)..].to_string()
            }
            Direction::Right => {
                let last = &toks[keep.max(1) - 1];
                t[..last.stop.unwrap_or(t.len())].to_string()
            }
        };
        out.push(cut);
    }
    Ok(out)
}

// ---------------------------------------------------------------- OpenAI

#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct OpenAiEmbed {
    input: OpenAiInput,
    model: String,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

async fn openai_embeddings(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match openai_embed(&s, &body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(Api::OpenAi, e),
    }
}

async fn openai_embed(s: &Shared, body: &Bytes) -> Result<Value> {
    let req: OpenAiEmbed = parse(body)?;
    let (name, a) = resolve_for(s, Some(&req.model), Task::Embed, "/v1/embeddings")?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::invalid_input(format!(
                "encoding_format '{other}' is not \"float\" or \"base64\""
            )));
        }
    };
    // Token arrays are this model's ids: decoded to text, which the model
    // tokenizes again (the same ids for WordPiece text without [UNK]).
    let texts = match req.input {
        OpenAiInput::One(t) => vec![t],
        OpenAiInput::Many(v) => v,
        OpenAiInput::Tokens(ids) => vec![decode_ids(&a, &ids)?],
        OpenAiInput::ManyTokens(v) => v
            .iter()
            .map(|ids| decode_ids(&a, ids))
            .collect::<Result<_>>()?,
    };
    if texts.is_empty() {
        return Err(empty_input("`input` holds no texts"));
    }
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(empty_input(format!("input {i} is an empty string")));
    }
    let (vectors, tokens) = embed(s, &name, &a, texts, true, req.dimensions).await?;
    use base64::Engine as _;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

fn decode_ids(a: &TextAdapter, ids: &[u32]) -> Result<String> {
    let n = a.tokenizer().vocab_size();
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
        return Err(Error::invalid_input(format!(
            "token id {bad} is outside this model's vocabulary of {n}"
        )));
    }
    a.tokenizer().decode(ids, true)
}

/// Embeddings of `texts` (normalized or not, cut to `dimensions`), with
/// the tokens the model read.
async fn embed(
    s: &Shared,
    name: &str,
    a: &TextAdapter,
    texts: Vec<String>,
    normalize: bool,
    dimensions: Option<usize>,
) -> Result<(Vec<Vec<f32>>, i64)> {
    let cfg = a.config();
    let out = run(
        s,
        name,
        texts,
        None,
        &["embedding", "pooled", "token_count"],
    )
    .await?;
    let tokens: i64 = out[2].to_vec::<i64>()?.iter().sum();
    let full = out[0].shape().get(1).copied().unwrap_or(0);
    let k = match dimensions {
        None => full,
        Some(k) if k == full => full,
        Some(k) if cfg.dimensions.contains(&k) && k < full => k,
        Some(k) => {
            return Err(Error::invalid_input(format!(
                "model '{name}' cannot give {k} dimensions (it gives {full}{})",
                if cfg.dimensions.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", or {} as configured in [text] dimensions",
                        cfg.dimensions
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )));
        }
    };
    // The model's own form when nothing changes; otherwise from the pooled
    // vector: cut, then normalized when asked.
    let vectors = if k == full && normalize == cfg.normalize {
        rows(&out[0])?
    } else {
        let mut v: Vec<Vec<f32>> = rows(&out[1])?
            .into_iter()
            .map(|mut r| {
                r.truncate(k);
                r
            })
            .collect();
        if normalize {
            v.iter_mut()
                .for_each(|r| pomme_text::pool::normalize(r, k.max(1)));
        }
        v
    };
    Ok((vectors, tokens))
}

async fn openai_models(State(s): State<Arc<Shared>>) -> Response {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut names: Vec<String> = s
        .runtime
        .models()
        .into_iter()
        .filter(|m| m.state == pomme_runtime::ModelState::Ready)
        .map(|m| m.name)
        .collect();
    names.sort();
    names.dedup();
    let data: Vec<Value> = names
        .iter()
        .map(|n| json!({"id": n, "object": "model", "created": started, "owned_by": "pomme"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

// ------------------------------------------------------------------- TEI

#[derive(Deserialize, Clone, Copy, Default)]
enum Direction {
    #[default]
    Right,
    Left,
}

#[derive(Deserialize)]
struct TeiEmbed {
    inputs: OneOrMany,
    #[serde(default = "yes")]
    normalize: bool,
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    dimensions: Option<usize>,
    model: Option<String>,
    /// Accepted for compatibility; pomme models have no prompts.
    #[allow(dead_code)]
    prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

async fn tei<F, Fut>(s: Arc<Shared>, body: Bytes, f: F) -> Response
where
    F: FnOnce(Arc<Shared>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    match f(s, body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(Api::Tei, e),
    }
}

async fn tei_embed(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    tei(s, body, |s, body| async move {
        let req: TeiEmbed = parse(&body)?;
        let (name, a) = resolve_for(&s, req.model.as_deref(), Task::Embed, "/embed")?;
        let texts = truncate(
            &a,
            req.inputs.into_vec(),
            req.truncate,
            req.truncation_direction,
        )?;
        let (v, _) = embed(&s, &name, &a, texts, req.normalize, req.dimensions).await?;
        Ok(json!(v))
    })
    .await
}

#[derive(Deserialize)]
struct TeiEmbedAll {
    inputs: OneOrMany,
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    model: Option<String>,
    #[allow(dead_code)]
    prompt_name: Option<String>,
}

async fn tei_embed_all(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    tei(s, body, |s, body| async move {
        let req: TeiEmbedAll = parse(&body)?;
        let (name, a) = resolve_for(&s, req.model.as_deref(), Task::Embed, "/embed_all")?;
        let texts = truncate(
            &a,
            req.inputs.into_vec(),
            req.truncate,
            req.truncation_direction,
        )?;
        let out = run(&s, &name, texts, None, &["token_embeddings", "token_count"]).await?;
        let counts = out[1].to_vec::<i64>()?;
        let shape = out[0].shape().to_vec();
        let (mid, d) = (shape[1], shape[2]);
        let flat = out[0].to_vec::<f32>()?;
        let v: Vec<Vec<&[f32]>> = counts
            .iter()
            .enumerate()
            .map(|(r, &n)| {
                (0..n as usize)
                    .map(|t| &flat[(r * mid + t) * d..(r * mid + t + 1) * d])
                    .collect()
            })
            .collect();
        Ok(json!(v))
    })
    .await
}

#[derive(Deserialize)]
struct TeiTokenize {
    inputs: OneOrMany,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    model: Option<String>,
    #[allow(dead_code)]
    prompt_name: Option<String>,
}

async fn tei_tokenize(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    tei(s, body, |s, body| async move {
        let req: TeiTokenize = parse(&body)?;
        let (_, a) = resolve(&s, req.model.as_deref())?;
        let v = req
            .inputs
            .into_vec()
            .iter()
            .map(|t| a.tokenizer().tokens(t, req.add_special_tokens))
            .collect::<Result<Vec<_>>>()?;
        Ok(json!(v))
    })
    .await
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ids {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct TeiDecode {
    ids: Ids,
    #[serde(default = "yes")]
    skip_special_tokens: bool,
    model: Option<String>,
}

async fn tei_decode(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    tei(s, body, |s, body| async move {
        let req: TeiDecode = parse(&body)?;
        let (_, a) = resolve(&s, req.model.as_deref())?;
        let all = match req.ids {
            Ids::One(v) => vec![v],
            Ids::Many(v) => v,
        };
        let n = a.tokenizer().vocab_size();
        let v = all
            .iter()
            .map(|ids| {
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
                    return Err(Error::invalid_input(format!(
                        "token id {bad} is outside this model's vocabulary of {n}"
                    )));
                }
                a.tokenizer().decode(ids, req.skip_special_tokens)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(json!(v))
    })
    .await
}

#[derive(Deserialize)]
struct TeiRerank {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    model: Option<String>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

async fn tei_rerank(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    tei(s, body, |s, body| async move {
        let req: TeiRerank = parse(&body)?;
        let (name, a) = resolve_for(&s, req.model.as_deref(), Task::Rerank, "/rerank")?;
        if req.texts.is_empty() {
            return Err(empty_input("`texts` holds no texts"));
        }
        // The pair's limit is the model's; TEI's `truncate: false` refuses.
        if req.truncate == Some(false) || a.config().truncation == Truncation::Error {
            let max = a.config().max_length();
            for (i, t) in req.texts.iter().enumerate() {
                a.tokenizer()
                    .encode(&req.query, Some(t), max, Truncation::Error)
                    .map_err(|e| Error::invalid_input(format!("text {i}: {}", e.message())))?;
            }
        }
        let _ = req.truncation_direction;
        let queries = vec![req.query.clone(); req.texts.len()];
        let out = run(&s, &name, queries, Some(req.texts.clone()), &["score"]).await?;
        let scores = out[0].to_vec::<f32>()?;
        let mut ranked: Vec<(usize, f32)> = scores
            .into_iter()
            .map(|x| if req.raw_scores { x } else { sigmoid(x) })
            .enumerate()
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let v: Vec<Value> = ranked
            .into_iter()
            .map(|(i, score)| {
                let mut o = json!({"index": i, "score": score});
                if req.return_text {
                    o["text"] = json!(req.texts[i]);
                }
                o
            })
            .collect();
        Ok(json!(v))
    })
    .await
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PredictInputs {
    One(String),
    Pair(Vec<String>),
    Many(Vec<Vec<String>>),
}

#[derive(Deserialize)]
struct TeiPredict {
    inputs: PredictInputs,
    #[serde(default)]
    raw_scores: bool,
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    model: Option<String>,
}

async fn tei_predict(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    tei(s, body, |s, body| async move {
        let req: TeiPredict = parse(&body)?;
        let (name, a) = resolve_for(&s, req.model.as_deref(), Task::Classify, "/predict")?;
        let single = |v: Vec<String>| -> Result<String> {
            match <[String; 1]>::try_from(v) {
                Ok([t]) => Ok(t),
                Err(v) => Err(Error::invalid_input(format!(
                    "model '{name}' classifies single texts; got a group of {}",
                    v.len()
                ))),
            }
        };
        let (texts, batch) = match req.inputs {
            PredictInputs::One(t) => (vec![t], false),
            PredictInputs::Pair(v) => (vec![single(v)?], false),
            PredictInputs::Many(v) => (v.into_iter().map(single).collect::<Result<_>>()?, true),
        };
        let texts = truncate(&a, texts, req.truncate, req.truncation_direction)?;
        let out = run(&s, &name, texts, None, &["logits"]).await?;
        let view = s.runtime.model(&name, None)?;
        let labels = view
            .signature
            .output("logits")
            .and_then(|o| o.labels.clone())
            .unwrap_or_default();
        let answers: Vec<Value> = rows(&out[0])?
            .into_iter()
            .map(|logits| {
                let scores: Vec<f32> = if req.raw_scores {
                    logits
                } else {
                    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = logits.iter().map(|x| (x - m).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    e.iter().map(|x| x / sum).collect()
                };
                let mut v: Vec<(String, f32)> = scores
                    .into_iter()
                    .enumerate()
                    .map(|(i, sc)| {
                        (
                            labels
                                .get(i)
                                .cloned()
                                .unwrap_or_else(|| format!("LABEL_{i}")),
                            sc,
                        )
                    })
                    .collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                json!(
                    v.into_iter()
                        .map(|(label, score)| json!({"label": label, "score": score}))
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        Ok(if batch {
            json!(answers)
        } else {
            answers.into_iter().next().unwrap_or(json!([]))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_token_states_are_padded_on_concat() {
        let a = Tensor::from_vec(vec![1, 1, 2], vec![1f32, 2.]).unwrap();
        let b = Tensor::from_vec(vec![1, 2, 2], vec![3f32, 4., 5., 6.]).unwrap();
        let c = concat_ragged(&[&a, &b]).unwrap();
        assert_eq!(c.shape(), &[2, 2, 2]);
        assert_eq!(
            c.to_vec::<f32>().unwrap(),
            vec![1., 2., 0., 0., 3., 4., 5., 6.]
        );
    }

    #[test]
    fn error_bodies_follow_each_api() {
        let e = empty_input("input 0 is an empty string");
        let r = error(Api::OpenAi, e.clone());
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = error(Api::Tei, Error::ResourceLimit("queue full".into()));
        assert_eq!(r.status().as_u16(), 429);
        // TEI's table: empty 400, too long 413, unreadable body 422, engine 424.
        assert_eq!(error(Api::Tei, e).status().as_u16(), 400);
        let long =
            Error::invalid_input("input 0 has 40 tokens, more than this model's limit of 16");
        assert_eq!(error(Api::Tei, long.clone()).status().as_u16(), 413);
        assert_eq!(error(Api::OpenAi, long).status().as_u16(), 400);
        let body = parse::<Vec<String>>(&Bytes::from_static(b"{")).unwrap_err();
        assert_eq!(error(Api::Tei, body).status().as_u16(), 422);
        let engine = Error::InferenceFailed("engine failed".into());
        assert_eq!(error(Api::Tei, engine).status().as_u16(), 424);
    }
}
