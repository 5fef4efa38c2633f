package dev.edgepack.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Color
import android.net.Uri
import android.os.Bundle
import android.widget.Button
import android.widget.ImageView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.contract.ActivityResultContracts
import androidx.lifecycle.lifecycleScope
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.util.concurrent.Executors

/**
 * Loads the installed bundle's artifacts, checks them against the golden vectors on launch, and
 * classifies a picture from the gallery or the camera with every format, timing each.
 */
class MainActivity : ComponentActivity() {
    // The runtimes are used from one background thread only: model work never blocks the UI.
    private val modelThread = Executors.newSingleThreadExecutor().asCoroutineDispatcher()
    private var bundle: InstalledBundle? = null
    private var runners: List<ModelRunner> = emptyList()

    private lateinit var bundleText: TextView
    private lateinit var goldenText: TextView
    private lateinit var resultText: TextView
    private lateinit var gridView: ImageView

    private val pickImage = registerForActivityResult(ActivityResultContracts.GetContent()) { uri: Uri? ->
        uri?.let { picked -> classify { decodeBounded(picked) } }
    }
    private val takePhoto = registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bitmap: Bitmap? ->
        bitmap?.let { photo -> classify { photo } }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        bundleText = findViewById(R.id.bundle_text)
        goldenText = findViewById(R.id.golden_text)
        resultText = findViewById(R.id.result_text)
        gridView = findViewById(R.id.grid_view)
        findViewById<Button>(R.id.pick_button).setOnClickListener { pickImage.launch("image/*") }
        findViewById<Button>(R.id.camera_button).setOnClickListener { takePhoto.launch(null) }
        lifecycleScope.launch { loadAndCheck() }
    }

    override fun onDestroy() {
        runners.forEach { it.close() }
        modelThread.close()
        super.onDestroy()
    }

    private suspend fun loadAndCheck() {
        goldenText.text = getString(R.string.checking_golden)
        val (about, golden) = withContext<Pair<String, String>>(modelThread) {
            try {
                val loaded = InstalledBundle(applicationContext)
                bundle = loaded
                runners = loaded.openRunners()
                describe(loaded.manifest) to checkGoldenVectors(loaded)
            } catch (e: Exception) {
                "No usable bundle: ${e.message}" to ""
            }
        }
        bundleText.text = about
        goldenText.text = golden
    }

    private fun describe(manifest: BundleManifest): String = buildString {
        append("${manifest.modelName} (${manifest.targetName} bundle)\n")
        manifest.inputs.forEach { append("input ${it.name}: ${it.shape} ${it.dtype}\n") }
        manifest.outputs.forEach { append("output ${it.name}: ${it.shape}\n") }
        append("formats: ${runners.joinToString { it.format }}\n")
        manifest.artifacts.forEach { artifact ->  // ExecuTorch: where each op runs (a CPU fallback op is slow on a phone)
            artifact.delegation?.let { append("${artifact.format} ${artifact.backends.joinToString()}: ${it.summary()}\n") }
        }
        manifest.preprocessingProblem?.let { append("photos: off ($it)\n") }
    }

    /** Every golden sample through every format, against eager PyTorch's outputs with the manifest's tolerance. */
    private fun checkGoldenVectors(loaded: InstalledBundle): String {
        val golden = try {
            loaded.golden()
        } catch (e: ManifestException) {
            return "Golden vectors: not checked: ${e.message}"
        }
        return runners.joinToString("\n") { runner ->
            val tolerance = loaded.manifest.artifact(runner.format)!!.tolerance
            val report = try {
                checkGolden(runner.format, golden, tolerance) { runner.run(it) }.summary()
            } catch (e: Exception) {
                "${runner.format}: FAIL: ${e.message}"
            }
            val inputs = golden.inputs.map { it.sample(0) }
            val latency = runCatching { medianMillis(runs = 30, warmup = 5) { runner.run(inputs) } }.getOrNull()
            report + (latency?.let { "; p50 ${"%.2f".format(it)} ms" } ?: "")
        }
    }

    private fun classify(image: () -> Bitmap?) {
        val loaded = bundle ?: run {
            resultText.text = getString(R.string.bundle_not_loaded)
            return
        }
        val pre = loaded.manifest.preprocessing
        if (pre == null) {
            resultText.text = getString(R.string.no_preprocessing, loaded.manifest.preprocessingProblem)
            return
        }
        resultText.text = getString(R.string.classifying)
        lifecycleScope.launch {
            val (grid, text) = withContext<Pair<Bitmap?, String>>(modelThread) {
                val bitmap = image() ?: return@withContext null to "Could not read that picture."
                val source = pre.sourceFromLuminance(luminance(bitmap), bitmap.width, bitmap.height)
                val input = pre.toModelInput(source)
                if (loaded.manifest.inputs.size != 1 || loaded.manifest.inputs[0].elementCount != input.size) {
                    return@withContext null to "The model's inputs ${loaded.manifest.inputs} do not take one preprocessed image."
                }
                gridBitmap(source, pre) to runners.joinToString("\n\n") { runner -> classifyWith(runner, input, loaded.manifest) }
            }
            grid?.let { gridView.setImageBitmap(it) }
            resultText.text = text
        }
    }

    private fun classifyWith(runner: ModelRunner, input: FloatArray, manifest: BundleManifest): String = try {
        val logits = runner.run(listOf(input))[0]
        val latency = medianMillis(runs = 30, warmup = 5) { runner.run(listOf(input)) }
        val top = topPredictions(logits, manifest).joinToString { "${it.label} %.1f%%".format(it.probability * 100) }
        "${runner.format}: $top\n  p50 ${"%.2f".format(latency)} ms"
    } catch (e: Exception) {
        "${runner.format}: failed: ${e.message}"
    }

    /** Large photos are decoded at a reduced size: the model sees an 8x8 grid anyway. */
    private fun decodeBounded(uri: Uri, maxSide: Int = 512): Bitmap? {
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, bounds) }
        var sample = 1
        while (maxOf(bounds.outWidth, bounds.outHeight) / (sample * 2) >= maxSide) sample *= 2
        val options = BitmapFactory.Options().apply { inSampleSize = sample }
        return contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, options) }
    }

    private fun luminance(bitmap: Bitmap): FloatArray {
        val pixels = IntArray(bitmap.width * bitmap.height)
        bitmap.getPixels(pixels, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
        return FloatArray(pixels.size) {
            val p = pixels[it]
            (0.299f * Color.red(p) + 0.587f * Color.green(p) + 0.114f * Color.blue(p)) / 255f
        }
    }

    /** What the model sees, before resizing: ink dark on white, enlarged without smoothing. */
    private fun gridBitmap(source: FloatArray, pre: ImagePreprocessing): Bitmap {
        val colors = IntArray(source.size) {
            val level = 255 - (255 * source[it] / pre.sourceMax).toInt().coerceIn(0, 255)
            Color.rgb(level, level, level)
        }
        val grid = Bitmap.createBitmap(colors, pre.sourceWidth, pre.sourceHeight, Bitmap.Config.ARGB_8888)
        return Bitmap.createScaledBitmap(grid, pre.sourceWidth * 24, pre.sourceHeight * 24, false)
    }
}
