//! pomme's Swift shim: CoreAI.framework (macOS 27+) called in-process through
//! a small C ABI, in place of the Python engine process ([`crate::bridge`]).
//!
//! `swift/PommeCoreAI.swift` wraps Apple's Swift API (`AIModel`,
//! `InferenceFunction`, `NDArray`, `SpecializationOptions`) in six `@_cdecl`
//! functions with the worker's contract: `load` takes the same path and
//! device, `describe` answers what the worker's `load` answers, `run` takes
//! and returns the same JSON headers and 8-byte-aligned payloads. The build
//! script compiles it only when building for macOS with `swiftc` at hand and
//! then sets `cfg(pomme_coreai_shim)`; only then does anything link against
//! it ([`ShimEngine::swift`], [`find_runtime`]).
//!
//! Status: the Swift file is written from Apple's documentation and has never
//! been compiled or run here (no macOS 27 SDK); this module's declarations are
//! type-checked for `aarch64-apple-darwin` (`scripts/check-apple.sh`), and
//! [`ShimEngine`] itself is platform-independent: it calls the ABI through
//! the function pointers of an [`Abi`], and its tests run it on every
//! platform against a stand-in that follows the same contract, including
//! who frees what. `scripts/macos-smoke.sh` builds and runs the real one.
//!
//! The trade-off against the engine process: no process start, no pipe and
//! no Python per call, but a Swift fatal error inside Core AI now ends the
//! server instead of one request ([`ShimEngine::alive`] is always true).
//! `bridge = "python"` keeps the process on macOS 27 too.

use crate::options::Bridge;
use crate::{Runtime, bridge};
use bytes::Bytes;
use pomme_core::tensor::AlignedBuf;
use pomme_core::{Error, Result, Tensor, one_line};
use serde_json::Value;
use std::ffi::{CStr, CString, c_char, c_void};
use std::path::PathBuf;
use std::ptr;

/// `pomme_coreai_probe() -> char*`: `{"available", "kinds", "description"}`
/// or `{"available": false, "why"}`.
pub type ProbeFn = unsafe extern "C" fn() -> *mut c_char;
/// `pomme_coreai_load(path, device, char **err) -> model` (null on failure).
pub type LoadFn =
    unsafe extern "C" fn(*const c_char, *const c_char, *mut *mut c_char) -> *mut c_void;
/// `pomme_coreai_describe(model) -> char*`: the worker's `load` reply.
pub type DescribeFn = unsafe extern "C" fn(*mut c_void) -> *mut c_char;
/// `pomme_coreai_run(model, header, payload, payload_len, char **out_header,
/// void **out_payload, size_t *out_len, char **err) -> int32` (0: success).
pub type RunFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const u8,
    usize,
    *mut *mut c_char,
    *mut *mut c_void,
    *mut usize,
    *mut *mut c_char,
) -> i32;
/// `pomme_coreai_free(ptr)`: frees a string or payload the library returned.
pub type FreeFn = unsafe extern "C" fn(*mut c_void);
/// `pomme_coreai_release(model)`: releases a model handle.
pub type ReleaseFn = unsafe extern "C" fn(*mut c_void);

/// The shim's C ABI as function pointers: the Swift library's
/// ([`Abi::SWIFT`], with the shim compiled in) or a stand-in.
#[derive(Clone, Copy, Debug)]
pub struct Abi {
    pub probe: ProbeFn,
    pub load: LoadFn,
    pub describe: DescribeFn,
    pub run: RunFn,
    pub free: FreeFn,
    pub release: ReleaseFn,
}

/// The Swift library's symbols. Declared on every macOS build so that
/// `scripts/check-apple.sh` type-checks them against [`Abi`]'s types, but
/// referenced (and so linked) only with `cfg(pomme_coreai_shim)`.
#[cfg(target_os = "macos")]
mod ffi {
    use std::ffi::{c_char, c_void};

