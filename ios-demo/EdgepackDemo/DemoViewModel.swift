import PhotosUI
import SwiftUI

@MainActor
final class DemoViewModel: ObservableObject {
    @Published var bundleSummary = "Loading the bundle…"
    @Published var goldenLines: [String] = []
    @Published var predictionLines: [String] = []
    @Published var gridImage: UIImage?
    @Published var photosEnabled = false

    private var loaded: DemoWork.Loaded?

    func start() async {
        do {
            let loaded = try await Task.detached(priority: .userInitiated) { try await DemoWork.load() }.value
            self.loaded = loaded
            bundleSummary = Self.describe(loaded)
            photosEnabled = loaded.bundle.manifest.preprocessing != nil
            goldenLines = ["Running the golden vectors…"]
            goldenLines = await Task.detached(priority: .userInitiated) { DemoWork.checkGoldenVectors(loaded) }.value
        } catch {
            bundleSummary = "No usable bundle: \(error.localizedDescription)"
        }
    }

    func classify(_ item: PhotosPickerItem) async {
        guard let loaded, let preprocessing = loaded.bundle.manifest.preprocessing else { return }
        predictionLines = ["Classifying…"]
        guard let data = try? await item.loadTransferable(type: Data.self), let image = UIImage(data: data),
              let photo = PhotoInput.luminance(of: image) else {
            predictionLines = ["Could not read that photo."]
            return
        }
        let grid = preprocessing.source(luminance: photo.values, width: photo.width, height: photo.height)
        gridImage = PhotoInput.gridImage(grid, preprocessing: preprocessing)
        let input = preprocessing.modelInput(source: grid)
        predictionLines = await Task.detached(priority: .userInitiated) { DemoWork.classify(input, with: loaded) }.value
    }

    private static func describe(_ loaded: DemoWork.Loaded) -> String {
        let manifest = loaded.bundle.manifest
        var lines = ["\(manifest.modelName) (\(manifest.targetName) bundle)"]
        lines += manifest.inputs.map { "input \($0.name): \($0.shape) \($0.dtype)" }
        lines += manifest.outputs.map { "output \($0.name): \($0.shape)" }
        lines.append("Core ML \(loaded.artifact.precision), \(loaded.artifact.minimumDeploymentTarget ?? "")")
        if let problem = manifest.preprocessingProblem { lines.append("photos: off (\(problem))") }
        return lines.joined(separator: "\n")
    }
}
