"""The demo apps read the manifest and golden keys edgepack writes.

Each app declares every key it reads in one file (android-demo's ManifestKeys.kt, ios-demo's
ManifestKeys.swift) as key paths: "a.b" nests objects, "a[]" is each element of list a, "?" after
a key marks one that may be absent or null. These tests parse those files and resolve every path
in the bundles a demo build writes, in the manifest's JSON Schema when it ships, and in
golden/index.json when it ships, so renaming a key the apps read fails here, not on a phone.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgepack.demo import preprocess

REPO = Path(__file__).resolve().parent.parent
KOTLIN_KEYS = REPO / "android-demo/app/src/main/java/dev/edgepack/demo/ManifestKeys.kt"
SWIFT_KEYS = REPO / "ios-demo/EdgepackDemo/ManifestKeys.swift"
GOLDEN_INDEX = "golden.index"  # written by edgepack once raw golden vectors ship
PREPROCESS_CASES = [
    REPO / "android-demo/app/src/test/resources/preprocess_case.json",
    REPO / "ios-demo/EdgepackDemoTests/preprocess_case.json",
]

# (language, keys file, declaration regex, pattern-constant regex, bundle whose manifest the app reads)
APPS = {
    "kotlin": (KOTLIN_KEYS, r'const val (\w+) = "([^"]+)"', r'const val SOURCE_PATTERN = """(.+?)"""', "android"),
    "swift": (SWIFT_KEYS, r'static let (\w+) = "([^"]+)"', r'static let sourcePattern = #"(.+?)"#', "ios"),
}


def declared_keys(source: Path, declaration: str, block: str) -> dict[str, str]:
    """The constants declared inside `object|enum <block> { ... }` of a Kotlin or Swift file."""
    text = source.read_text(encoding="utf-8")
    match = re.search(rf"(?:object|enum) {block} \{{(.*?)\n\}}", text, re.S)
    assert match, f"{source} declares no {block}"
    keys = dict(re.findall(declaration, match.group(1)))
    assert keys, f"{source}: {block} declares no keys"
    return keys


def missing_paths(document: object, paths: list[str]) -> list[str]:
    """Paths that do not resolve in the document, each with where it broke.

    A required key must be present (not null) everywhere its parent is; an optional one may be
    absent or null, but must be present somewhere, so that a rename is still noticed."""
    problems = []
    for path in paths:
        found, broken = _resolve(document, path.split("."), path)
        problems += broken
        if not broken and not found:
            problems.append(f"{path}: optional, but absent everywhere in the demo build's document")
    return problems


def _resolve(node: object, segments: list[str], path: str) -> tuple[bool, list[str]]:
    """(found anywhere, problems) for the remaining segments below node."""
    if not segments:
        return True, []
    segment, rest = segments[0], segments[1:]
    optional = segment.endswith("?")
    key = segment.rstrip("?")
    is_list = key.endswith("[]")
    key = key.removesuffix("[]")
    if not isinstance(node, dict):
        return False, [f"{path}: parent of '{key}' is not an object"]
    value = node.get(key)
    if value is None:
        return False, [] if optional else [f"{path}: '{key}' is missing (keys here: {sorted(node)})"]
    if is_list:
        if not isinstance(value, list):
            return False, [f"{path}: '{key}' is not a list"]
        results = [_resolve(item, rest, path) for item in value]
        return any(f for f, _ in results), [p for _, ps in results for p in ps]
    return _resolve(value, rest, path)


def schema_problems(schema: dict, paths: list[str]) -> list[str]:
    """Every path must be a declared property (in the object's schema or one of its allOf/anyOf/oneOf
    or if/then branches); keys the apps need must be required. Below an object the schema leaves
    open (no properties declared, like `preprocessing`), the real manifests are the only check."""
    problems = []
    for path in paths:
        nodes = [schema]
        for segment in path.split("."):
            optional = segment.endswith("?")
            key = segment.rstrip("?").removesuffix("[]")
            branches = [branch for node in nodes for branch in _branches(schema, node)]
            if not any("properties" in branch for branch in branches):
                break
            found = [branch["properties"][key] for branch in branches if key in branch.get("properties", {})]
            if not found:
                problems.append(f"{path}: the schema has no property '{key}'")
                break
            if not optional and not any(key in branch.get("required", []) for branch in branches):
                problems.append(f"{path}: the apps need '{key}', but the schema does not require it")
            nodes = found
            if segment.rstrip("?").endswith("[]"):
                nodes = [_deref(schema, node).get("items", {}) for node in nodes]
    return problems


def _branches(root: dict, node: dict) -> list[dict]:
    """A schema node and every sub-schema that can add properties to the same object."""
    node = _deref(root, node)
    found = [node]
    for combinator in ("allOf", "anyOf", "oneOf"):
        for branch in node.get(combinator, []):
            found += _branches(root, branch)
    for conditional in ("then", "else"):
        if conditional in node:
            found += _branches(root, node[conditional])
    return found


def _deref(root: dict, node: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local $refs are followed, got {ref}"
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def app_keys(language: str) -> tuple[list[str], list[str]]:
    source, declaration, _, _ = APPS[language]
    return (
        list(declared_keys(source, declaration, "ManifestKeys").values()),
        list(declared_keys(source, declaration, "GoldenKeys").values()),
    )


def read_manifest(demo_reports, target: str) -> tuple[Path, dict]:
    bundle = Path(demo_reports[target].bundle_dir)
    return bundle, json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("language", APPS)
def test_every_manifest_key_the_app_reads_is_written(demo_reports, language):
    manifest_paths, _ = app_keys(language)
    _, manifest = read_manifest(demo_reports, APPS[language][3])
    if "index" not in manifest["golden"]:  # checked, or skipped with its reason, by the golden-layout test below
        manifest_paths = [p for p in manifest_paths if p != GOLDEN_INDEX]
    assert missing_paths(manifest, manifest_paths) == []


@pytest.mark.parametrize("language", APPS)
def test_renaming_any_key_the_app_reads_fails_the_contract(demo_reports, language):
    """The guard itself: rename each key the app reads, everywhere it occurs, and the check must object."""
    manifest_paths, _ = app_keys(language)
    _, manifest = read_manifest(demo_reports, APPS[language][3])
    for path in manifest_paths:
        renamed = copy.deepcopy(manifest)
        segments = path.split(".")
        _rename_leaf(renamed, segments)
        assert missing_paths(renamed, [path]), f"renaming the last key of {path} went unnoticed"


def _rename_leaf(node: object, segments: list[str]) -> None:
    key = segments[0].rstrip("?")
    is_list = key.endswith("[]")
    key = key.removesuffix("[]")
    if not isinstance(node, dict) or node.get(key) is None:
        return
    if len(segments) == 1:
        node[key + "_renamed"] = node.pop(key)
        return
    children = node[key] if is_list else [node[key]]
    for child in children:
        _rename_leaf(child, segments[1:])


def test_a_renamed_tolerance_key_is_reported_with_its_path(demo_reports):
    _, manifest = read_manifest(demo_reports, "android")
    for artifact in manifest["artifacts"]:
        artifact["tolerance"]["minimum_cosine"] = artifact["tolerance"].pop("min_cosine")
    assert missing_paths(manifest, ["artifacts[].tolerance.min_cosine"]) == [
        "artifacts[].tolerance.min_cosine: 'min_cosine' is missing (keys here: ['atol', 'minimum_cosine', 'rtol'])"
    ] * len(manifest["artifacts"])


def test_both_apps_read_the_same_manifest_fields():
    """One contract, two readers: a key one app reads and the other misses is a drift to explain."""
    kotlin, swift = app_keys("kotlin")[0], app_keys("swift")[0]
    ios_only = {"artifacts[].requirements.minimum_deployment_target?"}
    assert set(swift) - ios_only == set(kotlin)


@pytest.mark.parametrize("language", APPS)
def test_the_source_description_parses_as_the_apps_expect(demo_reports, language):
    source, _, pattern_re, target = APPS[language]
    pattern = re.search(pattern_re, source.read_text(encoding="utf-8")).group(1)
    _, manifest = read_manifest(demo_reports, target)
    described = manifest["preprocessing"]["source"]
    match = re.match(pattern, described)
    assert match, f"preprocessing.source {described!r} no longer matches the apps' pattern {pattern!r}"
    width, height, top = map(int, match.groups())
    assert (width, height) == (8, 8) and top * manifest["preprocessing"]["scale"] == 1.0


@pytest.mark.parametrize("case_file", PREPROCESS_CASES, ids=lambda p: p.parts[-4] if "android" in str(p) else "ios")
def test_app_preprocessing_fixtures_match_edgepack_demo_preprocess(case_file):
    """The apps' unit tests compare their preprocessing with these numbers; they must be edgepack's own.
    Regenerate with `python tests/test_app_contract.py` after changing edgepack.demo.preprocess."""
    case = json.loads(case_file.read_text(encoding="utf-8"))
    source = np.asarray(case["source"], dtype=np.uint8).reshape(1, 8, 8)
    expected = preprocess(source).numpy().ravel()
    np.testing.assert_allclose(np.asarray(case["expected"], dtype=np.float32), expected, atol=1e-6)


@pytest.mark.parametrize("language", APPS)
def test_manifest_schema_declares_the_keys_the_apps_read(language):
    from edgepack.bundle.manifest import manifest_schema

    schema = manifest_schema()  # the shipped file with each format's requirements schema in place
    manifest_paths, _ = app_keys(language)
    assert schema_problems(schema, manifest_paths) == []


def test_schema_check_follows_refs_and_conditionals_and_reports_renames():
    """The schema walk on a small schema shaped like edgepack's: $ref, if/then per format, an open object."""
    tolerance = {
        "type": "object",
        "required": ["atol", "min_cosine"],
        "properties": {"atol": {"type": "number"}, "min_cosine": {"type": "number"}},
    }
    schema = {
        "type": "object",
        "required": ["artifacts", "preprocessing"],
        "properties": {
            "preprocessing": {"type": ["object", "null"]},
            "artifacts": {"type": "array", "items": {"$ref": "#/$defs/artifact"}},
        },
        "$defs": {
            "tolerance": tolerance,
            "artifact": {
                "type": "object",
                "required": ["tolerance", "requirements"],
                "properties": {
                    "tolerance": {"$ref": "#/$defs/tolerance"},
                    "requirements": {"type": "object", "properties": {}},
                },
                "allOf": [
                    {
                        "if": {"properties": {"format": {"const": "coreml"}}},
                        "then": {
                            "properties": {
                                "requirements": {"properties": {"minimum_deployment_target": {"type": "string"}}}
                            }
                        },
                    }
                ],
            },
        },
    }
    paths = [
        "artifacts[].tolerance.min_cosine",
        "artifacts[].requirements.minimum_deployment_target?",
        "preprocessing?.mean",
    ]
    assert schema_problems(schema, paths) == []
    tolerance["properties"]["minimum_cosine"] = tolerance["properties"].pop("min_cosine")
    assert schema_problems(schema, paths) == [
        "artifacts[].tolerance.min_cosine: the schema has no property 'min_cosine'"
    ]
    tolerance["properties"]["min_cosine"] = {"type": "number"}
    tolerance["required"] = ["atol"]
    assert schema_problems(schema, paths) == [
        "artifacts[].tolerance.min_cosine: the apps need 'min_cosine', but the schema does not require it"
    ]


