// PommeCoreAI.swift: pomme's C ABI over Apple's Core AI (CoreAI.framework, macOS 27+).
//
// STATUS: written from Apple's documentation (developer.apple.com/documentation/coreai)
// and from published code that calls the same API; NEVER COMPILED OR RUN by its
// authors, who had no macOS 27 SDK. The Rust side that calls it
// (src/shim.rs) is type-checked for aarch64-apple-darwin and tested on Linux
// against a stand-in of this ABI. scripts/macos-smoke.sh is the first build
// and run. Every place where an API's exact form is not certain says
// "UNVERIFIED" and why.
//
// The contract is the Python engine's (src/bridge/worker.py):
//   pomme_coreai_load      the worker's op "load": one asset, specialized for
//                          device "cpu" | "gpu" | "ane" | "auto"
//   pomme_coreai_describe  its reply: {functions, order, metadata, runtime,
//                          how, load_ms, compiled}, each input, output and
//                          state as {name, dtype, shape} (-1: unknown dim)
//   pomme_coreai_run       its op "run": the same JSON header
//                          {function, inputs, states} and payload (the
//                          tensors' bytes in header order, each starting at a
//                          multiple of 8); replies {outputs, states} and a
//                          payload laid out the same way, outputs then states
// Every string and payload handed back is malloc'd: pomme frees it with
// pomme_coreai_free. Failures come back as a message in *err (and a null or
// nonzero return), never as a crash where Swift lets us avoid one.

import CoreAI
import Foundation

// MARK: - Errors, C strings, JSON

private struct ShimError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One line for pomme: ours as written, Apple's as "Type: message" (the
/// worker's form).
private func message(_ error: Error) -> String {
    if let e = error as? ShimError { return e.description }
    return "\(type(of: error)): \(error)"
}

private func fail(_ err: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ text: String) {
    err?.pointee = strdup(text)
}

private func json(_ object: Any) throws -> String {
    let data = try JSONSerialization.data(withJSONObject: object)
    return String(decoding: data, as: UTF8.self)
}

// MARK: - Async to sync

/// A result carried from the task to the blocked caller: written once by the
/// task before it signals, read once by the caller after the wait.
private final class Outcome<T>: @unchecked Sendable {
    var value: Result<T, Error> = .failure(ShimError("the Core AI task did not finish"))
}

/// Runs `body` on Swift's concurrency runtime and blocks the calling thread
/// until it has finished.
///
/// Why: Core AI's loading (`AIModel(contentsOf:options:)`) and inference
/// (`InferenceFunction.run`) are `async` only, while a C ABI is synchronous.
/// pomme calls this from its own compute-worker threads, which wait for every
/// call anyway; such a thread is never one of Swift's cooperative pool, so
/// blocking it on a semaphore cannot starve the detached task it waits for.
private func blocking<T>(_ body: @escaping @Sendable () async throws -> T) -> Result<T, Error> {
    let outcome = Outcome<T>()
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        do {
            outcome.value = .success(try await body())
        } catch {
            outcome.value = .failure(error)
        }
        done.signal()
    }
    done.wait()
    return outcome.value
}

// MARK: - Dtypes and frame layout

/// Bytes per element of a dtype pomme serves, by its wire name.
private func byteWidth(_ dtype: String) -> Int? {
    switch dtype {
    case "int8", "uint8", "bool": return 1
    case "float16", "bfloat16", "int16", "uint16": return 2
    case "float32", "int32", "uint32": return 4
    case "float64", "int64", "uint64": return 8
    default: return nil
    }
}

/// pomme's dtype names are the runtime's `NDArray.ScalarType` case names: the
/// Python package reports `String(describing: scalarType)` as an array's dtype,
/// and so does this shim (see `spec` and `run`).
/// UNVERIFIED: the cases past float16/float32/bfloat16/int32 (which Apple's
/// pages and published code show) are read from the reflection strings of the
/// Linux build of the same runtime (coreai-core 1.0.0b3); the framework's enum
/// is assumed to match.
@available(macOS 27.0, *)
private func scalarType(_ dtype: String) -> NDArray.ScalarType? {
    switch dtype {
    case "float32": return .float32
    case "float16": return .float16
    case "bfloat16": return .bfloat16
    case "float64": return .float64
    case "int8": return .int8
    case "int16": return .int16
    case "int32": return .int32
    case "int64": return .int64
    case "uint8": return .uint8
    case "uint16": return .uint16
    case "uint32": return .uint32
    case "uint64": return .uint64
    case "bool": return .bool
    default: return nil
    }
}

