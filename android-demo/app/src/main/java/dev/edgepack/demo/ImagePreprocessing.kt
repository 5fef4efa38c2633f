package dev.edgepack.demo

import org.json.JSONObject
import kotlin.math.roundToInt

/**
 * The manifest's preprocessing for image models trained on small grayscale grids (the demo: 8x8
 * cells holding 0..16, the count of ink pixels in each 4x4 block of a 32x32 bitmap), applied as
 * edgepack.demo.preprocess does: x * scale, bilinear resize (align_corners=false) to resize,
 * (x - mean) / std, NCHW with one channel.
 */
data class ImagePreprocessing(
    val sourceWidth: Int,
    val sourceHeight: Int,
    val sourceMax: Int,
    val scale: Float,
    val resizeHeight: Int,
    val resizeWidth: Int,
    val mean: Float,
    val std: Float
) {
    /** Source grid values (row-major, sourceHeight x sourceWidth) -> model input (1 x 1 x resizeHeight x resizeWidth). */
    fun toModelInput(source: FloatArray): FloatArray {
        require(source.size == sourceWidth * sourceHeight) {
            "expected ${sourceHeight}x$sourceWidth source values, got ${source.size}"
        }
        val scaled = FloatArray(source.size) { source[it] * scale }
        val resized = resizeBilinear(scaled, sourceHeight, sourceWidth, resizeHeight, resizeWidth)
        return FloatArray(resized.size) { (resized[it] - mean) / std }
    }

    /**
     * A photo's luminance (row-major, 0 = black .. 1 = white) -> the source grid, made the way the
     * training data was: the digit's ink is cropped to a centred square with a margin, sampled as a
     * (4 x sourceHeight) x (4 x sourceWidth) bitmap, and each cell counts its ink samples (scaled to 0..sourceMax).
     */
    fun sourceFromLuminance(luminance: FloatArray, width: Int, height: Int): FloatArray {
        require(luminance.size == width * height) { "expected ${width}x$height luminance values, got ${luminance.size}" }
        val ink = inkMask(luminance, width, height)
        val box = inkBox(ink, width, height) ?: return FloatArray(sourceWidth * sourceHeight)
        val side = maxOf(box.width, box.height) * SQUARE_PER_INK
        val left = box.centerX - side / 2
        val top = box.centerY - side / 2
        val sub = SAMPLES_PER_CELL
        val out = FloatArray(sourceWidth * sourceHeight)
        for (row in 0 until sourceHeight) for (col in 0 until sourceWidth) {
            var count = 0
            for (sy in 0 until sub) for (sx in 0 until sub) {
                val x = (left + (col * sub + sx + 0.5f) * side / (sourceWidth * sub)).toInt()
                val y = (top + (row * sub + sy + 0.5f) * side / (sourceHeight * sub)).toInt()
                if (x in 0 until width && y in 0 until height && ink[y * width + x]) count++
            }
            out[row * sourceWidth + col] = (count.toFloat() * sourceMax / (sub * sub)).roundToInt().toFloat()
        }
        return out
    }

    private class Box(val left: Int, val top: Int, val right: Int, val bottom: Int) {
        val width get() = (right - left + 1).toFloat()
        val height get() = (bottom - top + 1).toFloat()
        val centerX get() = (left + right + 1) / 2f
        val centerY get() = (top + bottom + 1) / 2f
    }

    private fun inkBox(ink: BooleanArray, width: Int, height: Int): Box? {
        var left = width; var top = height; var right = -1; var bottom = -1
        for (y in 0 until height) for (x in 0 until width) if (ink[y * width + x]) {
            left = minOf(left, x); right = maxOf(right, x); top = minOf(top, y); bottom = maxOf(bottom, y)
        }
        return if (right < 0) null else Box(left, top, right, bottom)
    }

    companion object {
        private const val SAMPLES_PER_CELL = 4
        private const val SQUARE_PER_INK = 1.25f // the digit fills about 80% of the square, as in the data set

        fun fromJson(json: JSONObject): ImagePreprocessing {
            val k = ManifestKeys
            val source = json.getString(k.leaf(k.PRE_SOURCE))
            val match = Regex(k.SOURCE_PATTERN).find(source)
                ?: throw ManifestException("preprocessing.source '$source' is not a grayscale grid this app can make from a photo")
            expect(json.getString(k.leaf(k.PRE_RESIZE_MODE)) == "bilinear", "resize_mode must be bilinear")
            expect(!json.getBoolean(k.leaf(k.PRE_ALIGN_CORNERS)), "align_corners must be false")
            expect(json.getString(k.leaf(k.PRE_LAYOUT)) == "NCHW", "layout must be NCHW")
            val resize = BundleManifest.longs(json.getJSONArray(k.leaf(k.PRE_RESIZE)))
            expect(resize.size == 2, "resize must be [height, width]")
            return ImagePreprocessing(
                sourceWidth = match.groupValues[1].toInt(),
                sourceHeight = match.groupValues[2].toInt(),
                sourceMax = match.groupValues[3].toInt(),
                scale = json.getDouble(k.leaf(k.PRE_SCALE)).toFloat(),
                resizeHeight = resize[0].toInt(),
                resizeWidth = resize[1].toInt(),
                mean = json.getDouble(k.leaf(k.PRE_MEAN)).toFloat(),
                std = json.getDouble(k.leaf(k.PRE_STD)).toFloat()
            )
        }

        private fun expect(ok: Boolean, what: String) {
            if (!ok) throw ManifestException("unsupported preprocessing: $what")
        }

        /** Ink is whatever differs from the background, which the image's border shows: dark on light or light on dark. */
        internal fun inkMask(luminance: FloatArray, width: Int, height: Int): BooleanArray {
            var borderSum = 0f
            var borderCount = 0
            for (y in 0 until height) for (x in 0 until width) {
                if (x == 0 || y == 0 || x == width - 1 || y == height - 1) { borderSum += luminance[y * width + x]; borderCount++ }
            }
            val background = borderSum / borderCount
            val lightBackground = background >= 0.5f
            val extreme = if (lightBackground) luminance.fold(1f) { a, b -> minOf(a, b) } else luminance.fold(0f) { a, b -> maxOf(a, b) }
            val threshold = (background + extreme) / 2
            if (kotlin.math.abs(background - extreme) < MIN_CONTRAST) return BooleanArray(luminance.size)
            return BooleanArray(luminance.size) { if (lightBackground) luminance[it] < threshold else luminance[it] > threshold }
        }

        private const val MIN_CONTRAST = 0.15f

        /** PyTorch's F.interpolate(mode="bilinear", align_corners=False) for one channel, row-major. */
        fun resizeBilinear(src: FloatArray, inH: Int, inW: Int, outH: Int, outW: Int): FloatArray {
            val out = FloatArray(outH * outW)
            val scaleH = inH.toFloat() / outH
            val scaleW = inW.toFloat() / outW
            for (oy in 0 until outH) {
                val sy = maxOf((oy + 0.5f) * scaleH - 0.5f, 0f)
                val y0 = sy.toInt()
                val y1 = if (y0 < inH - 1) y0 + 1 else y0
                val ly = sy - y0
                for (ox in 0 until outW) {
                    val sx = maxOf((ox + 0.5f) * scaleW - 0.5f, 0f)
                    val x0 = sx.toInt()
                    val x1 = if (x0 < inW - 1) x0 + 1 else x0
                    val lx = sx - x0
                    val top = (1 - lx) * src[y0 * inW + x0] + lx * src[y0 * inW + x1]
                    val bottom = (1 - lx) * src[y1 * inW + x0] + lx * src[y1 * inW + x1]
                    out[oy * outW + ox] = (1 - ly) * top + ly * bottom
                }
            }
            return out
        }
    }
}
