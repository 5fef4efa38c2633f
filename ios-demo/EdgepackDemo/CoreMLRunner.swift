import CoreML
import Foundation

/// The bundle's .mlpackage loaded with one compute-unit setting: float32 inputs in manifest order in,
/// outputs in manifest order out.
final class CoreMLRunner {
    /// The settings the app times and checks, by the names MLComputeUnits uses.
    static let computeUnitSettings: [(name: String, units: MLComputeUnits)] = [
        ("cpuOnly", .cpuOnly), ("cpuAndGPU", .cpuAndGPU), ("cpuAndNeuralEngine", .cpuAndNeuralEngine), ("all", .all),
    ]

    let settingName: String
    private let model: MLModel
    private let manifest: BundleManifest

    init(compiledModelURL: URL, setting: (name: String, units: MLComputeUnits), manifest: BundleManifest) throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = setting.units
        model = try MLModel(contentsOf: compiledModelURL, configuration: configuration)
        settingName = setting.name
        self.manifest = manifest
    }

    /// Xcode copies the .mlpackage inside the edgepack folder as it is, so it is compiled here, once
    /// per package content, into Caches/.
    static func compiledModelURL(for packageURL: URL, sha256: String) async throws -> URL {
        let caches = try FileManager.default.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let destination = caches.appendingPathComponent("edgepack-\(sha256.prefix(16)).mlmodelc", isDirectory: true)
        if FileManager.default.fileExists(atPath: destination.path) { return destination }
        let compiled = try await MLModel.compileModel(at: packageURL)
        try? FileManager.default.removeItem(at: destination)
        try FileManager.default.moveItem(at: compiled, to: destination)
        return destination
    }

    func run(_ inputs: [[Float]]) throws -> [[Float]] {
        var features: [String: Any] = [:]
        for (spec, values) in zip(manifest.inputs, inputs) {
            let array = try MLMultiArray(shape: spec.shape.map { NSNumber(value: $0) }, dataType: .float32)
            // A new MLMultiArray is contiguous in C order, so the linear index is the element's position.
            for (i, value) in values.enumerated() { array[i] = NSNumber(value: value) }
            features[spec.name] = array
        }
        let output = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: features))
        return try manifest.outputs.map { spec in
            guard let array = output.featureValue(for: spec.name)?.multiArrayValue else {
                throw DemoError.invalid("Core ML returned no '\(spec.name)'")
            }
            return Self.floats(array)
        }
    }

    /// Element by element through multi-dimensional indices: Core ML may pad an output's rows.
    static func floats(_ array: MLMultiArray) -> [Float] {
        let shape = array.shape.map { $0.intValue }
        let count = shape.reduce(1, *)
        var index = [NSNumber](repeating: 0, count: shape.count)
        return (0..<count).map { flat in
            var rest = flat
            for axis in stride(from: shape.count - 1, through: 0, by: -1) {
                index[axis] = NSNumber(value: rest % shape[axis])
                rest /= shape[axis]
            }
            return array[index].floatValue
        }
    }
}
