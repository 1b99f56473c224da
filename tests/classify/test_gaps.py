"""Issue 15, the last gaps: shaders (Metal, GLSL) and Cython declarations are source code,
and TensorRT engines are model weights by the header TensorRT itself checks.

Shader and Cython texts are written as such files are in real projects; the TensorRT
plans have the header layout TensorRT writes (tag, serialization version, the fields
after it), with and without the metadata block exporters put in front.
"""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.classify.base import Limits, Source
from agent.classify.tiers import ContentTiers

TIERS = ContentTiers(Limits(), use_magika=False)

METAL = """#include <metal_stdlib>
using namespace metal;

struct VertexOut {
    float4 position [[position]];
    float2 uv;
};

// Blend overlapping latent tiles of the diffusion decoder (64 px overlap)
kernel void blend_tiles(texture2d<float, access::read> src [[texture(0)]],
                        texture2d<float, access::write> dst [[texture(1)]],
                        constant float &weight [[buffer(0)]],
                        uint2 gid [[thread_position_in_grid]]) {
    if (gid.x >= dst.get_width() || gid.y >= dst.get_height()) {
        return;
    }
    float4 c = src.read(gid);
    dst.write(c * weight, gid);
}
"""

GLSL_VERT = """#version 450
layout(location = 0) in vec3 inPosition;
layout(location = 1) in vec2 inUV;
layout(location = 0) out vec2 fragUV;

layout(binding = 0) uniform UBO {
    mat4 model;
    mat4 view;
    mat4 proj;
} ubo;

/* the usual model-view-projection transform */
void main() {
    gl_Position = ubo.proj * ubo.view * ubo.model * vec4(inPosition, 1.0);
    fragUV = inUV;
}
"""

GLSL_FRAG = """#version 330 core
in vec2 fragUV;
out vec4 color;
uniform sampler2D tex;
uniform float exposure;

void main() {
    vec3 hdr = texture(tex, fragUV).rgb;
    // Reinhard tone mapping, then gamma
    vec3 mapped = vec3(1.0) - exp(-hdr * exposure);
    color = vec4(pow(mapped, vec3(1.0 / 2.2)), 1.0);
}
"""

GLSL_COMP = """#version 460
layout(local_size_x = 16, local_size_y = 16) in;
layout(binding = 0, rgba32f) uniform readonly image2D inputImage;
layout(binding = 1, rgba32f) uniform writeonly image2D outputImage;

void main() {
    ivec2 p = ivec2(gl_GlobalInvocationID.xy);
    vec4 sum = vec4(0.0);
    for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx)
            sum += imageLoad(inputImage, p + ivec2(dx, dy));
    imageStore(outputImage, p, sum / 9.0);
}
"""

PXD = """# cython: language_level=3
# Declarations of the C solver, shared by the .pyx modules that call it.
cdef extern from "solver.h":
    ctypedef struct state_t:
        double pressure
        double temperature
    int step(state_t* s, double dt) nogil

cdef class Solver:
    cdef state_t state
    cdef readonly int steps
    cpdef double run(self, int steps) except -1
"""

PYX = """# cython: boundscheck=False, wraparound=False
cimport cython
from libc.math cimport exp

\"\"\"Arrhenius rate of the sintering step, vectorised over a temperature profile.\"\"\"

def rates(double[:] temps, double ea, double a):
    cdef Py_ssize_t i
    cdef double[:] out = cython.view.array(shape=(temps.shape[0],), itemsize=8, format="d")
    for i in range(temps.shape[0]):
        out[i] = a * exp(-ea / (8.314 * temps[i]))
    return out
"""


def found(name: str, data: bytes):  # type: ignore[no-untyped-def]
    return TIERS.classify(Source.from_bytes(name, data))


def test_metal_glsl_and_cython_are_source_code() -> None:
    cases = {
        "blend.metal": (METAL, "metal"),
        "mesh.vert": (GLSL_VERT, "glsl"),
        "tonemap.frag": (GLSL_FRAG, "glsl"),
        "blur.comp": (GLSL_COMP, "glsl"),
        "common.glsl": (GLSL_FRAG, "glsl"),
        "solver.pxd": (PXD, "cython"),
        "rates.pyx": (PYX, "cython"),
    }
    for name, (text, language) in cases.items():
        f = found(name, text.encode())
        assert [t.kind for t in f.tags] == ["source_code"], name
        assert f.tags[0].details["language"] == language, name
        assert f.content_type == f"text/x-{language}"
    # the comments are what keyword matching sees
    assert "diffusion decoder" in found("blend.metal", METAL.encode()).text
    assert "Reinhard tone mapping" in found("tonemap.frag", GLSL_FRAG.encode()).text
    assert "Arrhenius rate" in found("rates.pyx", PYX.encode()).text
    assert "Declarations of the C solver" in found("solver.pxd", PXD.encode()).text


def plan(version: int = 232, payload: int = 4096) -> bytes:
    """A TensorRT plan's opening: tag, serialization version, a flags word, the size,
    one more word, then the (opaque) engine."""
    body = bytes(range(256)) * (payload // 256)
    header = b"ptrt" + struct.pack("<IIQI", version, 0, 24 + len(body), 0)
    return header + body


def test_tensorrt_engines_are_model_weights_by_their_header() -> None:
    for name in ("yolov8n.engine", "resnet50.plan", "renamed-1f3a"):
        f = found(name, plan())
        assert [t.kind for t in f.tags] == ["model_weights"], name
        d = f.tags[0].details
        assert d["format"] == "tensorrt" and d["serialization_version"] == 232
        assert d["parameters"] is None and d["tensors"] is None  # the plan is not parsed
        assert "TensorRT engine" in f.tags[0].evidence
    newer = b"ftrt" + plan(version=239)[4:]
    assert found("model.engine", newer).tags[0].details["serialization_version"] == 239


def test_tensorrt_engine_with_exporter_metadata_in_front() -> None:
    meta = json.dumps({"description": "Ultralytics YOLOv8n model", "author": "Ultralytics",
                       "task": "detect", "batch": 1, "imgsz": [640, 640]}).encode()  # fmt: skip
    data = struct.pack("<I", len(meta)) + meta + plan()
    d = found("yolov8n.engine", data).tags[0].details
    assert d["format"] == "tensorrt" and d["task"] == "detect"


def test_not_tensorrt() -> None:
    # the extension alone proves nothing: .engine and .plan name many other things
    config = found("game.engine", b"[engine]\nname = physics\nthreads = 4\n")
    assert not any(t.kind == "model_weights" for t in config.tags)
    assert not any(
        t.kind == "model_weights"
        for t in found("notes.plan", b"ptrt is our plan for Q3\n" * 4).tags
    )
    assert not any(t.kind == "model_weights" for t in found("x.engine", b"\x00" * 4096).tags)
    assert found("tiny.engine", plan()[:20]).tags == []  # shorter than the header


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=600), st.booleans())
def test_tensorrt_header_on_hostile_bytes(data: bytes, prefixed: bool) -> None:
    head = b"ptrt" + struct.pack("<I", 232) + data
    if prefixed:
        head = struct.pack("<I", 2) + b"{}" + head
    f = found("x.engine", head)
    assert f.skipped in (None, "malformed", "truncated")
