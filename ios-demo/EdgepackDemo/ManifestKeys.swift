import Foundation

/// Every key this app reads from the bundle, in one place: `ManifestKeys` for manifest.json,
/// `GoldenKeys` for golden/index.json.
///
/// Each value is a key path: "a.b" is key b of object a, "a[]" each element of list a, and a "?"
/// after a key means it may be absent or null. edgepack's tests/test_app_contract.py parses this
/// file and checks every path against a manifest edgepack really writes (and its JSON Schema), so
/// a renamed key fails edgepack's CI instead of this app on a phone. Readers look up `leaf(_:)` of
/// a path in the object that holds it.
enum ManifestKeys {
    static let model = "model"
    static let modelName = "model.name"
    static let target = "target"
    static let targetName = "target.name"

    static let inputs = "inputs"
    static let inputName = "inputs[].name"
    static let inputShape = "inputs[].shape"
    static let inputDtype = "inputs[].dtype"
    static let outputs = "outputs"
    static let outputName = "outputs[].name"
    static let outputShape = "outputs[].shape"
    static let outputDtype = "outputs[].dtype"
    static let labels = "labels?"

    static let preprocessing = "preprocessing?"
    static let preSource = "preprocessing?.source"
    static let preScale = "preprocessing?.scale"
    static let preResize = "preprocessing?.resize"
    static let preResizeMode = "preprocessing?.resize_mode"
    static let preAlignCorners = "preprocessing?.align_corners"
    static let preMean = "preprocessing?.mean"
    static let preStd = "preprocessing?.std"
    static let preLayout = "preprocessing?.layout"

    static let artifacts = "artifacts"
    static let artifactFormat = "artifacts[].format"
    static let artifactPath = "artifacts[].path"
    static let artifactPrecision = "artifacts[].precision"
    static let artifactSha256 = "artifacts[].sha256"
    static let artifactTolerance = "artifacts[].tolerance"
    static let toleranceAtol = "artifacts[].tolerance.atol"
    static let toleranceRtol = "artifacts[].tolerance.rtol"
    static let toleranceMinCosine = "artifacts[].tolerance.min_cosine"
    static let artifactRequirements = "artifacts[].requirements"
    static let minimumDeploymentTarget = "artifacts[].requirements.minimum_deployment_target?"
    /// ExecuTorch (.pte): the delegates the program calls ("CoreMLBackend", "XnnpackBackend").
    static let pteBackends = "artifacts[].requirements.backends?"
    /// ExecuTorch: ops per delegate and the ops left to the portable CPU kernels, shown beside the latency.
    static let pteDelegatedOps = "artifacts[].requirements.delegation?.delegated_ops"
    static let pteTotalOps = "artifacts[].requirements.delegation?.total_ops"
    static let pteFallbackOps = "artifacts[].requirements.delegation?.fallback_ops"
    /// ExecuTorch: the golden vectors as a BundledProgram (.bpte), and the tolerance they are checked at.
    static let pteBundledPath = "artifacts[].requirements.bundled_program?.path"
    static let pteBundledCases = "artifacts[].requirements.bundled_program?.test_cases"
    static let pteBundledAtol = "artifacts[].requirements.bundled_program?.atol"
    static let pteBundledRtol = "artifacts[].requirements.bundled_program?.rtol"

    static let golden = "golden"
    static let goldenIndex = "golden.index"

    /// How preprocessing.source describes the image the model was trained on: "8x8 grayscale, values 0..16".
    static let sourcePattern = #"^(\d+)x(\d+) grayscale, values 0\.\.(\d+)$"#

    /// The key a path ends in, without its list and optional marks.
    static func leaf(_ path: String) -> String {
        var key = path.split(separator: ".").last.map(String.init) ?? path
        if key.hasSuffix("?") { key.removeLast() }
        if key.hasSuffix("[]") { key.removeLast(2) }
        return key
    }
}

enum GoldenKeys {
    static let samples = "samples"
    static let byteOrder = "byte_order"
    static let inputs = "inputs"
    static let inputName = "inputs[].name"
    static let inputFile = "inputs[].file"
    static let inputDtype = "inputs[].dtype"
    static let inputShape = "inputs[].shape"
    static let expected = "expected"
    static let expectedName = "expected[].name"
    static let expectedFile = "expected[].file"
    static let expectedDtype = "expected[].dtype"
    static let expectedShape = "expected[].shape"
}
