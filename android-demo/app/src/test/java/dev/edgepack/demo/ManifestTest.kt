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
        for (format in listOf(BundleManifest.FORMAT_TORCHSCRIPT_LITE, BundleManifest.FORMAT_ONNX)) {
            val artifact = installed.artifact(format) ?: throw AssertionError("no $format artifact in the manifest")
            assertTrue("${artifact.path} is not in the installed bundle", java.io.File(InstalledBundleFiles.dir, artifact.path).exists())
            assertTrue(artifact.tolerance.atol > 0 && artifact.tolerance.rtol >= 0 && artifact.tolerance.minCosine in 0.0..1.0)
        }
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
