package dev.edgepack.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith

/**
 * The installed bundle's golden vectors through the real runtimes on a device or emulator: each
 * format must reproduce eager PyTorch's outputs within the manifest's tolerance, as edgepack's
 * smoke test did on the build machine.
 */
@RunWith(AndroidJUnit4::class)
class GoldenVectorsInstrumentedTest {
    private val bundle = InstalledBundle(InstrumentationRegistry.getInstrumentation().targetContext)
    private val golden = bundle.golden()

    @Test
    fun torchScriptLiteMatchesGoldenVectors() = check(BundleManifest.FORMAT_TORCHSCRIPT_LITE)

    @Test
    fun onnxMatchesGoldenVectors() = check(BundleManifest.FORMAT_ONNX)

    @Test
    fun bothFormatsAgreeOnTheDemoDigit() {
        val runners = bundle.openRunners()
        try {
            assertEquals(2, runners.size)
            val input = golden.inputs.map { it.sample(0) }
            val best = runners.map { r -> r.run(input)[0].let { out -> out.indices.maxByOrNull { out[it] } } }
            assertEquals("formats disagree: $best", 1, best.toSet().size)
        } finally {
            runners.forEach { it.close() }
        }
    }

    private fun check(format: String) {
        val artifact = bundle.manifest.artifact(format)
        assertNotNull("the installed bundle has no $format artifact", artifact)
        val runner = bundle.openRunner(artifact!!) ?: throw AssertionError("no runtime for $format")
        runner.use {
            val report = checkGolden(format, golden, artifact.tolerance) { inputs -> it.run(inputs) }
            assertTrue(report.summary(), report.ok)
        }
    }
}
