import SwiftUI

@main
struct EdgepackDemoApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
