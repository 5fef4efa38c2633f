import PhotosUI
import SwiftUI

struct ContentView: View {
    @StateObject private var demo = DemoViewModel()
    @State private var pickedItem: PhotosPickerItem?

    var body: some View {
        NavigationStack {
            List {
                Section("Bundle") {
                    Text(demo.bundleSummary).font(.footnote.monospaced()).textSelection(.enabled)
                }
                Section("Golden vectors: Core ML on this device vs eager PyTorch") {
                    ForEach(demo.goldenLines, id: \.self) { Text($0).font(.footnote) }
                }
                Section("Classify a photo of a digit") {
                    PhotosPicker(selection: $pickedItem, matching: .images) {
                        Label("Choose a photo", systemImage: "photo")
                    }
                    .disabled(!demo.photosEnabled)
                    if let grid = demo.gridImage {
                        Image(uiImage: grid).interpolation(.none).resizable().frame(width: 160, height: 160)
                    }
                    ForEach(demo.predictionLines, id: \.self) { Text($0).font(.footnote) }
                }
            }
            .navigationTitle("edgepack demo")
        }
        .task { await demo.start() }
        .onChange(of: pickedItem) { item in
            guard let item else { return }
            Task { await demo.classify(item) }
        }
    }
}
