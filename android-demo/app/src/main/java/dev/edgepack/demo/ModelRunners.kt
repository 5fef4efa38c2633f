package dev.edgepack.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import org.pytorch.executorch.EValue
import org.pytorch.IValue
import org.pytorch.LiteModuleLoader
import org.pytorch.Module
import org.pytorch.Tensor
import java.io.File
import java.nio.FloatBuffer

/** One artifact loaded in its runtime: float32 inputs in manifest order in, outputs in manifest order out. */
interface ModelRunner : AutoCloseable {
    val format: String

    fun run(inputs: List<FloatArray>): List<FloatArray>
}

/** The .ptl in the PyTorch lite interpreter (org.pytorch:pytorch_android_lite). It needs a file path. */
class TorchScriptLiteRunner(modelFile: File, private val manifest: BundleManifest) : ModelRunner {
    override val format = BundleManifest.FORMAT_TORCHSCRIPT_LITE
    private val module: Module = LiteModuleLoader.load(modelFile.absolutePath)

    override fun run(inputs: List<FloatArray>): List<FloatArray> {
        val values = inputs.mapIndexed { i, data -> IValue.from(Tensor.fromBlob(data, manifest.inputs[i].shape.toLongArray())) }
        return outputsOf(module.forward(*values.toTypedArray()))
    }

    /** edgepack flattens a model's outputs in order: one tensor, or a tuple/list, or a dict keyed by output name. */
    private fun outputsOf(value: IValue): List<FloatArray> = when {
        value.isTensor() -> listOf(value.toTensor().dataAsFloatArray)
        value.isTuple() -> value.toTuple().map { it.toTensor().dataAsFloatArray }
        value.isList() -> value.toList().map { it.toTensor().dataAsFloatArray }
        value.isTensorList() -> value.toTensorList().map { it.dataAsFloatArray }
        value.isDictStringKey() -> value.toDictStringKey().let { dict ->
            manifest.outputs.map { spec ->
                (dict[spec.name] ?: throw IllegalStateException("the model returned no '${spec.name}'")).toTensor().dataAsFloatArray
            }
        }
        else -> throw IllegalStateException("the model returned something other than tensors")
    }

    override fun close() = module.destroy()
}

/** The .onnx in ONNX Runtime (com.microsoft.onnxruntime:onnxruntime-android), read from memory. */
class OnnxRunner(modelBytes: ByteArray, private val manifest: BundleManifest, threads: Int) : ModelRunner {
    override val format = BundleManifest.FORMAT_ONNX
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val options = OrtSession.SessionOptions().apply { setIntraOpNumThreads(threads) }
    private val session: OrtSession = env.createSession(modelBytes, options)

    override fun run(inputs: List<FloatArray>): List<FloatArray> {
        val tensors = inputs.mapIndexed { i, data ->
            val spec = manifest.inputs[i]
            spec.name to OnnxTensor.createTensor(env, FloatBuffer.wrap(data), spec.shape.toLongArray())
        }.toMap()
        try {
            session.run(tensors).use { result ->
                return manifest.outputs.map { spec ->
                    val tensor = result.get(spec.name).orElseThrow { IllegalStateException("the model has no output '${spec.name}'") } as OnnxTensor
                    val buffer = tensor.floatBuffer
                    FloatArray(buffer.remaining()).also { buffer.get(it) }
                }
            }
        } finally {
            tensors.values.forEach { it.close() }
        }
    }

    override fun close() {
        session.close()
        options.close()
    }
}

/**
 * The .pte in ExecuTorch (org.pytorch:executorch-android, XNNPACK and the portable kernels built in). It loads
 * from a file path. `forward` returns the outputs in the manifest's order.
 */
class ExecuTorchRunner(modelFile: File, private val manifest: BundleManifest) : ModelRunner {
    override val format = BundleManifest.FORMAT_EXECUTORCH
    private val module: org.pytorch.executorch.Module = org.pytorch.executorch.Module.load(modelFile.absolutePath)

    override fun run(inputs: List<FloatArray>): List<FloatArray> {
        val values = inputs.mapIndexed { i, data ->
            EValue.from(org.pytorch.executorch.Tensor.fromBlob(data, manifest.inputs[i].shape.toLongArray()))
        }
        val outputs = module.forward(*values.toTypedArray())
        if (outputs.size != manifest.outputs.size) {
            throw IllegalStateException("the program returned ${outputs.size} outputs, the manifest names ${manifest.outputs.size}")
        }
        return outputs.map { it.toTensor().dataAsFloatArray }
    }

    override fun close() = module.destroy()
}