/// One tensor in a frame header.
private struct Wire: Codable, Sendable {
    let name: String
    let dtype: String
    let shape: [Int]
}

/// The header of a `run` request (its `op` is ignored here).
private struct RunRequest: Decodable, Sendable {
    let function: String
    let inputs: [Wire]
    let states: [Wire]?
}

private struct RunReply: Encodable {
    let outputs: [Wire]
    let states: [Wire]
}

/// Where each tensor of a payload starts and how many bytes it has: in
/// order, each starting at a multiple of 8 (the bridge's frame).
private struct Layout {
    var offsets: [Int] = []
    var sizes: [Int] = []
    var total = 0

    init(_ specs: [Wire]) throws {
        for s in specs {
            guard let width = byteWidth(s.dtype) else {
                throw ShimError("'\(s.name)' has dtype \(s.dtype), which pomme does not serve")
            }
            var size = width
            for d in s.shape {
                let (next, overflow) = size.multipliedReportingOverflow(by: d)
                guard d >= 0, !overflow else {
                    throw ShimError("'\(s.name)' has shape \(s.shape)")
                }
                size = next
            }
            total = (total + 7) & ~7
            offsets.append(total)
            sizes.append(size)
            total += size
        }
    }
}

/// Row-major strides, in elements.
private func rowMajor(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    var step = 1
    for axis in shape.indices.reversed() {
        strides[axis] = step
        step *= max(shape[axis], 1)
    }
    return strides
}

// MARK: - A loaded model

/// One loaded asset and the functions loaded from it so far (the worker's
/// `Engine`). pomme uses a handle from one session at a time and waits for
/// each call, so its function cache is never touched concurrently.
@available(macOS 27.0, *)
private final class Handle: @unchecked Sendable {
    let model: AIModel
    let description: String
    private var functions: [String: InferenceFunction] = [:]

    init(model: AIModel, description: String) {
        self.model = model
        self.description = description
    }

    /// `name`, loaded on first use (a function owns its weights and buffers).
    func function(_ name: String) throws -> InferenceFunction {
        if let f = functions[name] { return f }
        guard let f = try model.loadFunction(named: name) else {
            throw ShimError(
                "no function '\(name)' (the asset has \(model.functionNames.joined(separator: ", ")))")
        }
        functions[name] = f
        return f
    }
}

/// The worker's `specialization`: `cpu` restricts to the CPU, `auto` lets
/// Core AI choose, `gpu` / `ane` prefer that unit (Core AI still falls back
/// for operations it cannot place there).
@available(macOS 27.0, *)
private func specialization(_ device: String) throws -> SpecializationOptions {
    switch device {
    case "cpu": return .cpuOnly
    case "auto": return .default
    case "gpu": return SpecializationOptions(preferredComputeUnitKind: .gpu)
    case "ane": return SpecializationOptions(preferredComputeUnitKind: .neuralEngine)
    default: throw ShimError("device '\(device)': expected cpu, gpu, ane or auto")
    }
}

@available(macOS 27.0, *)
private func kindName(_ kind: ComputeUnitKind) -> String {
    switch kind {
    case .cpu: return "cpu"
    case .gpu: return "gpu"
    case .neuralEngine: return "ane"
    @unknown default: return String(describing: kind)
    }
}

private func runtimeName() -> String {
    let v = ProcessInfo.processInfo.operatingSystemVersion
    #if arch(arm64)
        let arch = "arm64"
    #else
        let arch = "x86_64"
    #endif
    return "CoreAI.framework (pomme's Swift shim, macOS \(v.majorVersion).\(v.minorVersion).\(v.patchVersion) \(arch))"
}