    unsafe extern "C" {
        pub fn pomme_coreai_probe() -> *mut c_char;
        pub fn pomme_coreai_load(
            path: *const c_char,
            device: *const c_char,
            err: *mut *mut c_char,
        ) -> *mut c_void;
        pub fn pomme_coreai_describe(model: *mut c_void) -> *mut c_char;
        #[allow(clippy::too_many_arguments, reason = "the C ABI's signature")]
        pub fn pomme_coreai_run(
            model: *mut c_void,
            header: *const c_char,
            payload: *const u8,
            payload_len: usize,
            out_header: *mut *mut c_char,
            out_payload: *mut *mut c_void,
            out_len: *mut usize,
            err: *mut *mut c_char,
        ) -> i32;
        pub fn pomme_coreai_free(ptr: *mut c_void);
        pub fn pomme_coreai_release(model: *mut c_void);
    }

    // The declarations agree with the pointer types (evaluated at compile
    // time only: nothing here is linked).
    const _: () = {
        let _: super::ProbeFn = pomme_coreai_probe;
        let _: super::LoadFn = pomme_coreai_load;
        let _: super::DescribeFn = pomme_coreai_describe;
        let _: super::RunFn = pomme_coreai_run;
        let _: super::FreeFn = pomme_coreai_free;
        let _: super::ReleaseFn = pomme_coreai_release;
    };
}

#[cfg(pomme_coreai_shim)]
impl Abi {
    /// The Swift library built by `build.rs` from `swift/PommeCoreAI.swift`.
    pub const SWIFT: Abi = Abi {
        probe: ffi::pomme_coreai_probe,
        load: ffi::pomme_coreai_load,
        describe: ffi::pomme_coreai_describe,
        run: ffi::pomme_coreai_run,
        free: ffi::pomme_coreai_free,
        release: ffi::pomme_coreai_release,
    };
}

/// Why this build has no shim.
pub const NOT_BUILT: &str = "this pomme was built without the Swift shim (it is compiled only when building for macOS with swiftc and a macOS 27 SDK; see crates/pomme-coreai/swift/README.md)";

/// The shim's runtime, when this build has the shim and CoreAI.framework is
/// there; else why not.
pub fn find_runtime() -> std::result::Result<Runtime, String> {
    #[cfg(pomme_coreai_shim)]
    {
        runtime(&Abi::SWIFT)
    }
    #[cfg(not(pomme_coreai_shim))]
    {
        Err(NOT_BUILT.to_string())
    }
}

/// Asks `abi` whether CoreAI.framework can be used here.
pub fn runtime(abi: &Abi) -> std::result::Result<Runtime, String> {
    // SAFETY: `probe` takes nothing and returns a string from the library or null.
    let text = unsafe { take_string(abi, (abi.probe)()) }
        .ok_or("the Swift shim's probe returned nothing")?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the Swift shim's probe said something unreadable: {e}"))?;
    if v["available"] != Value::Bool(true) {
        return Err(v["why"]
            .as_str()
            .unwrap_or("the Swift shim finds no CoreAI.framework")
            .to_string());
    }
    Ok(Runtime {
        python: PathBuf::new(),
        description: v["description"]
            .as_str()
            .unwrap_or("CoreAI.framework (pomme's Swift shim)")
            .to_string(),
        os_framework: true,
        kinds: crate::probed_kinds(&v),
        shim: true,
    })
}

/// The runtime a load uses: the shim's (`Some`) or a Python engine's
/// (`None`). `python_named`: the model's options name an interpreter.
pub fn choose(
    bridge: Bridge,
    python_named: bool,
    shim: std::result::Result<&Runtime, String>,
) -> Result<Option<&Runtime>> {
    match bridge {
        Bridge::Python => Ok(None),
        Bridge::Auto if python_named => Ok(None),
        Bridge::Auto => Ok(shim.ok()),
        Bridge::Shim => shim
            .map(Some)
            .map_err(|why| Error::Unavailable(format!("bridge = \"shim\": {why}"))),
    }
}

/// A model loaded through the shim: [`crate::bridge::Engine`]'s methods over
/// the C ABI, in this process.
pub struct ShimEngine {
    abi: Abi,
    model: *mut c_void,
}

// SAFETY: the handle is used by one thread at a time (`&mut self`), and the
// Swift side keeps no thread affinity (its handle is `@unchecked Sendable`;
// every call runs to completion before returning).
unsafe impl Send for ShimEngine {}

