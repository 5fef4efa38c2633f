package dev.edgepack.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class GoldenVectorsTest {
    private val manifest = InstalledBundleFiles.manifest()
    private val indexText = InstalledBundleFiles.text(manifest.goldenIndex!!)
    private val golden = GoldenSet.read(indexText) { InstalledBundleFiles.bytes(it) }
    private val tolerance = manifest.artifact(BundleManifest.FORMAT_ONNX)!!.tolerance

    @Test
    fun goldenFilesMatchTheManifestShapes() {
        assertEquals(manifest.inputs.map { it.name }, golden.inputs.map { it.name })
        assertEquals(manifest.outputs.map { it.name }, golden.expected.map { it.name })
        assertEquals(manifest.inputs[0].elementCount, golden.inputs[0].sampleSize)
        assertEquals(manifest.outputs[0].elementCount, golden.expected[0].sampleSize)
        assertTrue(golden.samples > 0)
    }

    @Test
    fun referenceOutputsPassTheirOwnCheck() {
        var sample = 0
        val report = checkGolden("reference", golden, tolerance) { golden.expected.map { it.sample(sample++) } }
        assertTrue(report.summary(), report.ok)
    }

    @Test
    fun outputsOffByMoreThanTheToleranceFail() {
        var sample = 0
        val report = checkGolden("perturbed", golden, tolerance) {
            val outputs = golden.expected.map { it.sample(sample).copyOf() }
            if (sample == golden.samples - 1) outputs[0][0] += (10 * (tolerance.atol + 1)).toFloat()
            sample++
            outputs
        }
        assertFalse(report.ok)
        assertTrue(report.reason, report.reason.contains("sample ${golden.samples - 1}"))
    }

    @Test
    fun truncatedBinaryFileIsAClearError() {
        try {
            GoldenSet.read(indexText) { InstalledBundleFiles.bytes(it).copyOf(8) }
            fail("a truncated golden file was accepted")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("bytes"))
        }
    }
}
