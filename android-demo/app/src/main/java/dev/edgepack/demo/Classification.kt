package dev.edgepack.demo

import kotlin.math.exp

data class Prediction(val label: String, val probability: Float)

/** Softmax over one sample's logits, best first. */
fun topPredictions(logits: FloatArray, manifest: BundleManifest, count: Int = 3): List<Prediction> {
    val max = logits.fold(Float.NEGATIVE_INFINITY) { a, b -> maxOf(a, b) }
    val weights = logits.map { exp((it - max).toDouble()) }
    val total = weights.sum()
    return weights.indices.sortedByDescending { weights[it] }.take(count)
        .map { Prediction(manifest.label(it), (weights[it] / total).toFloat()) }
}

/** Median wall time of [block] in milliseconds, after [warmup] untimed runs. */
fun medianMillis(runs: Int, warmup: Int, block: () -> Unit): Double {
    repeat(warmup) { block() }
    val times = DoubleArray(runs) {
        val start = System.nanoTime()
        block()
        (System.nanoTime() - start) / 1e6
    }
    times.sort()
    return if (runs % 2 == 1) times[runs / 2] else (times[runs / 2 - 1] + times[runs / 2]) / 2
}