impl ShimEngine {
    /// An engine with nothing loaded, calling `abi`.
    ///
    /// # Safety
    /// Every pointer of `abi` must follow the contract of
    /// `swift/PommeCoreAI.swift`: strings and payloads it returns are
    /// allocated for `abi.free`, handles from `abi.load` stay valid until
    /// `abi.release`, and a failed call sets `*err` (or nothing) and returns
    /// null or nonzero.
    pub unsafe fn new(abi: Abi) -> ShimEngine {
        ShimEngine {
            abi,
            model: ptr::null_mut(),
        }
    }

    /// An engine over the Swift library built into this binary.
    #[cfg(pomme_coreai_shim)]
    pub fn swift() -> ShimEngine {
        // SAFETY: the Swift library implements the contract (that is its job;
        // scripts/macos-smoke.sh runs it).
        unsafe { ShimEngine::new(Abi::SWIFT) }
    }

    /// This process: the shim runs in it.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Always true: a failure inside Core AI that Swift cannot turn into an
    /// error ends this process, not just the engine.
    pub fn alive(&mut self) -> bool {
        true
    }

    /// The worker's ops: `load` (path, device) answers the model's
    /// description; `run` answers the reply header and payload. Errors are
    /// `InferenceFailed("Core AI: ...")`, as from the engine process.
    pub fn call(&mut self, header: &Value, tensors: &[&Tensor]) -> Result<(Value, Bytes)> {
        match header.get("op").and_then(Value::as_str) {
            Some("load") => Ok((self.load(header)?, Bytes::new())),
            Some("run") => self.run(header, tensors),
            other => Err(failed(format!("unknown op {other:?}"))),
        }
    }

    fn load(&mut self, header: &Value) -> Result<Value> {
        let path = header["path"]
            .as_str()
            .ok_or_else(|| Error::Internal(format!("a load request without a path: {header}")))?;
        let device = header
            .get("device")
            .and_then(Value::as_str)
            .unwrap_or("cpu");
        let path = CString::new(path)
            .map_err(|_| Error::InvalidModelFormat(format!("{path}: a NUL in the path")))?;
        let device =
            CString::new(device).map_err(|_| Error::invalid_input(format!("device {device:?}")))?;
        self.unload();
        let mut err = ptr::null_mut();
        // SAFETY: NUL-terminated strings that outlive the call, and a place
        // for the error; the contract of `Abi` does the rest.
        let model = unsafe { (self.abi.load)(path.as_ptr(), device.as_ptr(), &mut err) };
        // SAFETY: `err` is null or a string from the library.
        let err = unsafe { take_string(&self.abi, err) };
        if model.is_null() {
            return Err(failed(err.unwrap_or_else(|| "the load failed".into())));
        }
        self.model = model;
        // SAFETY: a live handle.
        let text = unsafe { take_string(&self.abi, (self.abi.describe)(model)) }
            .ok_or_else(|| failed("the loaded model has no description".into()))?;
        let mut desc: Value = serde_json::from_str(&text).map_err(|e| {
            Error::Internal(format!("the Swift shim described the model oddly: {e}"))
        })?;
        if let Some(d) = desc.as_object_mut() {
            d.insert("pid".into(), Value::from(self.pid()));
        }
        Ok(desc)
    }

