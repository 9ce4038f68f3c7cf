//! A scriptable in-memory backend.
//!
//! Behaviours come from two places, checked in this order on every call:
//! a FIFO queue ([`FakeBackend::then`]: "the next 3 calls fail"), then a
//! schedule by call index ([`FakeBackend::on_calls`]: "calls 10..20 fail"),
//! counted from 0 across every session of the backend. Calls matching neither
//! succeed. The schedule is what fault-injection tests use: it says exactly
//! which calls misbehave, whatever the batching and worker interleaving.

use parking_lot::Mutex;
use pomme_core::{
    Availability, Backend, DType, DeviceInfo, DeviceKind, Dim, Error, LoadOptions, LoadedModel,
    MemoryEstimate, ModelArtifact, ModelFormat, ModelInfo, ModelSignature, Precision, Result,
    Session, Shape, Tensor, TensorSpec,
};
use std::collections::VecDeque;
use std::ops::Range;
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
    /// Blocks until [`Script::release_hangs`] is called (or 60 s pass, so a
    /// forgotten hang cannot keep a test process alive forever), then answers.
    Hang,
}

/// Shared script and call log of a [`FakeBackend`].
#[derive(Debug, Default)]
pub struct Script {
    queue: Mutex<VecDeque<Behaviour>>,
    schedule: Mutex<Vec<(Range<usize>, Behaviour)>>,
    released: Mutex<bool>,
    release_cv: parking_lot::Condvar,
    /// Calls that panicked, hung, failed or returned a wrong shape.
    pub faults: AtomicUsize,
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
    device: DeviceKind,
    compute_precision: Precision,
    availability: Availability,
    load_error: Option<Error>,
    pub script: Arc<Script>,
}

impl Script {
    /// Lets every hanging call (and every later `Hang`) go on.
    pub fn release_hangs(&self) {
        *self.released.lock() = true;
        self.release_cv.notify_all();
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn hang(&self) {
        let mut released = self.released.lock();
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !*released {
            if self.release_cv.wait_until(&mut released, until).timed_out() {
                break;
            }
        }
    }

    /// The behaviour of call number `index`.
    fn behaviour(&self, index: usize) -> Behaviour {
        if let Some(b) = self.queue.lock().pop_front() {
            return b;
        }
        self.schedule
            .lock()
            .iter()
            .find(|(r, _)| r.contains(&index))
            .map(|(_, b)| b.clone())
            .unwrap_or(Behaviour::Ok)
    }
}

impl FakeBackend {
    /// A fake named `fake` with rows of `width` floats.
    pub fn new(width: usize) -> FakeBackend {
        FakeBackend {
            name: "fake",
            width,
            scale: 2.0,
            weight_bytes: 1024,
            device: DeviceKind::Cpu,
            compute_precision: Precision::F32,
            availability: Availability::Available,
            load_error: None,
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

    /// Multiplier of `y = x * scale` (another value makes a candidate that
    /// disagrees with the reference).
    pub fn scale(mut self, scale: f32) -> FakeBackend {
        self.scale = scale;
        self
    }

    /// The device its models report (and its one device).
    pub fn device(mut self, device: DeviceKind) -> FakeBackend {
        self.device = device;
        self
    }

    /// The precision its models report computing in (`LoadedModel::compute_precision`).
    pub fn computing_in(mut self, p: Precision) -> FakeBackend {
        self.compute_precision = p;
        self
    }

    /// Reports the backend as unavailable for this reason.
    pub fn unavailable(mut self, why: &str) -> FakeBackend {
        self.availability = Availability::Unavailable(why.into());
        self
    }

    /// Makes every load fail with this error.
    pub fn failing_load(mut self, e: Error) -> FakeBackend {
        self.load_error = Some(e);
        self
    }

    /// Calls whose index (from 0, over every session) is in `calls` behave so.
    /// Earlier schedules win where ranges overlap.
    pub fn on_calls(&self, calls: Range<usize>, b: Behaviour) -> &Self {
        self.script.schedule.lock().push((calls, b));
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
        self.availability.clone()
    }
    fn devices(&self) -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            kind: self.device,
            name: "fake".into(),
            availability: self.availability.clone(),
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
        if let Some(e) = &self.load_error {
            return Err(e.clone());
        }
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
        self.backend.device
    }
    fn precision(&self) -> Precision {
        Precision::F32
    }
    fn compute_precision(&self) -> Precision {
        self.backend.compute_precision
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
        let index = script.calls.fetch_add(1, Ordering::SeqCst);
        let x = &inputs[0];
        script.batches.lock().push(x.shape()[0]);
        let behaviour = script.behaviour(index);
        if !matches!(behaviour, Behaviour::Ok | Behaviour::Slow(_)) {
            script.faults.fetch_add(1, Ordering::SeqCst);
        }
        match behaviour {
            Behaviour::Fail(e) => return Err(e),
            Behaviour::Panic => panic!("fake backend panicked on purpose"),
            Behaviour::Slow(d) => std::thread::sleep(d),
            Behaviour::Hang => script.hang(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &FakeBackend) -> std::result::Result<Vec<Tensor>, String> {
        let art = ModelArtifact {
            format: ModelFormat::Onnx,
            path: "fake.onnx".into(),
        };
        let m = b.load(&art, &LoadOptions::default()).unwrap();
        let mut s = m.session().unwrap();
        let x = Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap();
        s.run(vec![x]).map_err(|e| e.to_string())
    }

    #[test]
    fn schedule_by_call_index_after_the_queue() {
        let b = FakeBackend::new(2);
        b.on_calls(2..4, Behaviour::Fail(Error::InferenceFailed("boom".into())))
            .on_calls(3..6, Behaviour::WrongShape);
        b.then(Behaviour::Fail(Error::Timeout("queued".into())), 1);
        let outcomes: Vec<String> = (0..7)
            .map(|_| match run(&b) {
                Ok(t) if t[0].shape()[0] == 1 => "ok".to_string(),
                Ok(_) => "short".to_string(),
                Err(e) => e,
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                "timeout: queued",
                "ok",
                "inference failed: boom",
                "inference failed: boom",
                "short",
                "short",
                "ok"
            ]
        );
        assert_eq!(b.script.calls(), 7);
        assert_eq!(b.script.faults.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn hang_is_released() {
        let b = FakeBackend::new(2);
        b.on_calls(0..1, Behaviour::Hang);
        let b2 = b.clone();
        let t = std::thread::spawn(move || run(&b2));
        // Released from here; whether the call has started yet does not matter,
        // since a release also lets later hangs through.
        b.script.release_hangs();
        assert!(t.join().unwrap().is_ok());
    }

    #[test]
    fn load_failure_scale_device_and_availability() {
        let art = ModelArtifact {
            format: ModelFormat::Onnx,
            path: "fake.onnx".into(),
        };
        let b = FakeBackend::new(2).failing_load(Error::CompilationFailed("no".into()));
        assert!(b.load(&art, &LoadOptions::default()).is_err());
        let b = FakeBackend::new(2)
            .scale(3.0)
            .device(DeviceKind::Cuda)
            .unavailable("no GPU");
        assert!(matches!(b.availability(), Availability::Unavailable(_)));
        let m = b.load(&art, &LoadOptions::default()).unwrap();
        assert_eq!(m.device(), DeviceKind::Cuda);
        let y = m
            .session()
            .unwrap()
            .run(vec![
                Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap(),
            ])
            .unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![3.0, 6.0]);
    }
}