/// An input, output or state as the worker describes it. An image (or a kind
/// this shim does not know) gets a dtype pomme refuses, naming it.
@available(macOS 27.0, *)
private func spec(_ name: String, _ value: InferenceValue.Descriptor?) -> [String: Any] {
    if case .ndArray(let d)? = value {
        return ["name": name, "dtype": String(describing: d.scalarType), "shape": d.shape]
    }
    return ["name": name, "dtype": value == nil ? "unknown" : "image", "shape": [Int]()]
}

/// `metadata.json` of the asset, as written (an empty object when absent or
/// unreadable, like the worker).
private func metadata(_ asset: URL) -> Any {
    guard let data = try? Data(contentsOf: asset.appendingPathComponent("metadata.json")),
        let object = try? JSONSerialization.jsonObject(with: data),
        object is [String: Any]
    else { return [String: Any]() }
    return object
}

@available(macOS 27.0, *)
private func load(path: String, device: String) async throws -> Handle {
    let started = Date()
    let url = URL(fileURLWithPath: path)
    // Specializes on first use and caches the result in AIModelCache.default
    // (OS-version specific; later loads take tens of ms).
    let options = try specialization(device)
    let model = try await AIModel(contentsOf: url, options: options)
    let loadMs = Date().timeIntervalSince(started) * 1000
    var functions: [String: Any] = [:]
    for name in model.functionNames {
        guard let d = model.functionDescriptor(for: name) else {
            throw ShimError("Core AI lists function '\(name)' but does not describe it")
        }
        functions[name] = [
            "inputs": d.inputNames.map { spec($0, d.inputDescriptor(of: $0)) },
            "outputs": d.outputNames.map { spec($0, d.outputDescriptor(of: $0)) },
            "states": d.stateNames.map { spec($0, d.stateDescriptor(of: $0)) },
        ]
    }
    let reply: [String: Any] = [
        "functions": functions,
        "order": model.functionNames,
        "metadata": metadata(url),
        "runtime": runtimeName(),
        "how": "specialized by CoreAI.framework for \(device)",
        "load_ms": loadMs,
        "compiled": NSNull(),
    ]
    return Handle(model: model, description: try json(reply))
}

// MARK: - Running

/// pomme's request payload, lent for the length of one call: pomme keeps it
/// valid and unchanged until `pomme_coreai_run` returns.
private struct Lent: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer
}

/// A reply: its header and a malloc'd payload that pomme frees.
private struct Reply: @unchecked Sendable {
    let header: String
    let payload: UnsafeMutableRawPointer?
    let length: Int
}

/// Copies `array` into `destination` densely, row-major, whatever its strides.
@available(macOS 27.0, *)
private func copyDense(_ array: NDArray, width: Int, to destination: UnsafeMutableRawPointer) throws {
    guard array.interleaveLayout == nil else {
        throw ShimError("an output with an interleaved layout; pomme reads dense arrays only")
    }
    // Strides are in elements (NDArray.strides' documentation).
    array.rawView().withUnsafeBytes { source, shape, strides in
        var count = 1
        for axis in 0..<shape.count { count *= shape[axis] }
        guard count > 0 else { return }
        var dense = true
        var expected = 1
        for axis in (0..<shape.count).reversed() where shape[axis] != 1 {
            dense = dense && strides[axis] == expected
            expected *= shape[axis]
        }
        if dense {
            destination.copyMemory(from: source, byteCount: count * width)
            return
        }
        for index in 0..<count {
            var rest = index
            var offset = 0
            for axis in (0..<shape.count).reversed() {
                offset += (rest % shape[axis]) * strides[axis]
                rest /= shape[axis]
            }
            destination.advanced(by: index * width)
                .copyMemory(from: source.advanced(by: offset * width), byteCount: width)
        }
    }
}

