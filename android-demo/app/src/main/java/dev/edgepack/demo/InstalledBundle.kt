package dev.edgepack.demo

import android.content.Context
import java.io.File
import java.io.FileNotFoundException

/** The bundle `edgepack install-into` copied to src/main/assets/edgepack/, read through the APK's assets. */
class InstalledBundle(private val context: Context) {
    val manifest: BundleManifest = BundleManifest.parse(String(bytes("manifest.json")))

    fun bytes(path: String): ByteArray = try {
        context.assets.open("$ASSET_DIR/$path").use { it.readBytes() }
    } catch (e: FileNotFoundException) {
        throw ManifestException("assets/$ASSET_DIR/$path is missing. Install a bundle: $INSTALL_HINT")
    }

    fun golden(): GoldenSet {
        val index = manifest.goldenIndex
            ?: throw ManifestException("the manifest names no golden/index.json: rebuild the bundle with a newer edgepack")
        return GoldenSet.read(String(bytes(index))) { bytes(it) }
    }

    /** The formats of the bundle this app can run, each loaded in its runtime. */
    fun openRunners(threads: Int = 2): List<ModelRunner> = manifest.artifacts.mapNotNull { openRunner(it, threads) }

    /** null for a format this app has no runtime for (e.g. coreml in an iOS bundle). */
    fun openRunner(artifact: Artifact, threads: Int = 2): ModelRunner? = when (artifact.format) {
        BundleManifest.FORMAT_TORCHSCRIPT_LITE -> TorchScriptLiteRunner(copyToFile(artifact), manifest)
        BundleManifest.FORMAT_ONNX -> OnnxRunner(bytes(artifact.path), manifest, threads)
        // Core ML-delegated programs (an iOS bundle) need Apple's runtime: only XNNPACK/portable programs run here.
        BundleManifest.FORMAT_EXECUTORCH ->
            if (artifact.backends.all { it == "XnnpackBackend" }) ExecuTorchRunner(copyToFile(artifact), manifest) else null
        else -> null
    }

    /** The lite interpreter and ExecuTorch load from a path, and assets have none: copy the file out once per content (its sha256). */
    private fun copyToFile(artifact: Artifact): File {
        val file = File(context.filesDir, "edgepack/${artifact.sha256.take(16)}-${File(artifact.path).name}")
        if (!file.exists()) {
            file.parentFile?.mkdirs()
            val partial = File(file.path + ".partial")
            partial.writeBytes(bytes(artifact.path))
            partial.renameTo(file)
        }
        return file
    }

    companion object {
        const val ASSET_DIR = "edgepack"
        const val INSTALL_HINT =
            "edgepack build --target android && edgepack install-into android-demo --bundle dist/<model>/android"
    }
}
