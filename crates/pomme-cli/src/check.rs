//! `pomme check MODEL --against REFERENCE`: runs two models on the same
//! inputs and reports, per output, how closely they agree (max abs and rel
//! error, cosine similarity, top-1 agreement for class scores). Exit 0 when
//! every output agrees within the tolerance, 1 when one does not, 2 when
//! either model cannot be loaded or run. Made to gate a conversion in CI:
//! a Core AI `.aimodel` against its ONNX source, on Linux, with no Mac.

use crate::cli::{EngineArgs, tokio_runtime, usage};
use crate::env::Settings;
use anyhow::{Context, Result};
use clap::Args;
use pomme_core::{DType, Fill, ModelSignature, Tensor};
use pomme_runtime::{InferRequest, Runtime};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The model under test (.aimodel, .onnx, .nnef, .mlpackage, ...).
    pub model: PathBuf,
    /// The reference it must agree with (e.g. the ONNX model it was converted from).
    #[arg(long)]
    pub against: PathBuf,
    /// Backend for the model under test (default: the first that reads its format).
    #[arg(long)]
    pub backend: Option<String>,
    /// Backend for the reference (default: the first that reads its format).
    #[arg(long)]
    pub against_backend: Option<String>,
    /// Input as NAME=FILE.npy (repeat per input); without any, --samples
    /// deterministic random inputs are made from the model's signature.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// How many generated input sets (seeds 1..=N).
    #[arg(long, default_value_t = 3)]
    pub samples: u64,
    /// Rows of each generated input (its symbolic first dimension).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Other symbolic dimensions of generated inputs (sequence length...).
    #[arg(long, default_value_t = 8)]
    pub size: usize,
    /// Absolute tolerance: an element agrees when |a − b| ≤ atol + rtol·|b|.
    #[arg(long, default_value_t = 1e-4)]
    pub atol: f64,
    /// Relative tolerance (see --atol).
    #[arg(long, default_value_t = 1e-3)]
    pub rtol: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Agreement of one output over every sample.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    output: String,
    elements: usize,
    max_abs: f64,
    max_rel: f64,
    /// Lowest cosine similarity over the samples' rows... of the whole output.
    cosine: f64,
    /// Fraction of rows whose arg-max agrees (2-D float outputs with > 1 column).
    #[serde(skip_serializing_if = "Option::is_none")]
    top1: Option<f64>,
    /// Elements outside atol + rtol·|reference|.
    outside: usize,
    agrees: bool,
}