@available(macOS 27.0, *)
private func run(_ handle: Handle, _ request: RunRequest, _ payload: Lent) async throws -> Reply {
    let fn = try handle.function(request.function)
    let states = request.states ?? []
    let frame = try Layout(request.inputs + states)
    guard frame.total <= payload.bytes.count else {
        throw ShimError("the request's payload has \(payload.bytes.count) bytes for \(frame.total)")
    }
    func region(_ i: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: payload.bytes[frame.offsets[i]..<(frame.offsets[i] + frame.sizes[i])])
    }

    // Inputs: read-only views of pomme's bytes, no copy.
    // UNVERIFIED: that a view made from an unsafe span in a loop may outlive
    // the iteration inside `Inputs`. ExecuTorch's Core AI bridge
    // (backends/apple/coreai/runtime/ETCoreAIModel.swift) does exactly this.
    var inputs = InferenceFunction.Inputs()
    for (i, s) in request.inputs.enumerated() {
        guard let type = scalarType(s.dtype) else {
            throw ShimError("input '\(s.name)' has dtype \(s.dtype), which pomme does not serve")
        }
        inputs.insert(
            NDArray.RawView(bytes: RawSpan(_unsafeBytes: region(i)), scalarType: type, shape: s.shape),
            for: s.name)
    }

    // States: Core AI updates them in place, so it gets a copy this call owns
    // (pomme's bytes stay read-only); the updated copy is sent back.
    let own = try Layout(states)
    let stateBytes = UnsafeMutableRawBufferPointer.allocate(byteCount: max(own.total, 1), alignment: 64)
    defer { stateBytes.deallocate() }
    var stateViews = InferenceFunction.MutableViews()
    for (j, s) in states.enumerated() {
        guard let type = scalarType(s.dtype) else {
            throw ShimError("state '\(s.name)' has dtype \(s.dtype), which pomme does not serve")
        }
        let mine = UnsafeMutableRawBufferPointer(
            rebasing: stateBytes[own.offsets[j]..<(own.offsets[j] + own.sizes[j])])
        mine.copyMemory(from: region(request.inputs.count + j))
        // UNVERIFIED: the labels of MutableRawView's initializer are those of
        // Apple's page (defaults, if any, are not shown there, so all are
        // given); the view outlives the loop iteration as the inputs' do.
        stateViews.insert(
            NDArray.MutableRawView(
                mutableBytes: MutableRawSpan(_unsafeBytes: mine), byteOffset: 0, scalarType: type,
                shape: s.shape, strides: rowMajor(s.shape), interleaveLayout: nil),
            for: s.name)
    }

    var outputs = try await fn.run(inputs: inputs, states: consume stateViews)

    // Outputs in the function's order; Core AI owns their layout, so each is
    // copied densely into the reply.
    var wires: [Wire] = []
    var arrays: [NDArray] = []
    for name in fn.descriptor.outputNames {
        guard let value = outputs.remove(name) else {
            throw ShimError("Core AI returned no output '\(name)'")
        }
        guard let array = value.ndArray else {
            throw ShimError("output '\(name)' is an image; pomme serves arrays only")
        }
        let dtype = String(describing: array.scalarType)
        guard byteWidth(dtype) != nil else {
            throw ShimError("output '\(name)' has dtype \(dtype), which pomme does not serve")
        }
        wires.append(Wire(name: name, dtype: dtype, shape: array.shape))
        arrays.append(array)
    }
    let out = try Layout(wires + states)
    guard let reply = malloc(max(out.total, 1)) else {
        throw ShimError("cannot allocate \(out.total) bytes for the reply")
    }
    memset(reply, 0, max(out.total, 1))
    do {
        for (i, array) in arrays.enumerated() {
            try copyDense(array, width: byteWidth(wires[i].dtype)!, to: reply + out.offsets[i])
        }
        for j in states.indices {
            let source = UnsafeRawBufferPointer(
                rebasing: stateBytes[own.offsets[j]..<(own.offsets[j] + own.sizes[j])])
            UnsafeMutableRawBufferPointer(start: reply + out.offsets[wires.count + j], count: own.sizes[j])
                .copyMemory(from: source)
        }
        let header = String(
            decoding: try JSONEncoder().encode(RunReply(outputs: wires, states: states)), as: UTF8.self)
        return Reply(header: header, payload: reply, length: out.total)
    } catch {
        free(reply)
        throw error
    }
}

// MARK: - The C ABI

