//! The engine worker process: pomme's bridge to Apple's Core AI runtime.
//!
//! Apple's runtime has no C ABI on Linux; it is reached through its Python
//! package. pomme runs it in a child process ([`worker.py`](./worker.py),
//! embedded in the binary and passed with `-c`) rather than an embedded
//! interpreter, because a Swift fatal error inside the runtime aborts the
//! process that hosts it: in a child it fails the request in flight and the
//! child is started again ([`Engine::call`] reports the death; the session
//! restarts). The parent writes a request on the child's stdin and reads the
//! reply from the child's original stdout; see the frame format in the
//! worker's docstring. The reply's tensors are read into one aligned buffer
//! and handed out as zero-copy slices of it.

use bytes::Bytes;
use parking_lot::Mutex;
use pomme_core::tensor::AlignedBuf;
use pomme_core::{DType, Error, Result, Tensor, one_line};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The worker program (Python), run with `python -c`.
pub const WORKER: &str = include_str!("worker.py");

/// How many of the worker's last stderr lines are kept for error messages.
const STDERR_LINES: usize = 20;

/// One tensor's place in a frame's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTensor {
    pub name: String,
    /// The runtime's dtype name (`float32`, `int32`, `bfloat16`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// A running engine worker.
pub struct Engine {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Arc<Mutex<VecDeque<String>>>,
    pid: u32,
    dead: bool,
    spin: Duration,
}