    fn run(&mut self, header: &Value, tensors: &[&Tensor]) -> Result<(Value, Bytes)> {
        if self.model.is_null() {
            return Err(failed("no model is loaded".into()));
        }
        let head = CString::new(header.to_string())
            .map_err(|e| Error::Internal(format!("cannot encode a request: {e}")))?;
        let (parts, total) = bridge::payload_parts(tensors)?;
        let mut payload = AlignedBuf::zeroed(total);
        let mut at = 0;
        for p in parts {
            payload.as_mut_bytes()[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let (mut out_head, mut out_payload, mut out_len, mut err) =
            (ptr::null_mut(), ptr::null_mut(), 0usize, ptr::null_mut());
        // SAFETY: a live handle, a NUL-terminated header and a payload that
        // outlive the call, and places for what comes back.
        let rc = unsafe {
            (self.abi.run)(
                self.model,
                head.as_ptr(),
                payload.as_ref().as_ptr(),
                total,
                &mut out_head,
                &mut out_payload,
                &mut out_len,
                &mut err,
            )
        };
        // Everything returned is ours to free, whatever `rc` says.
        let out_payload = Returned {
            free: self.abi.free,
            ptr: out_payload.cast::<u8>(),
            len: if out_payload.is_null() { 0 } else { out_len },
        };
        // SAFETY: null or strings from the library.
        let (out_head, err) = unsafe {
            (
                take_string(&self.abi, out_head),
                take_string(&self.abi, err),
            )
        };
        if rc != 0 {
            return Err(failed(
                err.unwrap_or_else(|| format!("the call failed ({rc})")),
            ));
        }
        let out_head = out_head
            .ok_or_else(|| Error::Internal("the Swift shim replied without a header".into()))?;
        let head: Value = serde_json::from_str(&out_head)
            .map_err(|e| Error::Internal(format!("the Swift shim sent a bad reply: {e}")))?;
        if let Some(e) = bridge::error_reply(&head) {
            return Err(e);
        }
        Ok((head, out_payload.into_bytes()))
    }

    fn unload(&mut self) {
        if !self.model.is_null() {
            // SAFETY: a live handle, released once.
            unsafe { (self.abi.release)(self.model) };
            self.model = ptr::null_mut();
        }
    }
}

impl Drop for ShimEngine {
    fn drop(&mut self) {
        self.unload();
    }
}

fn failed(msg: String) -> Error {
    Error::InferenceFailed(format!("Core AI: {}", one_line(&msg)))
}

/// Copies a string the library returned and frees it; `None` for null.
///
/// # Safety
/// `p` is null or a NUL-terminated string allocated for `abi.free`.
unsafe fn take_string(abi: &Abi, p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: freed once, as the contract says.
    unsafe { (abi.free)(p.cast()) };
    Some(s)
}

/// A payload the library returned, freed when dropped.
struct Returned {
    free: FreeFn,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory from the library's allocator, freeable from any thread.
unsafe impl Send for Returned {}

impl Returned {
    /// The payload as [`Bytes`]: without a copy when it is 8-byte aligned (as
    /// `malloc`'s memory is), which tensors viewed in place need; copied into
    /// an aligned buffer otherwise.
    fn into_bytes(self) -> Bytes {
        if self.len == 0 {
            Bytes::new()
        } else if self.ptr.align_offset(8) == 0 {
            Bytes::from_owner(self)
        } else {
            let mut buf = AlignedBuf::zeroed(self.len);
            buf.as_mut_bytes().copy_from_slice(self.as_ref());
            buf.freeze()
        }
    }
}

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the library handed over `len` bytes at `ptr`, owned by
        // `self` until it is dropped.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: freed once, as the contract says.
            unsafe { (self.free)(self.ptr.cast()) };
        }
    }
}

#[cfg(test)]
mod tests {
    //! [`ShimEngine`] against a stand-in of the Swift library: the same C
    //! signatures and ownership rules, with a toy model (`y = 2x + 1`, and a
    //! stateful `acc += x`), and every allocation it hands out tracked so that
    //! a leak or a double free fails the test.

