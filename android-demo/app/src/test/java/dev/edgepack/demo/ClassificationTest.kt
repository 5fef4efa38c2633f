package dev.edgepack.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class ClassificationTest {
    private val manifest = InstalledBundleFiles.manifest()

    @Test
    fun topPredictionsAreSoftmaxOrderedAndLabelledFromTheManifest() {
        val logits = FloatArray(manifest.labels!!.size) { 0f }.also { it[7] = 5f; it[1] = 3f }
        val top = topPredictions(logits, manifest)
        assertEquals(listOf(manifest.labels!![7], manifest.labels!![1]), top.take(2).map { it.label })
        assertTrue(top[0].probability > top[1].probability && top[1].probability > top[2].probability)
        val all = topPredictions(logits, manifest, count = logits.size)
        assertEquals(1.0f, all.map { it.probability }.sum(), 1e-5f)
    }

    @Test
    fun medianOfAnOddNumberOfRunsIsTheMiddleOne() {
        var calls = 0
        val median = medianMillis(runs = 5, warmup = 2) { calls++ }
        assertEquals(7, calls)
        assertTrue(median >= 0.0)
    }
}
