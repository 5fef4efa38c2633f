import CoreML
import Foundation

/// The model work, off the main thread: golden checks, timing and classification per compute-unit setting.
enum DemoWork {
    struct Loaded {
        let bundle: InstalledBundle
        let artifact: Artifact
        let runners: [CoreMLRunner]
        /// The .pte in ExecuTorch, when the bundle has one (nil, with the reason in `executorchProblem`, if it cannot load).
        let executorch: ExecuTorchRunner?
        let executorchArtifact: Artifact?
        let executorchProblem: String?
    }

    static func load() async throws -> Loaded {
        let bundle = try InstalledBundle()
        let artifact = try bundle.coreMLArtifact()
        let compiled = try await CoreMLRunner.compiledModelURL(for: bundle.root.appendingPathComponent(artifact.path), sha256: artifact.sha256)
        let runners = try CoreMLRunner.computeUnitSettings.map {
            try CoreMLRunner(compiledModelURL: compiled, setting: $0, manifest: bundle.manifest)
        }
        var executorch: ExecuTorchRunner?
        var problem: String?
        let pte = bundle.manifest.artifact(BundleManifest.executorchFormat)
        if let pte {
            do {
                executorch = try ExecuTorchRunner(programURL: bundle.root.appendingPathComponent(pte.path), artifact: pte,
                                                  manifest: bundle.manifest)
            } catch {
                problem = "executorch: not loaded: \(error.localizedDescription)"
            }
        }
        return Loaded(bundle: bundle, artifact: artifact, runners: runners, executorch: executorch, executorchArtifact: pte,
                      executorchProblem: problem)
    }

    /// One line per compute-unit setting: pass/fail against eager PyTorch's outputs, and the median latency.
    static func checkGoldenVectors(_ loaded: Loaded) -> [String] {
        let golden: GoldenSet
        do {
            golden = try loaded.bundle.golden()
        } catch {
            return ["Golden vectors not checked: \(error.localizedDescription)"]
        }
        let coreML = loaded.runners.map { runner in
            do {
                let report = try checkGolden(name: runner.settingName, golden: golden, tolerance: loaded.artifact.tolerance) { try runner.run($0) }
                let inputs = golden.inputs.map { $0.sample(0) }
                let latency = try medianMilliseconds { _ = try runner.run(inputs) }
                return report.summary + String(format: "; p50 %.2f ms", latency)
            } catch {
                return "\(runner.settingName): FAIL: \(error.localizedDescription)"
            }
        }
        return coreML + executorchGoldenLines(loaded, golden: golden)
    }

    /// The .pte against the same golden vectors (the ones its .bpte bundles), its latency, and where its ops run.
    static func executorchGoldenLines(_ loaded: Loaded, golden: GoldenSet) -> [String] {
        if let problem = loaded.executorchProblem { return [problem] }
        guard let runner = loaded.executorch, let artifact = loaded.executorchArtifact else { return [] }
        do {
            let report = try checkGolden(name: runner.settingName, golden: golden, tolerance: artifact.tolerance) { try runner.run($0) }
            let inputs = golden.inputs.map { $0.sample(0) }
            let latency = try medianMilliseconds { _ = try runner.run(inputs) }
            return [report.summary + String(format: "; p50 %.2f ms", latency) + (artifact.delegation.map { "; \($0)" } ?? "")]
        } catch {
            return ["\(runner.settingName): FAIL: \(error.localizedDescription)"]
        }
    }

    /// Top-3 labels and the median latency per compute-unit setting for one preprocessed image.
    static func classify(_ input: [Float], with loaded: Loaded) -> [String] {
        let manifest = loaded.bundle.manifest
        guard manifest.inputs.count == 1, manifest.inputs[0].count == input.count else {
            return ["The model's inputs do not take one preprocessed image."]
        }
        return loaded.runners.map { runner in
            do {
                let logits = try runner.run([input])[0]
                let latency = try medianMilliseconds { _ = try runner.run([input]) }
                let top = topPredictions(logits, manifest: manifest).map { "\($0.label) \(String(format: "%.1f", $0.probability * 100))%" }
                return "\(runner.settingName): \(top.joined(separator: ", ")) · p50 \(String(format: "%.2f", latency)) ms"
            } catch {
                return "\(runner.settingName): failed: \(error.localizedDescription)"
            }
        }
    }

    static func topPredictions(_ logits: [Float], manifest: BundleManifest, count: Int = 3) -> [(label: String, probability: Float)] {
        let top = logits.max() ?? 0
        let weights = logits.map { exp(Double($0 - top)) }
        let total = weights.reduce(0, +)
        return weights.indices.sorted { weights[$0] > weights[$1] }.prefix(count)
            .map { (label: manifest.label($0), probability: Float(weights[$0] / total)) }
    }

    /// Median wall time in milliseconds after `warmup` untimed runs.
    static func medianMilliseconds(runs: Int = 30, warmup: Int = 5, _ block: () throws -> Void) throws -> Double {
        for _ in 0..<warmup { try block() }
        var times: [Double] = []
        for _ in 0..<runs {
            let start = DispatchTime.now().uptimeNanoseconds
            try block()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
        }
        times.sort()
        return runs % 2 == 1 ? times[runs / 2] : (times[runs / 2 - 1] + times[runs / 2]) / 2
    }
}
