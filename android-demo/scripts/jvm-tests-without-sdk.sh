#!/usr/bin/env bash
# Compile the app's plain-Kotlin parts (manifest reader, preprocessing, golden checker, classification)
# and run their JUnit tests without the Android SDK or Gradle, on Debian/Ubuntu:
#   apt-get install kotlin libandroid-json-java junit4
# Debian's kotlinc is 1.3, so those files stay free of newer stdlib calls. Run from android-demo/
# after `edgepack install-into android-demo --bundle dist/demo-digits/android`.
set -euo pipefail
cd "$(dirname "$0")/.."
J=/usr/share/java
SRC=app/src/main/java/dev/edgepack/demo
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
LIBS="$J/com.android.json.jar:$J/junit4.jar:$J/hamcrest-core.jar:$J/kotlin-stdlib.jar:$J/kotlin-stdlib-jdk7.jar"
kotlinc -nowarn -cp "$LIBS" -d "$OUT/classes" \
    "$SRC/ManifestKeys.kt" "$SRC/BundleManifest.kt" "$SRC/ImagePreprocessing.kt" "$SRC/GoldenVectors.kt" \
    "$SRC/Classification.kt" app/src/test/java/dev/edgepack/demo/*.kt
cd app  # Gradle runs unit tests from the module folder; the tests read src/main/assets/edgepack/ from there
java -cp "$OUT/classes:$LIBS:src/test/resources" org.junit.runner.JUnitCore \
    dev.edgepack.demo.ManifestTest dev.edgepack.demo.ImagePreprocessingTest \
    dev.edgepack.demo.GoldenVectorsTest dev.edgepack.demo.ClassificationTest
