import Foundation

enum DemoError: LocalizedError {
    case missing(String)
    case invalid(String)

    var errorDescription: String? {
        switch self {
        case .missing(let message), .invalid(let message): return message
        }
    }
}

/// A JSON object read with JSONSerialization, looked up by the key paths of `ManifestKeys`/`GoldenKeys`.
struct JSONObject {
    let values: [String: Any]
    let context: String

    init(_ values: [String: Any], context: String) {
        self.values = values
        self.context = context
    }

    init(data: Data, context: String) throws {
        guard let values = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw DemoError.invalid("\(context) is not a JSON object")
        }
        self.init(values, context: context)
    }

    func has(_ path: String) -> Bool {
        guard let value = values[ManifestKeys.leaf(path)] else { return false }
        return !(value is NSNull)
    }

    func string(_ path: String) throws -> String { try typed(path, as: String.self) }
    func double(_ path: String) throws -> Double { try typed(path, as: NSNumber.self).doubleValue }
    func int(_ path: String) throws -> Int { try typed(path, as: NSNumber.self).intValue }
    func bool(_ path: String) throws -> Bool { try typed(path, as: Bool.self) }
    func ints(_ path: String) throws -> [Int] { try typed(path, as: [NSNumber].self).map { $0.intValue } }
    func strings(_ path: String) throws -> [String] { try typed(path, as: [String].self) }

    func object(_ path: String) throws -> JSONObject {
        JSONObject(try typed(path, as: [String: Any].self), context: "\(context).\(ManifestKeys.leaf(path))")
    }

    func objects(_ path: String) throws -> [JSONObject] {
        let key = ManifestKeys.leaf(path)
        return try typed(path, as: [[String: Any]].self).enumerated().map { JSONObject($1, context: "\(context).\(key)[\($0)]") }
    }

    private func typed<T>(_ path: String, as type: T.Type) throws -> T {
        let key = ManifestKeys.leaf(path)
        guard let value = values[key], !(value is NSNull) else {
            throw DemoError.invalid("\(context) has no '\(key)' (the app reads \(path))")
        }
        guard let typed = value as? T else {
            throw DemoError.invalid("\(context).\(key) is not a \(T.self)")
        }
        return typed
    }
}

struct TensorSpec {
    let name: String
    let shape: [Int]
    let dtype: String

    var count: Int { shape.reduce(1, *) }
}

struct Tolerance {
    let atol: Double
    let rtol: Double
    let minCosine: Double
}

struct Artifact {
    let format: String
    let path: String
    let precision: String
    let sha256: String
    let tolerance: Tolerance
    let minimumDeploymentTarget: String?
    /// ExecuTorch only: the delegates, "delegated/total ops" with the CPU fallback ops, and the bundled program.
    var backends: [String] = []
    var delegation: String? = nil
    var bundledProgramPath: String? = nil
}

/// The parts of manifest.json the app uses; see `ManifestKeys` for the keys.
struct BundleManifest {
    static let coreMLFormat = "coreml"
    static let executorchFormat = "executorch"

    let modelName: String
    let targetName: String
    let inputs: [TensorSpec]
    let outputs: [TensorSpec]
    let labels: [String]?
    /// nil when the manifest has no image preprocessing this app can apply; `preprocessingProblem` says why.
    let preprocessing: ImagePreprocessing?
    let preprocessingProblem: String?
    let artifacts: [Artifact]
    /// golden/index.json relative to the bundle root; nil for a bundle without raw golden vectors.
    let goldenIndex: String?

    init(json data: Data) throws {
        typealias K = ManifestKeys
        let root = try JSONObject(data: data, context: "manifest.json")
        modelName = try root.object(K.model).string(K.modelName)
        targetName = try root.object(K.target).string(K.targetName)
        inputs = try root.objects(K.inputs).map {
            TensorSpec(name: try $0.string(K.inputName), shape: try $0.ints(K.inputShape), dtype: try $0.string(K.inputDtype))
        }
        outputs = try root.objects(K.outputs).map {
            TensorSpec(name: try $0.string(K.outputName), shape: try $0.ints(K.outputShape), dtype: try $0.string(K.outputDtype))
        }
        labels = try root.has(K.labels) ? root.strings(K.labels) : nil
        var imagePreprocessing: ImagePreprocessing?
        var problem: String? = "the manifest has no preprocessing: photo classification needs it"
        if root.has(K.preprocessing) {
            do {
                imagePreprocessing = try ImagePreprocessing(json: try root.object(K.preprocessing))
                problem = nil
            } catch {
                problem = error.localizedDescription
            }
        }
        preprocessing = imagePreprocessing
        preprocessingProblem = problem
        artifacts = try root.objects(K.artifacts).map { item in
            let tolerance = try item.object(K.artifactTolerance)
            let requirements = try item.object(K.artifactRequirements)
            var artifact = Artifact(
                format: try item.string(K.artifactFormat),
                path: try item.string(K.artifactPath),
                precision: try item.string(K.artifactPrecision),
                sha256: try item.string(K.artifactSha256),
                tolerance: Tolerance(atol: try tolerance.double(K.toleranceAtol), rtol: try tolerance.double(K.toleranceRtol),
                                     minCosine: try tolerance.double(K.toleranceMinCosine)),
                minimumDeploymentTarget: try requirements.has(K.minimumDeploymentTarget)
                    ? requirements.string(K.minimumDeploymentTarget) : nil)
            if requirements.has(K.pteBackends) {
                artifact.backends = try requirements.strings(K.pteBackends)
                let delegation = try requirements.object("delegation")
                let fallback = try delegation.strings(K.pteFallbackOps)
                artifact.delegation = "\(try delegation.int(K.pteDelegatedOps))/\(try delegation.int(K.pteTotalOps)) ops delegated"
                    + (fallback.isEmpty ? "" : "; CPU fallback: \(fallback.joined(separator: ", "))")
                if requirements.has("bundled_program") {
                    artifact.bundledProgramPath = try requirements.object("bundled_program").string(K.pteBundledPath)
                }
            }
            return artifact
        }
        let golden = try root.object(K.golden)
        goldenIndex = try golden.has(K.goldenIndex) ? golden.string(K.goldenIndex) : nil
    }

    func artifact(_ format: String) -> Artifact? { artifacts.first { $0.format == format } }

    func label(_ index: Int) -> String {
        if let labels, index < labels.count { return labels[index] }
        return "class \(index)"
    }
}
