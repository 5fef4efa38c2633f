import Foundation

/// One golden array: every sample's values, C order, sample on axis 0 of `shape`.
struct GoldenTensor {
    let name: String
    let shape: [Int]
    let data: [Float]

    var sampleSize: Int { shape.dropFirst().reduce(1, *) }

    func sample(_ index: Int) -> [Float] { Array(data[(index * sampleSize)..<((index + 1) * sampleSize)]) }
}

/// golden/index.json and its raw little-endian float32 files: the inputs and eager PyTorch's outputs.
struct GoldenSet {
    let samples: Int
    let inputs: [GoldenTensor]
    let expected: [GoldenTensor]

    /// `readFile` opens a path relative to the bundle root, as index.json names them.
    init(index: Data, readFile: (String) throws -> Data) throws {
        typealias K = GoldenKeys
        let root = try JSONObject(data: index, context: "golden/index.json")
        let count = try root.int(K.samples)
        samples = count
        let order = try root.string(K.byteOrder)
        guard order == "little" else { throw DemoError.invalid("golden/index.json: byte_order '\(order)' is not supported (expected little)") }
        inputs = try Self.tensors(root.objects(K.inputs), samples: count, readFile: readFile,
                                  keys: (K.inputName, K.inputFile, K.inputDtype, K.inputShape))
        expected = try Self.tensors(root.objects(K.expected), samples: count, readFile: readFile,
                                    keys: (K.expectedName, K.expectedFile, K.expectedDtype, K.expectedShape))
    }

    private static func tensors(_ items: [JSONObject], samples: Int, readFile: (String) throws -> Data,
                                keys: (name: String, file: String, dtype: String, shape: String)) throws -> [GoldenTensor] {
        try items.map { item in
            let name = try item.string(keys.name)
            let dtype = try item.string(keys.dtype)
            guard dtype == "float32" else { throw DemoError.invalid("golden '\(name)' is \(dtype); this demo app handles float32 tensors only") }
            let shape = try item.ints(keys.shape)
            guard shape.first == samples else { throw DemoError.invalid("golden '\(name)' has shape \(shape); axis 0 must be the \(samples) samples") }
            let bytes = try readFile(try item.string(keys.file))
            let count = shape.reduce(1, *)
            guard bytes.count == count * 4 else {
                throw DemoError.invalid("golden '\(name)': \(bytes.count) bytes, expected \(count * 4) for shape \(shape)")
            }
            let values: [Float] = bytes.withUnsafeBytes { raw in
                (0..<count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
            }
            return GoldenTensor(name: name, shape: shape, data: values)
        }
    }
}

/// One output compared with its reference, the way edgepack's smoke test does (edgepack/compare.py).
struct Comparison {
    let ok: Bool
    let maxAbsErr: Double
    let cosine: Double
    let reason: String
}

func compareOutput(name: String, got: [Float], expected: [Float], tolerance: Tolerance) -> Comparison {
    guard got.count == expected.count else {
        return Comparison(ok: false, maxAbsErr: .nan, cosine: .nan, reason: "'\(name)' has \(got.count) values, expected \(expected.count)")
    }
    var maxErr = 0.0, maxRef = 0.0, dot = 0.0, normGot = 0.0, normRef = 0.0
    for (g32, e32) in zip(got, expected) {
        let g = Double(g32), e = Double(e32)
        guard g.isFinite else { return Comparison(ok: false, maxAbsErr: .nan, cosine: .nan, reason: "'\(name)' has NaN or infinite values") }
        maxErr = max(maxErr, abs(g - e))
        maxRef = max(maxRef, abs(e))
        dot += g * e
        normGot += g * g
        normRef += e * e
    }
    let cosine: Double
    if normGot == 0 && normRef == 0 {
        cosine = 1
    } else if normGot == 0 || normRef == 0 {
        cosine = 0
    } else {
        cosine = dot / (normGot.squareRoot() * normRef.squareRoot())
    }
    let limit = tolerance.atol + tolerance.rtol * maxRef
    var failures: [String] = []
    if maxErr > limit { failures.append("'\(name)' max abs error \(format(maxErr)) > \(format(limit))") }
    if cosine < tolerance.minCosine { failures.append("'\(name)' cosine \(String(format: "%.6f", cosine)) < \(tolerance.minCosine)") }
    return Comparison(ok: failures.isEmpty, maxAbsErr: maxErr, cosine: cosine,
                      reason: failures.isEmpty ? "within tolerance" : failures.joined(separator: "; "))
}

/// The verdict for one model configuration over every golden sample: the worst error and cosine, the first failure.
struct GoldenReport {
    let name: String
    let ok: Bool
    let samples: Int
    let maxAbsErr: Double
    let minCosine: Double
    let reason: String

    var summary: String {
        "\(name): \(ok ? "PASS" : "FAIL") on \(samples) golden samples (max abs error \(format(maxAbsErr)), "
            + "cosine \(String(format: "%.6f", minCosine)))" + (ok ? "" : ": \(reason)")
    }
}

/// Runs every golden sample through `run` (inputs in manifest order -> outputs in manifest order) and compares.
func checkGolden(name: String, golden: GoldenSet, tolerance: Tolerance, run: ([[Float]]) throws -> [[Float]]) rethrows -> GoldenReport {
    var worstErr = 0.0, worstCos = 1.0
    var firstFailure: String?
    for s in 0..<golden.samples {
        let outputs = try run(golden.inputs.map { $0.sample(s) })
        guard outputs.count == golden.expected.count else {
            return GoldenReport(name: name, ok: false, samples: golden.samples, maxAbsErr: .nan, minCosine: .nan,
                                reason: "sample \(s): \(outputs.count) outputs, expected \(golden.expected.count)")
        }
        for (output, reference) in zip(outputs, golden.expected) {
            let c = compareOutput(name: reference.name, got: output, expected: reference.sample(s), tolerance: tolerance)
            if !c.maxAbsErr.isNaN { worstErr = max(worstErr, c.maxAbsErr) }
            if !c.cosine.isNaN { worstCos = min(worstCos, c.cosine) }
            if !c.ok && firstFailure == nil { firstFailure = "sample \(s): \(c.reason)" }
        }
    }
    return GoldenReport(name: name, ok: firstFailure == nil, samples: golden.samples, maxAbsErr: worstErr, minCosine: worstCos,
                        reason: firstFailure ?? "within tolerance")
}

private func format(_ value: Double) -> String { String(format: "%.3g", value) }
