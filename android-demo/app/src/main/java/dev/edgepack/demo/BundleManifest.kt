package dev.edgepack.demo

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

/** manifest.json is missing a key this app needs, or holds something it cannot run. */
class ManifestException(message: String) : Exception(message)

data class TensorSpec(val name: String, val shape: List<Long>, val dtype: String) {
    val elementCount: Int get() = shape.fold(1L) { acc, d -> acc * d }.toInt()
}

data class Tolerance(val atol: Double, val rtol: Double, val minCosine: Double)

/** An ExecuTorch program's golden vectors as a BundledProgram (.bpte), checked at atol + rtol * |expected|. */
data class BundledProgramRef(val path: String, val testCases: Int, val atol: Double, val rtol: Double)

/** How an ExecuTorch program was delegated: ops in delegates, all ops, and the ops left to the portable kernels. */
data class Delegation(val delegatedOps: Int, val totalOps: Int, val fallbackOps: List<String>) {
    fun summary(): String = "$delegatedOps/$totalOps ops delegated" +
        if (fallbackOps.isEmpty()) "" else "; CPU fallback: ${fallbackOps.joinToString()}"
}

data class Artifact(
    val format: String,
    val path: String,
    val precision: String,
    val sha256: String,
    val tolerance: Tolerance,
    /** ExecuTorch only: the delegates ("XnnpackBackend"), the delegation and the bundled program. */
    val backends: List<String> = emptyList(),
    val delegation: Delegation? = null,
    val bundledProgram: BundledProgramRef? = null
)

/** The parts of manifest.json the app uses; see [ManifestKeys] for the keys. */
data class BundleManifest(
    val modelName: String,
    val targetName: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val labels: List<String>?,
    /** null when the manifest has no image preprocessing this app can apply; [preprocessingProblem] says why. */
    val preprocessing: ImagePreprocessing?,
    val preprocessingProblem: String?,
    val artifacts: List<Artifact>,
    /** golden/index.json, relative to the bundle root; null for a bundle without raw golden vectors. */
    val goldenIndex: String?
) {
    fun artifact(format: String): Artifact? = artifacts.firstOrNull { it.format == format }

    fun label(index: Int): String = labels?.getOrNull(index) ?: "class $index"

    companion object {
        const val FORMAT_TORCHSCRIPT_LITE = "torchscript_lite"
        const val FORMAT_ONNX = "onnx"
        const val FORMAT_EXECUTORCH = "executorch"

        fun parse(text: String): BundleManifest = try {
            fromJson(JSONObject(text))
        } catch (e: JSONException) {
            throw ManifestException("manifest.json does not hold what this app reads: ${e.message}")
        }

        private fun fromJson(root: JSONObject): BundleManifest {
            val k = ManifestKeys
            val preprocessingJson = root.optJSONObject(k.leaf(k.PREPROCESSING))
            var preprocessing: ImagePreprocessing? = null
            var problem: String? = "the manifest has no preprocessing: photo classification needs it"
            if (preprocessingJson != null) {
                try {
                    preprocessing = ImagePreprocessing.fromJson(preprocessingJson)
                    problem = null
                } catch (e: ManifestException) {
                    problem = e.message
                }
            }
            val golden = root.optJSONObject(k.leaf(k.GOLDEN))
            return BundleManifest(
                modelName = root.getJSONObject(k.leaf(k.MODEL)).getString(k.leaf(k.MODEL_NAME)),
                targetName = root.getJSONObject(k.leaf(k.TARGET)).getString(k.leaf(k.TARGET_NAME)),
                inputs = tensors(root.getJSONArray(k.leaf(k.INPUTS)), k.INPUT_NAME, k.INPUT_SHAPE, k.INPUT_DTYPE),
                outputs = tensors(root.getJSONArray(k.leaf(k.OUTPUTS)), k.OUTPUT_NAME, k.OUTPUT_SHAPE, k.OUTPUT_DTYPE),
                labels = root.optJSONArray(k.leaf(k.LABELS))?.let { arr -> List(arr.length()) { arr.getString(it) } },
                preprocessing = preprocessing,
                preprocessingProblem = problem,
                artifacts = artifacts(root.getJSONArray(k.leaf(k.ARTIFACTS))),
                goldenIndex = golden?.optString(k.leaf(k.GOLDEN_INDEX))?.takeIf { it.isNotEmpty() }
            )
        }

        private fun tensors(array: JSONArray, nameKey: String, shapeKey: String, dtypeKey: String): List<TensorSpec> =
            List(array.length()) { i ->
                val item = array.getJSONObject(i)
                TensorSpec(item.getString(ManifestKeys.leaf(nameKey)), longs(item.getJSONArray(ManifestKeys.leaf(shapeKey))),
                    item.getString(ManifestKeys.leaf(dtypeKey)))
            }

        private fun artifacts(array: JSONArray): List<Artifact> = List(array.length()) { i ->
            val k = ManifestKeys
            val item = array.getJSONObject(i)
            val tolerance = item.getJSONObject(k.leaf(k.ARTIFACT_TOLERANCE))
            val requirements = item.getJSONObject(k.leaf(k.ARTIFACT_REQUIREMENTS))
            val backends = requirements.optJSONArray(k.leaf(k.PTE_BACKENDS))
            val delegation = requirements.optJSONObject("delegation")?.let { d ->
                val fallback = d.getJSONArray(k.leaf(k.PTE_FALLBACK_OPS))
                Delegation(d.getInt(k.leaf(k.PTE_DELEGATED_OPS)), d.getInt(k.leaf(k.PTE_TOTAL_OPS)),
                    List(fallback.length()) { fallback.getString(it) })
            }
            val bundled = requirements.optJSONObject("bundled_program")?.let { b ->
                BundledProgramRef(b.getString(k.leaf(k.PTE_BUNDLED_PATH)), b.getInt(k.leaf(k.PTE_BUNDLED_CASES)),
                    b.getDouble(k.leaf(k.PTE_BUNDLED_ATOL)), b.getDouble(k.leaf(k.PTE_BUNDLED_RTOL)))
            }
            Artifact(
                format = item.getString(k.leaf(k.ARTIFACT_FORMAT)),
                path = item.getString(k.leaf(k.ARTIFACT_PATH)),
                precision = item.getString(k.leaf(k.ARTIFACT_PRECISION)),
                sha256 = item.getString(k.leaf(k.ARTIFACT_SHA256)),
                tolerance = Tolerance(tolerance.getDouble(k.leaf(k.TOLERANCE_ATOL)), tolerance.getDouble(k.leaf(k.TOLERANCE_RTOL)),
                    tolerance.getDouble(k.leaf(k.TOLERANCE_MIN_COSINE))),
                backends = backends?.let { arr -> List(arr.length()) { arr.getString(it) } } ?: emptyList(),
                delegation = delegation,
                bundledProgram = bundled
            )
        }

        internal fun longs(array: JSONArray): List<Long> = List(array.length()) { array.getLong(it) }
    }
}
