//! A scriptable in-memory backend.

use parking_lot::Mutex;
use pomme_core::{
    Availability, Backend, DType, DeviceInfo, DeviceKind, Dim, Error, LoadOptions, LoadedModel,
    MemoryEstimate, ModelArtifact, ModelFormat, ModelInfo, ModelSignature, Precision, Result,
    Session, Shape, Tensor, TensorSpec,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What the fake does on one call.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// `y = x * scale`.
    Ok,
    /// Returns this error.
    Fail(Error),
    /// Panics.
    Panic,
    /// Sleeps, then answers.
    Slow(Duration),
    /// Returns one row too few.
    WrongShape,
}

/// Shared script and call log of a [`FakeBackend`].
#[derive(Debug, Default)]
pub struct Script {
    queue: Mutex<VecDeque<Behaviour>>,
    /// Batch sizes seen by `run`, in order.
    pub batches: Mutex<Vec<usize>>,
    pub calls: AtomicUsize,
}

/// A backend whose single model computes `y = x * scale` over `x: f32[batch, width]`.
#[derive(Clone, Debug)]
pub struct FakeBackend {
    name: &'static str,
    width: usize,
    scale: f32,
    weight_bytes: u64,
    pub script: Arc<Script>,
}

impl FakeBackend {
    /// A fake named `fake` with rows of `width` floats.
    pub fn new(width: usize) -> FakeBackend {
        FakeBackend {
            name: "fake",
            width,
            scale: 2.0,
            weight_bytes: 1024,
            script: Arc::default(),
        }
    }

    /// Another name (to stand in for a second backend).
    pub fn named(mut self, name: &'static str) -> FakeBackend {
        self.name = name;
        self
    }

    /// Declared weight size.
    pub fn weight_bytes(mut self, b: u64) -> FakeBackend {
        self.weight_bytes = b;
        self
    }

    /// Queues behaviours for the next calls; after them, calls succeed.
    pub fn then(&self, b: Behaviour, times: usize) -> &Self {
        let mut q = self.script.queue.lock();
        for _ in 0..times {
            q.push_back(b.clone());
        }
        self
    }

    fn signature(&self) -> ModelSignature {
        let shape = Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(self.width)]);
        ModelSignature {
            inputs: vec![TensorSpec::new("x", DType::F32, shape.clone())],
            outputs: vec![TensorSpec::new("y", DType::F32, shape)],
        }
    }
}

struct FakeModel {
    backend: FakeBackend,
    signature: ModelSignature,
}

struct FakeSession {
    backend: FakeBackend,
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        self.name
    }
    fn formats(&self) -> &[ModelFormat] {
        &[ModelFormat::Onnx]
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn devices(&self) -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            kind: DeviceKind::Cpu,
            name: "fake".into(),
            availability: Availability::Available,
        }]
    }
    fn inspect(&self, _artifact: &ModelArtifact) -> Result<ModelInfo> {
        Ok(ModelInfo {
            signature: self.signature(),
            ..Default::default()
        })
    }
    fn load(
        &self,
        _artifact: &ModelArtifact,
        _options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>> {
        Ok(Arc::new(FakeModel {
            backend: self.clone(),
            signature: self.signature(),
        }))
    }
}

impl LoadedModel for FakeModel {
    fn backend(&self) -> &'static str {
        self.backend.name
    }
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn memory(&self) -> MemoryEstimate {
        MemoryEstimate {
            weight_bytes: self.backend.weight_bytes,
            activation_bytes_per_item: 0,
        }
    }
    fn device(&self) -> DeviceKind {
        DeviceKind::Cpu
    }
    fn precision(&self) -> Precision {
        Precision::F32
    }
    fn session(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(FakeSession {
            backend: self.backend.clone(),
        }))
    }
}

impl Session for FakeSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let script = &self.backend.script;
        script.calls.fetch_add(1, Ordering::Relaxed);
        let x = &inputs[0];
        script.batches.lock().push(x.shape()[0]);
        let behaviour = script.queue.lock().pop_front().unwrap_or(Behaviour::Ok);
        match behaviour {
            Behaviour::Fail(e) => return Err(e),
            Behaviour::Panic => panic!("fake backend panicked on purpose"),
            Behaviour::Slow(d) => std::thread::sleep(d),
            Behaviour::WrongShape => {
                let rows = x.shape()[0].saturating_sub(1);
                return Ok(vec![Tensor::zeros(
                    DType::F32,
                    vec![rows, self.backend.width],
                )?]);
            }
            Behaviour::Ok => {}
        }
        let y: Vec<f32> = x
            .as_slice::<f32>()?
            .iter()
            .map(|v| v * self.backend.scale)
            .collect();
        Ok(vec![Tensor::from_vec(x.shape().to_vec(), y)?])
    }
}
