package dev.edgepack.demo

/**
 * Every key this app reads from the bundle, in one place: [ManifestKeys] for manifest.json,
 * [GoldenKeys] for golden/index.json.
 *
 * Each value is a key path: "a.b" is key b of object a, "a[]" each element of list a, and a "?"
 * after a key means it may be absent or null. edgepack's tests/test_app_contract.py parses this
 * file and checks every path against a manifest edgepack really writes (and its JSON Schema), so
 * a renamed key fails edgepack's CI instead of this app on a phone. Readers look up [leaf] of a
 * path in the object that holds it.
 */
object ManifestKeys {
    const val MODEL = "model"
    const val MODEL_NAME = "model.name"
    const val TARGET = "target"
    const val TARGET_NAME = "target.name"

    const val INPUTS = "inputs"
    const val INPUT_NAME = "inputs[].name"
    const val INPUT_SHAPE = "inputs[].shape"
    const val INPUT_DTYPE = "inputs[].dtype"
    const val OUTPUTS = "outputs"
    const val OUTPUT_NAME = "outputs[].name"
    const val OUTPUT_SHAPE = "outputs[].shape"
    const val OUTPUT_DTYPE = "outputs[].dtype"
    const val LABELS = "labels?"

    const val PREPROCESSING = "preprocessing?"
    const val PRE_SOURCE = "preprocessing?.source"
    const val PRE_SCALE = "preprocessing?.scale"
    const val PRE_RESIZE = "preprocessing?.resize"
    const val PRE_RESIZE_MODE = "preprocessing?.resize_mode"
    const val PRE_ALIGN_CORNERS = "preprocessing?.align_corners"
    const val PRE_MEAN = "preprocessing?.mean"
    const val PRE_STD = "preprocessing?.std"
    const val PRE_LAYOUT = "preprocessing?.layout"

    const val ARTIFACTS = "artifacts"
    const val ARTIFACT_FORMAT = "artifacts[].format"
    const val ARTIFACT_PATH = "artifacts[].path"
    const val ARTIFACT_PRECISION = "artifacts[].precision"
    const val ARTIFACT_SHA256 = "artifacts[].sha256"
    const val ARTIFACT_TOLERANCE = "artifacts[].tolerance"
    const val TOLERANCE_ATOL = "artifacts[].tolerance.atol"
    const val TOLERANCE_RTOL = "artifacts[].tolerance.rtol"
    const val TOLERANCE_MIN_COSINE = "artifacts[].tolerance.min_cosine"
    const val ARTIFACT_REQUIREMENTS = "artifacts[].requirements"
    /** ExecuTorch (.pte): the delegates the program calls ("XnnpackBackend"). */
    const val PTE_BACKENDS = "artifacts[].requirements.backends?"
    /** ExecuTorch: ops per delegate and the ops left to the portable CPU kernels, shown beside the latency. */
    const val PTE_DELEGATED_OPS = "artifacts[].requirements.delegation?.delegated_ops"
    const val PTE_TOTAL_OPS = "artifacts[].requirements.delegation?.total_ops"
    const val PTE_FALLBACK_OPS = "artifacts[].requirements.delegation?.fallback_ops"
    /** ExecuTorch: the golden vectors as a BundledProgram (.bpte), and the tolerance they are checked at. */
    const val PTE_BUNDLED_PATH = "artifacts[].requirements.bundled_program?.path"
    const val PTE_BUNDLED_CASES = "artifacts[].requirements.bundled_program?.test_cases"
    const val PTE_BUNDLED_ATOL = "artifacts[].requirements.bundled_program?.atol"
    const val PTE_BUNDLED_RTOL = "artifacts[].requirements.bundled_program?.rtol"

    const val GOLDEN = "golden"
    const val GOLDEN_INDEX = "golden.index"

    /** How preprocessing.source describes the image the model was trained on: "8x8 grayscale, values 0..16". */
    const val SOURCE_PATTERN = """^(\d+)x(\d+) grayscale, values 0\.\.(\d+)$"""

    /** The key a path ends in, without its list and optional marks. */
    fun leaf(path: String): String = path.substringAfterLast('.').removeSuffix("?").removeSuffix("[]")
}

object GoldenKeys {
    const val SAMPLES = "samples"
    const val BYTE_ORDER = "byte_order"
    const val INPUTS = "inputs"
    const val INPUT_NAME = "inputs[].name"
    const val INPUT_FILE = "inputs[].file"
    const val INPUT_DTYPE = "inputs[].dtype"
    const val INPUT_SHAPE = "inputs[].shape"
    const val EXPECTED = "expected"
    const val EXPECTED_NAME = "expected[].name"
    const val EXPECTED_FILE = "expected[].file"
    const val EXPECTED_DTYPE = "expected[].dtype"
    const val EXPECTED_SHAPE = "expected[].shape"
}