    use super::*;
    use crate::bridge::{WireTensor, unpack};
    use crate::describe::{Description, Plan};
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Debug, PartialEq)]
    enum Alloc {
        Str,
        Payload(usize),
    }

    thread_local! {
        /// What the stand-in handed out and pomme has not freed yet.
        static LIVE: RefCell<HashMap<usize, Alloc>> = RefCell::new(HashMap::new());
        static MODELS: RefCell<usize> = const { RefCell::new(0) };
        static PROBE: RefCell<&'static str> = const { RefCell::new("") };
    }

    fn give_string(s: &str) -> *mut c_char {
        let p = CString::new(s).unwrap().into_raw();
        LIVE.with(|l| l.borrow_mut().insert(p as usize, Alloc::Str));
        p
    }

    fn give_payload(bytes: &[u8]) -> *mut c_void {
        let words = bytes.len().div_ceil(8).max(1);
        let mut b = vec![0u64; words].into_boxed_slice();
        bytemuck_copy(&mut b, bytes);
        let p = Box::into_raw(b).cast::<u64>();
        LIVE.with(|l| l.borrow_mut().insert(p as usize, Alloc::Payload(words)));
        p.cast()
    }

    fn bytemuck_copy(dst: &mut [u64], src: &[u8]) {
        for (i, b) in src.iter().enumerate() {
            dst[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
    }

    unsafe extern "C" fn fake_free(p: *mut c_void) {
        if p.is_null() {
            return;
        }
        let kind = LIVE.with(|l| l.borrow_mut().remove(&(p as usize)));
        match kind {
            // SAFETY: made by give_string.
            Some(Alloc::Str) => drop(unsafe { CString::from_raw(p.cast()) }),
            // SAFETY: made by give_payload with this many words.
            Some(Alloc::Payload(words)) => drop(unsafe {
                Box::from_raw(ptr::slice_from_raw_parts_mut(p.cast::<u64>(), words))
            }),
            None => panic!("pomme freed {p:?}, which the library did not hand out (or twice)"),
        }
    }

    unsafe extern "C" fn fake_probe() -> *mut c_char {
        give_string(PROBE.with(|p| *p.borrow()))
    }

    struct FakeModel {
        device: String,
    }

    unsafe extern "C" fn fake_load(
        path: *const c_char,
        device: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void {
        // SAFETY: pomme passes NUL-terminated strings.
        let (path, device) = unsafe {
            (
                CStr::from_ptr(path).to_str().unwrap(),
                CStr::from_ptr(device).to_str().unwrap(),
            )
        };
        if path.contains("missing") {
            // SAFETY: pomme passes a place for the error.
            unsafe { *err = give_string("CocoaError: no such file\n(NSFileNoSuchFileError)") };
            return ptr::null_mut();
        }
        MODELS.with(|m| *m.borrow_mut() += 1);
        Box::into_raw(Box::new(FakeModel {
            device: device.to_string(),
        }))
        .cast()
    }

    unsafe extern "C" fn fake_describe(model: *mut c_void) -> *mut c_char {
        // SAFETY: a handle from fake_load.
        let m = unsafe { &*model.cast::<FakeModel>() };
        let x = |n: i64| serde_json::json!({"name": "x", "dtype": "float32", "shape": [n, 4]});
        let reply = serde_json::json!({
            "functions": {
                "main": {"inputs": [x(-1)], "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}], "states": []},
                "acc": {"inputs": [x(1)], "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}],
                        "states": [{"name": "s", "dtype": "float32", "shape": [1, 4]}]},
            },
            "order": ["main", "acc"],
            "metadata": {"producer": "test"},
            "runtime": "CoreAI.framework (stand-in)",
            "how": format!("specialized by CoreAI.framework for {}", m.device),
            "load_ms": 1.5,
            "compiled": null,
        });
        give_string(&reply.to_string())
    }

    unsafe extern "C" fn fake_release(model: *mut c_void) {
        // SAFETY: a handle from fake_load, released once.
        drop(unsafe { Box::from_raw(model.cast::<FakeModel>()) });
        MODELS.with(|m| *m.borrow_mut() -= 1);
    }

    /// f32 values of the payload's tensors as `specs` lay them out (8-aligned).
    fn read_f32(specs: &[WireTensor], payload: &[u8]) -> Vec<Vec<f32>> {
        let mut at = 0usize;
        specs
            .iter()
            .map(|s| {
                at = at.div_ceil(8) * 8;
                let n: usize = s.shape.iter().product();
                let v = payload[at..at + 4 * n]
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                at += 4 * n;
                v
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments, reason = "the C ABI's signature")]
    unsafe extern "C" fn fake_run(
        _model: *mut c_void,
        header: *const c_char,
        payload: *const u8,
        len: usize,
        out_header: *mut *mut c_char,
        out_payload: *mut *mut c_void,
        out_len: *mut usize,
        err: *mut *mut c_char,
    ) -> i32 {
        // SAFETY: pomme's header is a NUL-terminated string, its payload `len` bytes.
        let (h, payload) = unsafe {
            (
                serde_json::from_str::<Value>(CStr::from_ptr(header).to_str().unwrap()).unwrap(),
                std::slice::from_raw_parts(payload, len),
            )
        };
        assert_eq!(
            payload.as_ptr().align_offset(8),
            0,
            "pomme's payload is aligned"
        );
        let specs = |k: &str| -> Vec<WireTensor> {
            serde_json::from_value(h.get(k).cloned().unwrap_or(Value::Null)).unwrap_or_default()
        };
        let (inputs, states) = (specs("inputs"), specs("states"));
        let all: Vec<WireTensor> = inputs.iter().chain(&states).cloned().collect();
        let values = read_f32(&all, payload);
        let (reply, bytes): (Value, Vec<f32>) = match h["function"].as_str() {
            Some("main") => (
                serde_json::json!({"outputs": [{"name": "y", "dtype": "float32", "shape": inputs[0].shape}], "states": []}),
                values[0].iter().map(|v| 2.0 * v + 1.0).collect(),
            ),
            Some("acc") => {
                let s: Vec<f32> = values[0]
                    .iter()
                    .zip(&values[1])
                    .map(|(x, s)| x + s)
                    .collect();
                let mut b = s.clone();
                b.extend(&s); // y, then the state (each 16 bytes: no padding)
                (
                    serde_json::json!({"outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}], "states": states}),
                    b,
                )
            }
            other => {
                // SAFETY: pomme passes a place for the error.
                unsafe { *err = give_string(&format!("ShimError: no function {other:?}")) };
                return 1;
            }
        };
        let raw: Vec<u8> = bytes.iter().flat_map(|v| v.to_le_bytes()).collect();
        // SAFETY: pomme passes places for the reply.
        unsafe {
            *out_header = give_string(&reply.to_string());
            *out_payload = give_payload(&raw);
            *out_len = raw.len();
        }
        0
    }

    const FAKE: Abi = Abi {
        probe: fake_probe,
        load: fake_load,
        describe: fake_describe,
        run: fake_run,
        free: fake_free,
        release: fake_release,
    };

    fn engine() -> ShimEngine {
        // SAFETY: the stand-in follows the contract (and these tests check pomme does).
        unsafe { ShimEngine::new(FAKE) }
    }

    fn nothing_left() {
        LIVE.with(|l| assert!(l.borrow().is_empty(), "not freed: {:?}", l.borrow()));
        MODELS.with(|m| assert_eq!(*m.borrow(), 0, "model handles not released"));
    }

    fn load(e: &mut ShimEngine, path: &str) -> Result<Value> {
        e.call(
            &serde_json::json!({"op": "load", "path": path, "compiled": null, "device": "ane"}),
            &[],
        )
        .map(|(v, b)| {
            assert!(b.is_empty());
            v
        })
    }

    #[test]
    fn load_answers_what_the_worker_answers() {
        let mut e = engine();
        let desc = load(&mut e, "/m/toy.aimodel").unwrap();
        assert_eq!(desc["pid"], std::process::id());
        let desc: Description = serde_json::from_value(desc).unwrap();
        assert_eq!(desc.order, ["main", "acc"]);
        assert_eq!(desc.how, "specialized by CoreAI.framework for ane");
        let plan = Plan::new(&desc, &["acc".into()]).unwrap();
        assert_eq!(plan.states[0].name, "s");
        // A second load replaces the first (which is released).
        load(&mut e, "/m/toy.aimodel").unwrap();
        MODELS.with(|m| assert_eq!(*m.borrow(), 1));
        drop(e);
        nothing_left();
    }

    #[test]
    fn runs_return_outputs_and_states_in_frames() {
        let mut e = engine();
        load(&mut e, "/m/toy.aimodel").unwrap();
        let x = Tensor::from_vec(vec![2, 4], (0..8).map(|v| v as f32).collect()).unwrap();
        let header = serde_json::json!({"op": "run", "function": "main",
            "inputs": [bridge::wire("x", &x).unwrap()], "states": []});
        let (reply, payload) = e.call(&header, &[&x]).unwrap();
        assert_eq!(payload.as_ptr().align_offset(8), 0);
        let outs: Vec<WireTensor> = serde_json::from_value(reply["outputs"].clone()).unwrap();
        let y = unpack(&outs, &payload).unwrap();
        let want: Vec<f32> = (0..8).map(|v| 2.0 * v as f32 + 1.0).collect();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), want);
        drop((reply, payload, y));

        let xs = Tensor::from_vec(vec![1, 4], vec![1.0f32; 4]).unwrap();
        let s = Tensor::from_vec(vec![1, 4], vec![10.0f32, 20.0, 30.0, 40.0]).unwrap();
        let header = serde_json::json!({"op": "run", "function": "acc",
            "inputs": [bridge::wire("x", &xs).unwrap()], "states": [bridge::wire("s", &s).unwrap()]});
        let (reply, payload) = e.call(&header, &[&xs, &s]).unwrap();
        let outs: Vec<WireTensor> = serde_json::from_value(reply["outputs"].clone()).unwrap();
        let states: Vec<WireTensor> = serde_json::from_value(reply["states"].clone()).unwrap();
        let all: Vec<WireTensor> = outs.iter().chain(&states).cloned().collect();
        let t = unpack(&all, &payload).unwrap();
        assert_eq!(t[1].to_vec::<f32>().unwrap(), [11.0, 21.0, 31.0, 41.0]);
        drop((t, payload));
        drop(e);
        nothing_left();
    }

    #[test]
    fn failures_are_errors_with_the_reason_and_free_everything() {
        let mut e = engine();
        let err = load(&mut e, "/m/missing.aimodel").unwrap_err();
        assert!(matches!(err, Error::InferenceFailed(_)));
        assert_eq!(
            err.to_string(),
            "inference failed: Core AI: CocoaError: no such file (NSFileNoSuchFileError)"
        );
        let x = Tensor::from_vec(vec![1, 4], vec![0.0f32; 4]).unwrap();
        let run = |f: &str| serde_json::json!({"op": "run", "function": f, "inputs": [bridge::wire("x", &x).unwrap()]});
        let err = e.call(&run("main"), &[&x]).unwrap_err().to_string();
        assert!(err.contains("no model is loaded"), "{err}");
        load(&mut e, "/m/toy.aimodel").unwrap();
        let err = e.call(&run("nope"), &[&x]).unwrap_err().to_string();
        assert!(
            err.contains("Core AI: ShimError: no function Some(\"nope\")"),
            "{err}"
        );
        let err = e
            .call(&serde_json::json!({"op": "exit"}), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown op"), "{err}");
        assert!(e.alive());
        assert_eq!(e.pid(), std::process::id());
        drop(e);
        nothing_left();
    }

    #[test]
    fn the_probe_says_whether_coreai_is_there() {
        PROBE.with(|p| *p.borrow_mut() = r#"{"available": false, "why": "macOS 15.5 has no CoreAI.framework (it needs macOS 27)"}"#);
        let e = runtime(&FAKE).unwrap_err();
        assert!(e.contains("needs macOS 27"), "{e}");
        PROBE.with(|p| *p.borrow_mut() = r#"{"available": true, "kinds": ["ane", "cpu", "gpu"], "description": "CoreAI.framework (stand-in)"}"#);
        let rt = runtime(&FAKE).unwrap();
        assert!(rt.shim && rt.os_framework);
        assert_eq!(rt.kinds, ["ane", "cpu", "gpu"]);
        assert_eq!(rt.description, "CoreAI.framework (stand-in)");
        nothing_left();
    }

    #[test]
    fn the_bridge_option_picks_the_transport() {
        let rt = Runtime {
            python: PathBuf::new(),
            description: "shim".into(),
            os_framework: true,
            kinds: vec!["cpu".into()],
            shim: true,
        };
        let none = || Err::<&Runtime, _>("no shim here".to_string());
        assert_eq!(choose(Bridge::Auto, false, Ok(&rt)).unwrap(), Some(&rt));
        assert_eq!(choose(Bridge::Auto, false, none()).unwrap(), None);
        assert_eq!(choose(Bridge::Auto, true, Ok(&rt)).unwrap(), None);
        assert_eq!(choose(Bridge::Python, false, Ok(&rt)).unwrap(), None);
        assert_eq!(choose(Bridge::Shim, true, Ok(&rt)).unwrap(), Some(&rt));
        let e = choose(Bridge::Shim, false, none()).unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)));
        assert!(
            e.to_string().contains("bridge = \"shim\": no shim here"),
            "{e}"
        );
        #[cfg(not(pomme_coreai_shim))]
        assert_eq!(find_runtime().unwrap_err(), NOT_BUILT);
    }
}