@pytest.mark.parametrize("language", APPS)
def test_golden_index_and_files_are_laid_out_as_the_apps_read_them(demo_reports, language):
    bundle, manifest = read_manifest(demo_reports, APPS[language][3])
    index_path = manifest["golden"].get("index")
    if index_path is None or not (bundle / index_path).exists():
        pytest.skip(
            "this edgepack writes no golden/index.json with raw .bin files yet; the apps need it for their golden checks"
        )
    _, golden_paths = app_keys(language)
    index = json.loads((bundle / index_path).read_text(encoding="utf-8"))
    assert missing_paths(index, golden_paths) == []
    assert index["byte_order"] == "little"
    names = {"inputs": [i["name"] for i in manifest["inputs"]], "expected": [o["name"] for o in manifest["outputs"]]}
    npz = {
        "inputs": np.load(bundle / manifest["golden"]["inputs"]),
        "expected": np.load(bundle / manifest["golden"]["expected"]),
    }
    for kind in ("inputs", "expected"):
        assert [entry["name"] for entry in index[kind]] == names[kind]  # the apps pair them by position
        for entry in index[kind]:
            assert entry["dtype"] == "float32" and entry["shape"][0] == index["samples"]
            data = np.fromfile(bundle / entry["file"], dtype="<f4")
            assert data.size == int(np.prod(entry["shape"])), f"{entry['file']} does not hold shape {entry['shape']}"
            np.testing.assert_array_equal(data, npz[kind][entry["name"]].astype("<f4").ravel())


def write_preprocess_cases() -> None:
    """The fixture both apps' unit tests use: one held-out 8x8 digit and edgepack.demo.preprocess's output."""
    from importlib.resources import files

    with files("edgepack.demo").joinpath("digits.npz").open("rb") as handle, np.load(handle) as data:
        image = data["images"][data["eval_idx"][0]]
    case = {
        "comment": "an 8x8 digit (values 0..16) and edgepack.demo.preprocess's output for it; "
        "checked by edgepack's tests/test_app_contract.py",
        "source": [int(v) for v in image.ravel()],
        "expected": [round(float(v), 7) for v in preprocess(image[None]).numpy().ravel()],
    }
    for path in PREPROCESS_CASES:
        path.write_text(json.dumps(case) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_preprocess_cases()
