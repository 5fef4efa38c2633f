import CoreML
import XCTest
@testable import EdgepackDemo

/// The installed bundle's golden vectors through Core ML on the simulator or device, with every
/// compute-unit setting: each must reproduce eager PyTorch's outputs within the manifest's tolerance.
final class GoldenVectorTests: XCTestCase {
    func testCoreMLMatchesGoldenVectorsWithEveryComputeUnitSetting() async throws {
        let loaded = try await DemoWork.load()
        let golden = try loaded.bundle.golden()
        XCTAssertEqual(loaded.runners.map(\.settingName), ["cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all"])
        for runner in loaded.runners {
            let report = try checkGolden(name: runner.settingName, golden: golden, tolerance: loaded.artifact.tolerance) {
                try runner.run($0)
            }
            XCTAssertTrue(report.ok, report.summary)
        }
    }

    func testOutputsOffByMoreThanTheToleranceFail() throws {
        let bundle = try InstalledBundle()
        let golden = try bundle.golden()
        let tolerance = try bundle.coreMLArtifact().tolerance
        var sample = 0
        let report = checkGolden(name: "perturbed", golden: golden, tolerance: tolerance) { _ in
            var outputs = golden.expected.map { $0.sample(sample) }
            if sample == golden.samples - 1 { outputs[0][0] += Float(10 * (tolerance.atol + 1)) }
            sample += 1
            return outputs
        }
        XCTAssertFalse(report.ok)
        XCTAssertTrue(report.reason.contains("sample \(golden.samples - 1)"), report.reason)
    }
}

final class ManifestTests: XCTestCase {
    func testShapesLabelsAndToleranceComeFromTheManifest() throws {
        let manifest = try InstalledBundle().manifest
        XCTAssertEqual(manifest.targetName, "ios")
        let input = try XCTUnwrap(manifest.inputs.first)
        let preprocessing = try XCTUnwrap(manifest.preprocessing, manifest.preprocessingProblem ?? "")
        XCTAssertEqual(input.shape, [1, 1, preprocessing.resizeHeight, preprocessing.resizeWidth])
        XCTAssertEqual(manifest.labels?.count, manifest.outputs.first?.shape.last)
        let coreML = try XCTUnwrap(manifest.artifact(BundleManifest.coreMLFormat))
        XCTAssertEqual(coreML.minimumDeploymentTarget, "iOS16")
        XCTAssertGreaterThan(coreML.tolerance.atol, 0)
    }

    func testGoldenFilesMatchTheManifestShapes() throws {
        let bundle = try InstalledBundle()
        let golden = try bundle.golden()
        XCTAssertEqual(golden.inputs.map(\.name), bundle.manifest.inputs.map(\.name))
        XCTAssertEqual(golden.expected.map(\.name), bundle.manifest.outputs.map(\.name))
        XCTAssertEqual(golden.inputs[0].sampleSize, bundle.manifest.inputs[0].count)
    }

    func testMissingKeyIsAClearError() throws {
        let bundle = try InstalledBundle()
        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: try bundle.data("manifest.json")) as? [String: Any])
        json.removeValue(forKey: ManifestKeys.leaf(ManifestKeys.inputs))
        XCTAssertThrowsError(try BundleManifest(json: try JSONSerialization.data(withJSONObject: json))) { error in
            XCTAssertTrue(error.localizedDescription.contains("inputs"), error.localizedDescription)
        }
    }
}

final class ImagePreprocessingTests: XCTestCase {
    /// preprocess_case.json: an 8x8 digit and edgepack.demo.preprocess's output (checked by edgepack's contract test).
    func testMatchesEdgepackDemoPreprocess() throws {
        let preprocessing = try XCTUnwrap(try InstalledBundle().manifest.preprocessing)
        let url = try XCTUnwrap(Bundle(for: Self.self).url(forResource: "preprocess_case", withExtension: "json"))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let source = try XCTUnwrap(json["source"] as? [NSNumber]).map(\.floatValue)
        let expected = try XCTUnwrap(json["expected"] as? [NSNumber]).map(\.floatValue)
        let got = preprocessing.modelInput(source: source)
        XCTAssertEqual(got.count, expected.count)
        for (g, e) in zip(got, expected) { XCTAssertEqual(g, e, accuracy: 1e-5) }
    }

    func testLightInkOnDarkPaperGivesTheSameGridAsDarkOnLight() throws {
        let preprocessing = try XCTUnwrap(try InstalledBundle().manifest.preprocessing)
        func bar(lightBackground: Bool) -> [Float] {
            (0..<(64 * 64)).map { i in
                let ink = (28...35).contains(i % 64) && (8...55).contains(i / 64)
                return ink == lightBackground ? 0.05 : 0.95
            }
        }
        let dark = preprocessing.source(luminance: bar(lightBackground: true), width: 64, height: 64)
        let light = preprocessing.source(luminance: bar(lightBackground: false), width: 64, height: 64)
        XCTAssertEqual(dark, light)
        XCTAssertEqual(dark[0], 0)
        XCTAssertGreaterThan(dark.reduce(0, +), 0)
    }
}
