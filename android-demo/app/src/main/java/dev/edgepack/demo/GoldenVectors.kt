package dev.edgepack.demo

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs
import kotlin.math.max
import kotlin.math.min
import kotlin.math.sqrt

/** One golden array: every sample's values, C order, sample on axis 0 of [shape]. */
class GoldenTensor(val name: String, val shape: List<Long>, val data: FloatArray) {
    val sampleSize: Int get() = shape.drop(1).fold(1L) { acc, d -> acc * d }.toInt()

    fun sample(index: Int): FloatArray = data.copyOfRange(index * sampleSize, (index + 1) * sampleSize)
}

/** golden/index.json and its raw little-endian float32 files: the inputs and eager PyTorch's outputs. */
class GoldenSet(val samples: Int, val inputs: List<GoldenTensor>, val expected: List<GoldenTensor>) {
    companion object {
        /** [readFile] opens a path relative to the bundle root, as index.json names them. */
        fun read(indexText: String, readFile: (String) -> ByteArray): GoldenSet = try {
            val k = GoldenKeys
            val index = JSONObject(indexText)
            val samples = index.getInt(k.SAMPLES)
            val order = index.getString(k.BYTE_ORDER)
            if (order != "little") throw ManifestException("golden/index.json: byte_order '$order' is not supported (expected little)")
            val inputs = tensors(index.getJSONArray(k.INPUTS), samples, readFile, k.INPUT_NAME, k.INPUT_FILE, k.INPUT_DTYPE, k.INPUT_SHAPE)
            val expected = tensors(index.getJSONArray(k.EXPECTED), samples, readFile, k.EXPECTED_NAME, k.EXPECTED_FILE,
                k.EXPECTED_DTYPE, k.EXPECTED_SHAPE)
            GoldenSet(samples, inputs, expected)
        } catch (e: JSONException) {
            throw ManifestException("golden/index.json does not hold what this app reads: ${e.message}")
        }

        private fun tensors(
            array: JSONArray, samples: Int, readFile: (String) -> ByteArray,
            nameKey: String, fileKey: String, dtypeKey: String, shapeKey: String
        ): List<GoldenTensor> = List(array.length()) { i ->
            val item = array.getJSONObject(i)
            val name = item.getString(ManifestKeys.leaf(nameKey))
            val dtype = item.getString(ManifestKeys.leaf(dtypeKey))
            if (dtype != "float32") throw ManifestException("golden '$name' is $dtype; this demo app handles float32 tensors only")
            val shape = BundleManifest.longs(item.getJSONArray(ManifestKeys.leaf(shapeKey)))
            if (shape.isEmpty() || shape[0] != samples.toLong()) {
                throw ManifestException("golden '$name' has shape $shape; axis 0 must be the $samples samples")
            }
            val bytes = readFile(item.getString(ManifestKeys.leaf(fileKey)))
            val count = shape.fold(1L) { acc, d -> acc * d }.toInt()
            if (bytes.size != count * 4) throw ManifestException("golden '$name': ${bytes.size} bytes, expected ${count * 4} for shape $shape")
            val data = FloatArray(count)
            ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(data)
            GoldenTensor(name, shape, data)
        }
    }
}

/** One output compared with its reference, the way edgepack's smoke test does (edgepack/compare.py). */
data class Comparison(val ok: Boolean, val maxAbsErr: Double, val cosine: Double, val reason: String)

fun compareOutput(name: String, got: FloatArray, expected: FloatArray, tolerance: Tolerance): Comparison {
    if (got.size != expected.size) {
        return Comparison(false, Double.NaN, Double.NaN, "'$name' has ${got.size} values, expected ${expected.size}")
    }
    var maxErr = 0.0
    var maxRef = 0.0
    var dot = 0.0
    var normGot = 0.0
    var normRef = 0.0
    for (i in got.indices) {
        val g = got[i].toDouble()
        val e = expected[i].toDouble()
        if (g.isNaN() || g.isInfinite()) return Comparison(false, Double.NaN, Double.NaN, "'$name' has NaN or infinite values")
        maxErr = max(maxErr, abs(g - e))
        maxRef = max(maxRef, abs(e))
        dot += g * e
        normGot += g * g
        normRef += e * e
    }
    val cosine = when {
        normGot == 0.0 && normRef == 0.0 -> 1.0
        normGot == 0.0 || normRef == 0.0 -> 0.0
        else -> dot / (sqrt(normGot) * sqrt(normRef))
    }
    val limit = tolerance.atol + tolerance.rtol * maxRef
    val failures = mutableListOf<String>()
    if (maxErr > limit) failures.add("'$name' max abs error ${fmt(maxErr)} > ${fmt(limit)}")
    if (cosine < tolerance.minCosine) failures.add("'$name' cosine ${"%.6f".format(cosine)} < ${tolerance.minCosine}")
    val reason = if (failures.isEmpty()) "within tolerance" else failures.joinToString("; ")
    return Comparison(failures.isEmpty(), maxErr, cosine, reason)
}

/** The verdict for one format over every golden sample: the worst error and cosine, the first failure. */
data class GoldenReport(val format: String, val ok: Boolean, val samples: Int, val maxAbsErr: Double, val minCosine: Double, val reason: String) {
    fun summary(): String = "$format: ${if (ok) "PASS" else "FAIL"} on $samples golden samples " +
        "(max abs error ${fmt(maxAbsErr)}, cosine ${"%.6f".format(minCosine)})" + if (ok) "" else ": $reason"
}

/** Runs every golden sample through [run] (inputs in manifest order -> outputs in manifest order) and compares. */
fun checkGolden(format: String, golden: GoldenSet, tolerance: Tolerance, run: (List<FloatArray>) -> List<FloatArray>): GoldenReport {
    var worstErr = 0.0
    var worstCos = 1.0
    var firstFailure: String? = null
    for (s in 0 until golden.samples) {
        val outputs = run(golden.inputs.map { it.sample(s) })
        if (outputs.size != golden.expected.size) {
            return GoldenReport(format, false, golden.samples, Double.NaN, Double.NaN,
                "sample $s: ${outputs.size} outputs, expected ${golden.expected.size}")
        }
        for ((i, reference) in golden.expected.withIndex()) {
            val c = compareOutput(reference.name, outputs[i], reference.sample(s), tolerance)
            if (!c.maxAbsErr.isNaN()) worstErr = max(worstErr, c.maxAbsErr)
            if (!c.cosine.isNaN()) worstCos = min(worstCos, c.cosine)
            if (!c.ok && firstFailure == null) firstFailure = "sample $s: ${c.reason}"
        }
    }
    return GoldenReport(format, firstFailure == null, golden.samples, worstErr, worstCos, firstFailure ?: "within tolerance")
}

private fun fmt(value: Double): String = "%.3g".format(value)
