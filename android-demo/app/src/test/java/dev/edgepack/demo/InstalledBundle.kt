package dev.edgepack.demo

import java.io.File

/** The bundle `edgepack install-into` put into src/main/assets/edgepack/ (unit tests run from app/). */
object InstalledBundleFiles {
    val dir = File("src/main/assets/edgepack")

    fun text(path: String): String = file(path).readText()

    fun bytes(path: String): ByteArray = file(path).readBytes()

    fun manifest(): BundleManifest = BundleManifest.parse(text("manifest.json"))

    private fun file(path: String): File {
        val file = File(dir, path)
        check(file.exists()) {
            "${file.absolutePath} is missing: put a bundle into the app first with " +
                "`edgepack build --target android && edgepack install-into android-demo --bundle dist/demo-digits/android`"
        }
        return file
    }
}