impl Engine {
    /// Starts a worker with `python` and waits for it to say it is ready.
    /// `spin`: how long each side polls for the other's next frame before
    /// sleeping (zero: never), so that a request does not wait for two
    /// process wake-ups.
    pub fn spawn(python: &Path, spin: Duration) -> Result<Engine> {
        let mut child = Command::new(python)
            .arg("-c")
            .arg(WORKER)
            .arg(spin.as_micros().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot start the Core AI engine with {}: {e}",
                    python.display()
                ))
            })?;
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let tail = stderr.clone();
        std::thread::Builder::new()
            .name(format!("coreai-stderr-{pid}"))
            .spawn(move || forward_stderr(pid, pipe, &tail))
            .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?;
        let mut engine = Engine {
            stdin: child.stdin.take().expect("stdin is piped"),
            stdout: child.stdout.take().expect("stdout is piped"),
            child,
            stderr,
            pid,
            dead: false,
            spin,
        };
        if !spin.is_zero() {
            set_nonblocking(&engine.stdout).map_err(|e| {
                Error::Internal(format!("cannot make the engine's pipe non-blocking: {e}"))
            })?;
        }
        let (hello, _) = engine.read_reply()?;
        if hello.get("ready") != Some(&Value::Bool(true)) {
            return Err(Error::Unavailable(format!(
                "the Core AI engine did not start: {hello}"
            )));
        }
        tracing::debug!(pid, runtime = %hello["runtime"], "Core AI engine started");
        Ok(engine)
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the worker is still running (a call has not failed on its
    /// pipes and the process has not exited); one `waitpid(WNOHANG)`.
    pub fn alive(&mut self) -> bool {
        !self.dead && matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `header` with `tensors`' bytes and returns the reply's header and
    /// payload. A reply `{"error": ...}` becomes `InferenceFailed`; a dead
    /// worker becomes `InferenceFailed` naming how it died and its last
    /// stderr line, and the engine is marked dead.
    pub fn call(&mut self, header: &Value, tensors: &[&Tensor]) -> Result<(Value, Bytes)> {
        if self.dead {
            return Err(Error::InferenceFailed(
                "the Core AI engine is not running".into(),
            ));
        }
        let sent = self.write_request(header, tensors);
        let reply = sent.and_then(|()| self.read_reply());
        let (head, payload) = reply?;
        if let Some(e) = error_reply(&head) {
            return Err(e);
        }
        Ok((head, payload))
    }

    fn write_request(&mut self, header: &Value, tensors: &[&Tensor]) -> Result<()> {
        let mut head = serde_json::to_vec(header)
            .map_err(|e| Error::Internal(format!("cannot encode a request: {e}")))?;
        // Spaces after the JSON put the payload 8-byte aligned in the frame.
        head.resize(head.len() + (12 + head.len()).wrapping_neg() % 8, b' ');
        let (parts, total) = payload_parts(tensors)?;
        let mut prefix = [0u8; 12];
        prefix[..4].copy_from_slice(&(head.len() as u32).to_le_bytes());
        prefix[4..].copy_from_slice(&(total as u64).to_le_bytes());
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        all.push(&prefix);
        all.push(&head);
        all.extend(parts);
        let result = write_all_vectored(&mut self.stdin, &all);
        result.map_err(|e| self.died(&e))
    }

    /// Reads one frame into one aligned buffer; the payload is handed out as
    /// a slice of it (the worker pads the header so it starts aligned).
    fn read_reply(&mut self) -> Result<(Value, Bytes)> {
        let spin_until = Instant::now() + self.spin;
        let mut prefix = [0u8; 12];
        if let Err(e) = read_full(&mut self.stdout, &mut prefix, spin_until) {
            return Err(self.died(&e));
        }
        let hlen = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
        let plen = u64::from_le_bytes(prefix[4..].try_into().expect("8 bytes")) as usize;
        let mut frame = AlignedBuf::zeroed(12 + hlen + plen);
        frame.as_mut_bytes()[..12].copy_from_slice(&prefix);
        if let Err(e) = read_full(
            &mut self.stdout,
            &mut frame.as_mut_bytes()[12..],
            spin_until,
        ) {
            return Err(self.died(&e));
        }
        let frame = frame.freeze();
        let head: Value = serde_json::from_slice(&frame[12..12 + hlen]).map_err(|e| {
            self.dead = true;
            Error::Internal(format!("the Core AI engine sent a bad reply: {e}"))
        })?;
        Ok((head, frame.slice(12 + hlen..)))
    }

    /// Marks the engine dead and describes its end: exit status or signal,
    /// and the last thing it printed (a Swift fatal error says why).
    fn died(&mut self, io: &std::io::Error) -> Error {
        self.dead = true;
        let status = match self.child.wait() {
            Ok(s) => describe_status(s),
            Err(_) => format!("lost ({io})"),
        };
        // The stderr thread may still be reading the last lines; they are in
        // the pipe already, so a short wait for EOF is enough.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while std::time::Instant::now() < deadline && Arc::strong_count(&self.stderr) > 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let last = self
            .stderr
            .lock()
            .iter()
            .rev()
            // The runtime's own progress lines say nothing about a death.
            .find(|l| !l.trim().is_empty() && !l.starts_with("ODIE ["))
            .cloned();
        tracing::error!(pid = self.pid, %status, last = last.as_deref().unwrap_or(""), "Core AI engine died");
        Error::InferenceFailed(match last {
            Some(l) => format!(
                "the Core AI engine (pid {}) died ({status}): {}; it is restarted for the next request",
                self.pid,
                one_line(&l)
            ),
            None => format!(
                "the Core AI engine (pid {}) died ({status}); it is restarted for the next request",
                self.pid
            ),
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.dead {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

#[cfg(not(unix))]
fn describe_status(s: std::process::ExitStatus) -> String {
    s.to_string()
}

/// Fills `buf` from `r`, which may be non-blocking: polls until
/// `spin_until`, then sleeps in `poll(2)` until the worker writes.
fn read_full(r: &mut ChildStdout, buf: &mut [u8], spin_until: Instant) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() < spin_until {
                    std::hint::spin_loop();
                } else {
                    wait_readable(r)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
#[allow(unsafe_code)] // two fcntl calls on a pipe this process owns
fn set_nonblocking(r: &ChildStdout) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = r.as_raw_fd();
    // SAFETY: fcntl on a pipe fd this struct owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(unix)]
#[allow(unsafe_code)] // one poll(2) on a pipe this process owns
fn wait_readable(r: &ChildStdout) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, -1) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_nonblocking(_: &ChildStdout) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(not(unix))]
fn wait_readable(_: &ChildStdout) -> std::io::Result<()> {
    Ok(())
}

/// Writes every byte of `parts` (std's `write_all_vectored` is unstable).
fn write_all_vectored(w: &mut impl Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    w.flush()
}

/// A frame's payload for `tensors`: their bytes in order, each starting at a
/// multiple of 8 (zero padding between), as the slices to send, and its length.
pub(crate) fn payload_parts<'a>(tensors: &[&'a Tensor]) -> Result<(Vec<&'a [u8]>, usize)> {
    const PAD: [u8; 8] = [0; 8];
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * tensors.len());
    let mut total = 0usize;
    for t in tensors {
        let raw = t
            .raw()
            .ok_or_else(|| Error::invalid_input("Core AI takes numeric tensors only (no BYTES)"))?;
        let pad = total.wrapping_neg() % 8;
        if pad > 0 {
            parts.push(&PAD[..pad]);
            total += pad;
        }
        parts.push(raw);
        total += raw.len();
    }
    Ok((parts, total))
}

/// A reply header `{"error": ...}` as pomme's error (`InferenceFailed`, one
/// line); `None` for any other reply.
pub(crate) fn error_reply(head: &Value) -> Option<Error> {
    let e = head.get("error")?;
    let msg = e
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    Some(Error::InferenceFailed(format!(
        "Core AI: {}",
        one_line(&msg)
    )))
}

fn forward_stderr(pid: u32, pipe: impl Read, tail: &Mutex<VecDeque<String>>) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        tracing::debug!(target: "pomme_coreai::engine", pid, "{line}");
        let mut t = tail.lock();
        if t.len() == STDERR_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// pomme's dtype for a runtime dtype name.
pub fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "float32" => DType::F32,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        "float64" => DType::F64,
        "int8" => DType::I8,
        "int16" => DType::I16,
        "int32" => DType::I32,
        "int64" => DType::I64,
        "uint8" => DType::U8,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        "uint64" => DType::U64,
        "bool" => DType::Bool,
        _ => return None,
    })
}

