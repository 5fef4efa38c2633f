package dev.edgepack.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import org.json.JSONObject

class ManifestTest {
    private val installed = InstalledBundleFiles.manifest()

    @Test
    fun installedManifestDescribesTheAndroidBundle() {
        assertEquals("android", installed.targetName)
        for (format in listOf(BundleManifest.FORMAT_EXECUTORCH, BundleManifest.FORMAT_TORCHSCRIPT_LITE, BundleManifest.FORMAT_ONNX)) {
            val artifact = installed.artifact(format) ?: throw AssertionError("no $format artifact in the manifest")
            assertTrue("${artifact.path} is not in the installed bundle", java.io.File(InstalledBundleFiles.dir, artifact.path).exists())
            assertTrue(artifact.tolerance.atol > 0 && artifact.tolerance.rtol >= 0 && artifact.tolerance.minCosine in 0.0..1.0)
        }
    }

    @Test
    fun theExecuTorchProgramIsXnnpackDelegatedAndShipsItsBundledProgram() {
        val pte = installed.artifact(BundleManifest.FORMAT_EXECUTORCH) ?: throw AssertionError("no executorch artifact")
        assertEquals(listOf("XnnpackBackend"), pte.backends)
        val delegation = pte.delegation ?: throw AssertionError("no delegation in the manifest")
        assertTrue(delegation.delegatedOps in 1..delegation.totalOps)
        val bundled = pte.bundledProgram ?: throw AssertionError("no bundled program in the manifest")
        assertTrue("${bundled.path} is not in the installed bundle", java.io.File(InstalledBundleFiles.dir, bundled.path).exists())
        assertTrue(bundled.testCases > 0 && bundled.atol > 0)
    }

    @Test
    fun inputShapeAndLabelsComeFromTheManifest() {
        val input = installed.inputs.single()
        val pre = installed.preprocessing ?: throw AssertionError(installed.preprocessingProblem)
        assertEquals(listOf(1L, 1L, pre.resizeHeight.toLong(), pre.resizeWidth.toLong()), input.shape)
        assertEquals(installed.outputs.single().shape.last().toInt(), installed.labels!!.size)
        assertEquals("float32", input.dtype)
    }

    @Test
    fun manifestWithoutPreprocessingStillLoadsAndSaysWhyPhotosAreOff() {
        val json = JSONObject(InstalledBundleFiles.text("manifest.json"))
        json.put(ManifestKeys.leaf(ManifestKeys.PREPROCESSING), JSONObject.NULL)
        json.put(ManifestKeys.leaf(ManifestKeys.LABELS), JSONObject.NULL)
        val manifest = BundleManifest.parse(json.toString())
        assertNull(manifest.preprocessing)
        assertTrue(manifest.preprocessingProblem!!.contains("no preprocessing"))
        assertEquals("class 3", manifest.label(3))
    }

    @Test
    fun unsupportedPreprocessingIsReportedNotGuessed() {
        val json = JSONObject(InstalledBundleFiles.text("manifest.json"))
        json.getJSONObject("preprocessing").put("resize_mode", "nearest")
        val manifest = BundleManifest.parse(json.toString())
        assertNull(manifest.preprocessing)
        assertTrue(manifest.preprocessingProblem!!.contains("resize_mode"))
    }

    @Test
    fun missingKeyIsAClearError() {
        val json = JSONObject(InstalledBundleFiles.text("manifest.json"))
        json.remove(ManifestKeys.leaf(ManifestKeys.INPUTS))
        try {
            BundleManifest.parse(json.toString())
            fail("a manifest without inputs was accepted")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("inputs"))
        }
    }

    @Test
    fun goldenIndexIsNamed() {
        assertNotNull("manifest.golden.index is missing", installed.goldenIndex)
    }
}
