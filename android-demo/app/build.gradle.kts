plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "dev.edgepack.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.edgepack.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    androidResources {
        // The bundle is read as-is from assets/edgepack/ (edgepack install-into puts it there).
        noCompress += listOf("pte", "bpte", "ptl", "onnx", "bin")
    }
    packaging {
        // Both runtimes ship the C++ runtime library; one copy per ABI is enough.
        jniLibs.pickFirsts += listOf("**/libc++_shared.so", "**/libfbjni.so")
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    implementation(libs.androidx.activity.ktx)
    implementation(libs.androidx.lifecycle.runtime.ktx)
    implementation(libs.kotlinx.coroutines.android)
    implementation(libs.pytorch.android.lite)
    implementation(libs.onnxruntime.android)
    implementation(libs.executorch.android)

    testImplementation(libs.junit)
    testImplementation(libs.org.json)

    androidTestImplementation(libs.androidx.test.ext.junit)
    androidTestImplementation(libs.androidx.test.runner)
}