/// The runtime's dtype name for a pomme dtype.
pub fn runtime_dtype(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        DType::I8 => "int8",
        DType::I16 => "int16",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::U8 => "uint8",
        DType::U16 => "uint16",
        DType::U32 => "uint32",
        DType::U64 => "uint64",
        DType::Bool => "bool",
        DType::Bytes => return None,
    })
}

/// The wire description of `t`, named `name`.
pub fn wire(name: &str, t: &Tensor) -> Result<WireTensor> {
    Ok(WireTensor {
        name: name.to_string(),
        dtype: runtime_dtype(t.dtype())
            .ok_or_else(|| Error::invalid_input(format!("'{name}': Core AI takes no BYTES")))?
            .to_string(),
        shape: t.shape().to_vec(),
    })
}

/// Cuts a reply payload into tensors, as the reply's `specs` list them (each
/// starting 8-byte aligned), without copying.
pub fn unpack(specs: &[WireTensor], payload: &Bytes) -> Result<Vec<Tensor>> {
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let dtype = dtype_of(&s.dtype).ok_or_else(|| {
            Error::InferenceFailed(format!(
                "Core AI output '{}' has dtype {}, which pomme does not serve",
                s.name, s.dtype
            ))
        })?;
        let n = s.shape.iter().product::<usize>() * dtype.size_of().expect("numeric");
        offset += offset.wrapping_neg() % 8;
        if offset + n > payload.len() {
            return Err(Error::Internal(format!(
                "the Core AI engine's reply is short ({} bytes) for '{}'",
                payload.len(),
                s.name
            )));
        }
        out.push(Tensor::from_raw(
            dtype,
            s.shape.clone(),
            payload.slice(offset..offset + n),
        )?);
        offset += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_tensors_start_8_byte_aligned_and_unpack_back() {
        let a = Tensor::from_vec(vec![3], vec![1u8, 2, 3]).unwrap();
        let b = Tensor::from_vec(vec![2], vec![half::f16::from_f32(1.5); 2]).unwrap();
        let c = Tensor::from_vec(vec![1, 2], vec![7.0f32, -1.0]).unwrap();
        let (parts, total) = payload_parts(&[&a, &b, &c]).unwrap();
        // a at 0 (3 bytes), 5 bytes of padding, b at 8 (4 bytes), 4 of padding, c at 16.
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [3, 5, 4, 4, 8]
        );
        assert_eq!(total, 24);
        let mut buf = AlignedBuf::zeroed(total);
        let mut at = 0;
        for p in &parts {
            buf.as_mut_bytes()[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let specs = [
            wire("a", &a).unwrap(),
            wire("b", &b).unwrap(),
            wire("c", &c).unwrap(),
        ];
        let back = unpack(&specs, &buf.freeze()).unwrap();
        assert_eq!(back, [a, b, c]);
        let strings = Tensor::from_strings(vec![1], vec![bytes::Bytes::from_static(b"x")]).unwrap();
        assert!(payload_parts(&[&strings]).is_err());
    }

    #[test]
    fn error_replies_become_one_line_inference_failures() {
        let e = error_reply(&serde_json::json!({"error": "ValueError: bad\n  shape"})).unwrap();
        assert!(matches!(e, Error::InferenceFailed(_)));
        assert_eq!(e.to_string().lines().count(), 1);
        assert!(
            e.to_string().contains("Core AI: ValueError: bad shape"),
            "{e}"
        );
        assert!(error_reply(&serde_json::json!({"outputs": []})).is_none());
    }
}