pub fn run(args: CheckArgs, settings: &Settings) -> Result<ExitCode> {
    match compare(&args, settings) {
        Ok(reports) => {
            let ok = reports.iter().all(|r| r.agrees);
            print(&args, &reports)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        // Not a disagreement: say so with 2, so a CI gate cannot mistake it.
        Err(e) if e.chain().any(|c| c.is::<crate::cli::UsageError>()) => Err(e),
        Err(e) => Err(usage(format!("{e:#}"))),
    }
}

fn load(
    rt: &Runtime,
    tokio: &tokio::runtime::Runtime,
    name: &str,
    path: &std::path::Path,
    backend: &Option<String>,
    args: &CheckArgs,
    settings: &Settings,
) -> Result<ModelSignature> {
    let spec = args
        .engine
        .model_spec(name, path, backend.as_deref(), settings)?;
    let view = tokio
        .block_on(rt.load(spec))
        .with_context(|| format!("cannot load {}", path.display()))?;
    Ok(view.signature)
}

fn compare(args: &CheckArgs, settings: &Settings) -> Result<Vec<Report>> {
    let rt = Runtime::builder()
        .backends(pomme_backends::compiled_with(&settings.backends))
        .build()?;
    let tokio = tokio_runtime()?;
    let sig = load(
        &rt,
        &tokio,
        "model",
        &args.model,
        &args.backend,
        args,
        settings,
    )?;
    let ref_sig = load(
        &rt,
        &tokio,
        "reference",
        &args.against,
        &args.against_backend,
        args,
        settings,
    )?;
    let samples: Vec<Vec<(String, Tensor)>> = if args.inputs.is_empty() {
        (1..=args.samples.max(1))
            .map(|seed| generate(&sig, args.batch, args.size, seed))
            .collect::<Result<_>>()?
    } else {
        let named = crate::npy::read_named(&args.inputs)?;
        vec![named]
    };
    let mut reports: Vec<Report> = sig
        .outputs
        .iter()
        .map(|o| Report {
            output: o.name.clone(),
            cosine: 1.0,
            agrees: true,
            ..Report::default()
        })
        .collect();
    let mut top1_rows = vec![(0usize, 0usize); reports.len()];
    for inputs in samples {
        let for_ref = inputs
            .iter()
            .map(|(n, t)| {
                let spec = ref_sig
                    .inputs
                    .iter()
                    .find(|s| &s.name == n)
                    .ok_or_else(|| {
                        usage(format!(
                            "the reference has no input '{n}' (it takes {})",
                            names(&ref_sig.inputs)
                        ))
                    })?;
                Ok((n.clone(), cast(t, spec.dtype)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let got = tokio
            .block_on(rt.infer(InferRequest::new("model", inputs)))
            .with_context(|| format!("{} failed", args.model.display()))?;
        let want = tokio
            .block_on(rt.infer(InferRequest::new("reference", for_ref)))
            .with_context(|| format!("{} failed", args.against.display()))?;
        for (i, (name, a)) in got.outputs.iter().enumerate() {
            // Same name, else the same position.
            let b = want
                .output(name)
                .or_else(|| want.outputs.get(i).map(|(_, t)| t))
                .ok_or_else(|| usage(format!("the reference has no output '{name}'")))?;
            accumulate(&mut reports[i], &mut top1_rows[i], a, b, args)?;
        }
    }
    for (r, (agree, rows)) in reports.iter_mut().zip(top1_rows) {
        if rows > 0 {
            r.top1 = Some(agree as f64 / rows as f64);
        }
        r.agrees = r.outside == 0;
    }
    Ok(reports)
}

fn names(specs: &[pomme_core::TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deterministic uniform inputs for `sig`: floats in [-1, 1) (made in f32,
/// then cast to f16/bf16), integers 0/1.
fn generate(
    sig: &ModelSignature,
    rows: usize,
    size: usize,
    seed: u64,
) -> Result<Vec<(String, Tensor)>> {
    let mut as_f32 = sig.clone();
    for s in &mut as_f32.inputs {
        if matches!(s.dtype, DType::F16 | DType::BF16) {
            s.dtype = DType::F32;
        }
    }
    let made = pomme_core::synthetic_inputs(&as_f32, rows, size, Fill::Uniform(seed))?;
    made.into_iter()
        .zip(&sig.inputs)
        .map(|((n, t), spec)| Ok((n, cast(&t, spec.dtype)?)))
        .collect()
}

/// `t` as `dtype` (float ↔ float, integer ↔ integer); itself when equal.
fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return Ok(t.clone());
    }
    let v = t.to_f64_vec()?;
    let shape = t.shape().to_vec();
    Ok(match dtype {
        DType::F32 => Tensor::from_vec(shape, v.iter().map(|x| *x as f32).collect())?,
        DType::F64 => Tensor::from_vec(shape, v)?,
        DType::F16 => Tensor::from_vec(shape, v.iter().map(|x| half::f16::from_f64(*x)).collect())?,
        DType::BF16 => {
            Tensor::from_vec(shape, v.iter().map(|x| half::bf16::from_f64(*x)).collect())?
        }
        DType::I64 if !t.dtype().is_float() => {
            Tensor::from_vec(shape, v.iter().map(|x| *x as i64).collect())?
        }
        DType::I32 if !t.dtype().is_float() => {
            Tensor::from_vec(shape, v.iter().map(|x| *x as i32).collect())?
        }
        other => {
            return Err(usage(format!(
                "cannot feed a {} input to a model that takes {other}",
                t.dtype()
            )));
        }
    })
}

fn accumulate(
    r: &mut Report,
    top1: &mut (usize, usize),
    a: &Tensor,
    b: &Tensor,
    args: &CheckArgs,
) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(usage(format!(
            "output '{}': shape {:?} against the reference's {:?}",
            r.output,
            a.shape(),
            b.shape()
        )));
    }
    let (x, y) = (a.to_f64_vec()?, b.to_f64_vec()?);
    let (mut dot, mut nx, mut ny) = (0.0, 0.0, 0.0);
    for (p, q) in x.iter().zip(&y) {
        let d = (p - q).abs();
        r.max_abs = r.max_abs.max(d);
        r.max_rel = r.max_rel.max(d / q.abs().max(1e-12));
        if d > args.atol + args.rtol * q.abs() || d.is_nan() {
            r.outside += 1;
        }
        dot += p * q;
        nx += p * p;
        ny += q * q;
    }
    r.elements += x.len();
    let cos = if nx == 0.0 && ny == 0.0 {
        1.0
    } else {
        dot / (nx.sqrt() * ny.sqrt()).max(1e-300)
    };
    r.cosine = r.cosine.min(cos);
    if a.shape().len() == 2 && a.shape()[1] > 1 && a.dtype().is_float() {
        let cols = a.shape()[1];
        for (ra, rb) in x.chunks(cols).zip(y.chunks(cols)) {
            top1.1 += 1;
            if argmax(ra) == argmax(rb) {
                top1.0 += 1;
            }
        }
    }
    Ok(())
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

fn print(args: &CheckArgs, reports: &[Report]) -> Result<()> {
    let ok = reports.iter().all(|r| r.agrees);
    if args.json {
        let out = serde_json::json!({
            "model": args.model,
            "against": args.against,
            "atol": args.atol,
            "rtol": args.rtol,
            "agrees": ok,
            "outputs": reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} against {} (atol {}, rtol {})",
        args.model.display(),
        args.against.display(),
        args.atol,
        args.rtol
    );
    println!(
        "  {:<20} {:>9} {:>11} {:>11} {:>10} {:>7}  verdict",
        "output", "elements", "max abs", "max rel", "cosine", "top-1"
    );
    for r in reports {
        println!(
            "  {:<20} {:>9} {:>11.3e} {:>11.3e} {:>10.6} {:>7}  {}",
            r.output,
            r.elements,
            r.max_abs,
            r.max_rel,
            r.cosine,
            r.top1
                .map(|t| format!("{:.1}%", t * 100.0))
                .unwrap_or_else(|| "-".into()),
            if r.agrees {
                "agrees".to_string()
            } else {
                format!("DISAGREES ({} elements outside)", r.outside)
            }
        );
    }
    println!(
        "{}",
        if ok {
            "all outputs agree"
        } else {
            "outputs disagree"
        }
    );
    Ok(())
}