/// `{"available": true, "kinds": [...], "description": "..."}` when
/// CoreAI.framework can be used here, else `{"available": false, "why": "..."}`.
@_cdecl("pomme_coreai_probe")
public func pomme_coreai_probe() -> UnsafeMutablePointer<CChar>? {
    let reply: [String: Any]
    if #available(macOS 27.0, *) {
        reply = [
            "available": true,
            "kinds": ComputeUnitKind.availableKinds.map(kindName).sorted(),
            "description": runtimeName(),
        ]
    } else {
        let v = ProcessInfo.processInfo.operatingSystemVersion
        reply = [
            "available": false,
            "why": "macOS \(v.majorVersion).\(v.minorVersion) has no CoreAI.framework (it needs macOS 27)",
        ]
    }
    return strdup((try? json(reply)) ?? "{\"available\": false, \"why\": \"probe failed\"}")
}

/// Loads and specializes the asset at `path` for `device`; a model handle, or
/// null with the reason in `*err`.
@_cdecl("pomme_coreai_load")
public func pomme_coreai_load(
    _ path: UnsafePointer<CChar>?,
    _ device: UnsafePointer<CChar>?,
    _ err: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> UnsafeMutableRawPointer? {
    err?.pointee = nil
    guard #available(macOS 27.0, *) else {
        fail(err, "CoreAI.framework needs macOS 27")
        return nil
    }
    guard let path, let device else {
        fail(err, "pomme_coreai_load: null path or device")
        return nil
    }
    let p = String(cString: path)
    let d = String(cString: device)
    switch blocking({ try await load(path: p, device: d) }) {
    case .success(let handle):
        return Unmanaged.passRetained(handle).toOpaque()
    case .failure(let error):
        fail(err, message(error))
        return nil
    }
}

/// The loaded model's description (the worker's `load` reply), as JSON.
@_cdecl("pomme_coreai_describe")
public func pomme_coreai_describe(_ model: UnsafeMutableRawPointer?) -> UnsafeMutablePointer<CChar>? {
    guard #available(macOS 27.0, *), let model else { return nil }
    return strdup(Unmanaged<Handle>.fromOpaque(model).takeUnretainedValue().description)
}

/// Runs one call; 0 with the reply in `*outHeader` / `*outPayload` /
/// `*outLength`, or nonzero with the reason in `*err`.
@_cdecl("pomme_coreai_run")
public func pomme_coreai_run(
    _ model: UnsafeMutableRawPointer?,
    _ header: UnsafePointer<CChar>?,
    _ payload: UnsafeRawPointer?,
    _ payloadLength: Int,
    _ outHeader: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
    _ outPayload: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
    _ outLength: UnsafeMutablePointer<Int>?,
    _ err: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
    outHeader?.pointee = nil
    outPayload?.pointee = nil
    outLength?.pointee = 0
    err?.pointee = nil
    guard #available(macOS 27.0, *) else {
        fail(err, "CoreAI.framework needs macOS 27")
        return 1
    }
    guard let model, let header, payloadLength >= 0, payload != nil || payloadLength == 0 else {
        fail(err, "pomme_coreai_run: null model, header or payload")
        return 1
    }
    let handle = Unmanaged<Handle>.fromOpaque(model).takeUnretainedValue()
    let request: RunRequest
    do {
        request = try JSONDecoder().decode(RunRequest.self, from: Data(String(cString: header).utf8))
    } catch {
        fail(err, "a bad run header: \(error)")
        return 1
    }
    let lent = Lent(bytes: UnsafeRawBufferPointer(start: payload, count: payloadLength))
    switch blocking({ try await run(handle, request, lent) }) {
    case .success(let reply):
        outHeader?.pointee = strdup(reply.header)
        outPayload?.pointee = reply.payload
        outLength?.pointee = reply.length
        return 0
    case .failure(let error):
        fail(err, message(error))
        return 1
    }
}

/// Frees a string or payload this library handed out.
@_cdecl("pomme_coreai_free")
public func pomme_coreai_free(_ pointer: UnsafeMutableRawPointer?) {
    free(pointer)
}

/// Releases a model handle from `pomme_coreai_load`.
@_cdecl("pomme_coreai_release")
public func pomme_coreai_release(_ model: UnsafeMutableRawPointer?) {
    guard let model else { return }
    if #available(macOS 27.0, *) {
        Unmanaged<Handle>.fromOpaque(model).release()
    }
}
