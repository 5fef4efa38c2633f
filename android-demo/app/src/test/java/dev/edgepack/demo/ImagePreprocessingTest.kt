package dev.edgepack.demo

import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class ImagePreprocessingTest {
    private val pre = InstalledBundleFiles.manifest().preprocessing!!

    /** preprocess_case.json: an 8x8 digit and edgepack.demo.preprocess's output for it (written by edgepack's contract test). */
    @Test
    fun matchesEdgepackDemoPreprocess() {
        val case = JSONObject(javaClass.classLoader!!.getResource("preprocess_case.json")!!.readText())
        val source = floats(case, "source")
        val expected = floats(case, "expected")
        assertArrayEquals(expected, pre.toModelInput(source), 1e-5f)
    }

    @Test
    fun bilinearResizeKeepsAConstantImageConstant() {
        val out = ImagePreprocessing.resizeBilinear(FloatArray(64) { 0.5f }, 8, 8, 32, 32)
        assertTrue(out.all { kotlin.math.abs(it - 0.5f) < 1e-6f })
    }

    @Test
    fun photoOfADarkBarBecomesInkCountsInTheMiddleColumns() {
        val grid = pre.sourceFromLuminance(barImage(lightBackground = true), 64, 64)
        assertEquals(pre.sourceWidth * pre.sourceHeight, grid.size)
        assertTrue(grid.all { it >= 0f && it <= pre.sourceMax && it == Math.round(it).toFloat() })
        assertEquals(0f, grid[0], 0f) // corner: background
        assertTrue(grid.sum() > 0f)
    }

    @Test
    fun lightInkOnDarkPaperGivesTheSameGrid() {
        val dark = pre.sourceFromLuminance(barImage(lightBackground = true), 64, 64)
        val light = pre.sourceFromLuminance(barImage(lightBackground = false), 64, 64)
        assertArrayEquals(dark, light, 0f)
    }

    @Test
    fun blankPhotoHasNoInk() {
        assertTrue(pre.sourceFromLuminance(FloatArray(64 * 64) { 0.9f }, 64, 64).all { it == 0f })
    }

    private fun barImage(lightBackground: Boolean): FloatArray = FloatArray(64 * 64) { i ->
        val x = i % 64
        val y = i / 64
        val ink = x in 28..35 && y in 8..55
        if (ink == lightBackground) 0.05f else 0.95f
    }

    private fun floats(json: JSONObject, key: String): FloatArray {
        val array = json.getJSONArray(key)
        return FloatArray(array.length()) { array.getDouble(it).toFloat() }
    }
}
