import Foundation

/// The bundle `edgepack install-into` copied to EdgepackDemo/Resources/edgepack/, which Xcode copies
/// into the app as a folder (the .mlpackage inside it is compiled at run time by `CoreMLRunner`).
struct InstalledBundle {
    static let folderName = "edgepack"
    static let installHint = "edgepack build --target ios && edgepack install-into ios-demo --bundle dist/<model>/ios, then xcodegen generate"

    let root: URL
    let manifest: BundleManifest

    init(bundle: Bundle = .main) throws {
        guard let root = bundle.url(forResource: Self.folderName, withExtension: nil) else {
            throw DemoError.missing("The app has no edgepack/ folder. Install a bundle: \(Self.installHint)")
        }
        self.root = root
        manifest = try BundleManifest(json: try Self.read(root, "manifest.json"))
    }

    func data(_ relativePath: String) throws -> Data { try Self.read(root, relativePath) }

    func golden() throws -> GoldenSet {
        guard let index = manifest.goldenIndex else {
            throw DemoError.missing("The manifest names no golden/index.json: rebuild the bundle with a newer edgepack")
        }
        return try GoldenSet(index: try data(index), readFile: data)
    }

    func coreMLArtifact() throws -> Artifact {
        guard let artifact = manifest.artifact(BundleManifest.coreMLFormat) else {
            throw DemoError.missing("The bundle has no Core ML artifact (target '\(manifest.targetName)'). \(Self.installHint)")
        }
        return artifact
    }

    private static func read(_ root: URL, _ relativePath: String) throws -> Data {
        let url = root.appendingPathComponent(relativePath)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw DemoError.missing("edgepack/\(relativePath) is missing from the app. Install a bundle: \(installHint)")
        }
        return try Data(contentsOf: url)
    }
}
