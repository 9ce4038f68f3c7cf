// The direct baseline of the Mac proof kit (scripts/mac/kit.sh): Core ML without pomme.
//
//   xcrun swiftc -O -o direct scripts/mac/Direct.swift
//   ./direct MODEL.mlpackage|MODEL.mlmodelc cpuOnly|cpuAndGPU|cpuAndNeuralEngine|all BATCH WARMUP_S DURATION_S
//
// Loads the model with MLModelConfiguration.computeUnits, fills every input with
// pomme bench's synthetic pattern (floats ((i * 7919) % 1000) / 1000 - 0.5, ints
// 1, 2, 1, ...), warms up, then times each call of a prediction loop:
// prediction(from:) at batch 1, predictions(from:options:) over an
// MLArrayBatchProvider of BATCH copies otherwise. Each call also copies its
// float32 outputs out (as pomme does), so both sides pay for reading results.
// Prints one JSON object: p50/p90/p99/mean in ms, requests, items per second,
// load time. Written from Apple's documentation; never compiled or run (no Mac
// was available when it was written): the kit is its first build.
import CoreML
import Foundation

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(("direct: " + message + "\n").data(using: .utf8)!)
    exit(2)
}

func nowMs() -> Double {
    Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000.0
}

/// A multi-array of the constraint's (default) shape and type, holding pomme's pattern.
func patternArray(_ c: MLMultiArrayConstraint) throws -> MLMultiArray {
    let array = try MLMultiArray(shape: c.shape, dataType: c.dataType)
    for i in 0..<array.count {
        switch c.dataType {
        case .int32:
            array[i] = NSNumber(value: Int32(i % 2 + 1))
        default:
            array[i] = NSNumber(value: Float((i * 7919) % 1000) / 1000.0 - 0.5)
        }
    }
    return array
}

/// Copies every float32 multi-array output out, as a client of the model would.
func readOutputs(_ features: MLFeatureProvider) -> Int {
    var copied = 0
    for name in features.featureNames {
        guard let array = features.featureValue(for: name)?.multiArrayValue else { continue }
        if array.dataType == .float32 {
            array.withUnsafeBufferPointer(ofType: Float.self) { buffer in
                copied += Array(buffer).count
            }
        } else {
            copied += array.count
        }
    }
    return copied
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    if sorted.isEmpty { return 0 }
    let rank = Int((p * Double(sorted.count)).rounded(.up)) - 1
    return sorted[max(0, min(sorted.count - 1, rank))]
}

func run() throws {
    let args = CommandLine.arguments
    if args.count != 6 {
        fail("usage: direct MODEL cpuOnly|cpuAndGPU|cpuAndNeuralEngine|all BATCH WARMUP_S DURATION_S")
    }
    let url = URL(fileURLWithPath: args[1])
    let unitsName = args[2]
    guard let batch = Int(args[3]), batch >= 1 else { fail("BATCH must be a positive integer") }
    guard let warmup = Double(args[4]), let duration = Double(args[5]) else {
        fail("WARMUP_S and DURATION_S are seconds")
    }
    let config = MLModelConfiguration()
    switch unitsName {
    case "cpuOnly": config.computeUnits = .cpuOnly
    case "cpuAndGPU": config.computeUnits = .cpuAndGPU
    case "cpuAndNeuralEngine": config.computeUnits = .cpuAndNeuralEngine
    case "all": config.computeUnits = .all
    default: fail("unknown compute units '\(unitsName)'")
    }

    let t0 = nowMs()
    var compiled = url
    if url.pathExtension != "mlmodelc" {
        compiled = try MLModel.compileModel(at: url)
    }
    let compileMs = nowMs() - t0
    let t1 = nowMs()
    let model = try MLModel(contentsOf: compiled, configuration: config)
    let loadMs = nowMs() - t1

    var features: [String: MLFeatureValue] = [:]
    for (name, description) in model.modelDescription.inputDescriptionsByName {
        guard let constraint = description.multiArrayConstraint else {
            fail("input '\(name)' is not a multi-array")
        }
        features[name] = MLFeatureValue(multiArray: try patternArray(constraint))
    }
    let provider = try MLDictionaryFeatureProvider(dictionary: features)
    let batchProvider = MLArrayBatchProvider(array: Array(repeating: provider as MLFeatureProvider, count: batch))
    let options = MLPredictionOptions()

    var sink = 0
    func predictOnce() throws {
        if batch == 1 {
            sink &+= readOutputs(try model.prediction(from: provider))
        } else {
            let results = try model.predictions(from: batchProvider, options: options)
            for i in 0..<results.count {
                sink &+= readOutputs(results.features(at: i))
            }
        }
    }

    let warmEnd = nowMs() + warmup * 1000.0
    while nowMs() < warmEnd {
        try predictOnce()
    }
    var times: [Double] = []
    let start = nowMs()
    let end = start + duration * 1000.0
    while nowMs() < end {
        let t = nowMs()
        try predictOnce()
        times.append(nowMs() - t)
    }
    let elapsedS = (nowMs() - start) / 1000.0
    let sorted = times.sorted()
    let mean = times.isEmpty ? 0 : times.reduce(0, +) / Double(times.count)
    let result: [String: Any] = [
        "runner": "swift",
        "compute_units": unitsName,
        "batch": batch,
        "requests": times.count,
        "p50_ms": percentile(sorted, 0.5),
        "p90_ms": percentile(sorted, 0.9),
        "p99_ms": percentile(sorted, 0.99),
        "mean_ms": mean,
        "requests_per_s": Double(times.count) / elapsedS,
        "items_per_s": Double(times.count * batch) / elapsedS,
        "compile_ms": compileMs,
        "load_ms": loadMs,
        "outputs_read": sink > 0,
    ]
    let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
    print(String(data: data, encoding: .utf8)!)
}

do {
    try run()
} catch {
    fail("\(error)")
}
