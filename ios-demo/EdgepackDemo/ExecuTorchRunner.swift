import ExecuTorch
import Foundation

/// The bundle's .pte in ExecuTorch (its Swift package, linked with the Core ML and XNNPACK backends):
/// float32 inputs in manifest order in, outputs in manifest order out. The ios bundle's program is
/// delegated to Core ML; a program built with backends = ["coreml", "xnnpack"] also runs in XNNPACK.
final class ExecuTorchRunner {
    let settingName: String
    private let module: Module
    private let manifest: BundleManifest

    init(programURL: URL, artifact: Artifact, manifest: BundleManifest) throws {
        module = Module(filePath: programURL.path)
        try module.load("forward")
        settingName = "executorch (\(artifact.backends.joined(separator: ", ")))"
        self.manifest = manifest
    }

    func run(_ inputs: [[Float]]) throws -> [[Float]] {
        let tensors = zip(manifest.inputs, inputs).map { spec, values in Tensor<Float>(values, shape: spec.shape) }
        let outputs: [Value] = try module.forward(tensors)
        guard outputs.count == manifest.outputs.count else {
            throw DemoError.invalid("the program returned \(outputs.count) outputs, the manifest names \(manifest.outputs.count)")
        }
        return try outputs.map { value in
            guard let tensor: Tensor<Float> = value.tensor() else { throw DemoError.invalid("the program returned a non-tensor") }
            return tensor.scalars()
        }
    }
}
